"""Issue 14.2 end to end: a 16k×16k RLE instance (8.4 MB on the wire, 512 MB decoded) and a
30k×30k declaration are received from dcmtk's storescu and packaged with a normal CT
series. The receiving and packaging process (this one: the in-process SCP and
build_package, as a node's worker runs them) grows its RSS by less than 340 MB, read from
/proc (the issue's 500 MB for a node, less the ~160 MB an idle `courier serve` holds; the
growth, not the peak, because this pytest process may hold other tests' memory already,
e.g. as an xdist worker); the package is built, the hostile series say why they have no
preview, and the CT series still has one.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom.uid import RLELossless
from sqlalchemy import select

from delivery.packaging.package import PackageInfo, PackageItem, build_package
from imaging import RenderLimits
from store.models import Instance, Series, Study
from tests import synthetic
from tests.conftest import LocalScp, have_dcmtk, need
from tests.imaging import hostile
from tests.scu import storescu

INFO = PackageInfo("CR-PIXL-TEST-K", "en", "Imaging desk", datetime(2024, 1, 2, tzinfo=UTC))
GROWTH_MB = 340  # 500 MB for a node, less the ~160 MB an idle `courier serve` holds


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0): the peak from here on.
    Path(f"/proc/{os.getpid()}/clear_refs").write_text("5")


def _status_mb(field: str) -> float:
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def _items(scp: LocalScp) -> list[PackageItem]:
    query = (
        select(Instance, Study.study_uid, Series.series_uid, Series.modality)
        .join(Series, Series.id == Instance.series_id)
        .join(Study, Study.id == Instance.study_id)
        .order_by(Instance.id)
    )
    with scp.db.sessions() as s:
        rows = s.execute(query).all()
    return [
        PackageItem(
            scp.content.path(i.path),
            study,
            series,
            i.sop_instance_uid,
            i.sop_class_uid,
            i.transfer_syntax_uid,
            modality,
        )
        for i, study, series, modality in rows
    ]


@pytest.mark.parametrize(
    ("limits", "why"),
    [
        (None, {"big": "over the limit", "lie": "over the limit"}),
        # Budget lifted, memory tight: the child tries the 16k frame and runs out.
        (
            RenderLimits(max_frame_values=10**9, memory_mb=256, timeout_s=60),
            {"big": "out of memory|decoder stopped", "lie": "out of memory|could not be decoded"},
        ),
    ],
    ids=["budget", "child-out-of-memory"],
)
def test_hostile_pixels_cost_a_preview_never_the_node(
    local_scp: LocalScp, tmp_path: Path, limits: RenderLimits | None, why: dict[str, str]
) -> None:
    need("dcmtk", have_dcmtk())
    src = tmp_path / "src"
    big = hostile.rle_zeros(src / "big.dcm", 16384, 16384)
    lie = hostile.declared_only(src / "lie.dcm", 30000, 30000)
    ct = synthetic.make_ct_series(src / "ct", n_slices=3)
    assert big.stat().st_size < 9_000_000  # cheap on the wire...
    _reset_peak()
    baseline = _status_mb("VmRSS")
    rle = synthetic.storescu_args_for(RLELossless)  # also proposes the uncompressed ones
    sent = storescu(local_scp.port, [big, lie, *ct], *rle)
    assert sent.returncode == 0, sent.stderr[-2000:]
    assert local_scp.rows() == 5
    result = build_package(_items(local_scp), tmp_path / "out", info=INFO, preview_limits=limits)
    growth = _status_mb("VmHWM") - baseline
    assert growth < GROWTH_MB, f"RSS grew {growth:.0f} MB while receiving and packaging"

    assert result.instances == 5 and len(result.parts) == 1
    with zipfile.ZipFile(result.parts[0]) as z:
        manifest = json.loads(z.read("MANIFEST.json"))
        previews = [n for n in z.namelist() if n.startswith("PREVIEW/")]
    assert len(previews) == 1  # the CT series only
    with_preview = [s for s in manifest["series"] if s["preview"]]
    assert [s["preview"] for s in with_preview] == previews
    notes = [s["preview_note"] for s in manifest["series"] if not s["preview"]]
    assert len(notes) == 2
    for name in ("big", "lie"):
        assert any(re.search(why[name], n) for n in notes), notes
    assert all(f"no preview: {n}" in " ".join(manifest["notes"]) for n in notes)

"""The Storage SCP with real peers: every acknowledged instance is stored byte-identical
and indexed once. dcmtk's storescu and pynetdicom are the senders."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from store.models import Instance, Study
from tests import synthetic
from tests.conftest import LocalScp, have_dcmtk, need, spool_leftovers
from tests.scu import dataset_bytes, send, storescu


def _assert_stored(scp: LocalScp, files: list[Path]) -> None:
    """Every file has exactly one row and a stored file with the identical dataset."""
    import pydicom

    with scp.db.sessions() as s:
        rows = {i.sop_instance_uid: i for i in s.scalars(select(Instance))}
    for f in files:
        uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        row = rows[uid]
        stored = scp.content.path(row.path)
        assert dataset_bytes(stored) == dataset_bytes(f), f.name
        assert row.size_bytes == stored.stat().st_size
    assert scp.spool_files() == []


def test_dcmtk_pushes_ct_300_and_2000_small(local_scp: LocalScp, tmp_path: Path) -> None:
    need("dcmtk", have_dcmtk())
    ct = synthetic.make_ct_series(tmp_path / "ct", n_slices=300)
    small = synthetic.make_small_instances(tmp_path / "small", n=2000)
    for files in (ct, small):
        result = storescu(local_scp.port, files[0].parent, "+sd")
        assert result.returncode == 0, result.stderr[-2000:]
    assert local_scp.rows() == 2300
    _assert_stored(local_scp, ct + small)
    with local_scp.db.sessions() as s:
        counts = sorted(s.scalars(select(Study.instance_count)))
    assert counts == [300, 2000]


def test_every_transfer_syntax_is_stored_as_sent(local_scp: LocalScp, tmp_path: Path) -> None:
    need("dcmtk", have_dcmtk())
    studies = synthetic.make_transfer_syntax_studies(tmp_path / "ts")
    sent: list[Path] = []
    for ts, files in studies.items():
        if synthetic.dcmtk_knows(ts):
            result = storescu(local_scp.port, files, *synthetic.storescu_args_for(ts))
            assert result.returncode == 0, (ts, result.stderr[-2000:])
        else:  # dcmtk 3.6.7 predates HTJ2K: pynetdicom sends those
            assert set(send(local_scp.port, files)) == {0x0000}
        sent += files
    _assert_stored(local_scp, sent)
    with local_scp.db.sessions() as s:
        stored_ts = set(s.scalars(select(Instance.transfer_syntax_uid)))
    assert stored_ts == set(studies)


def test_pynetdicom_as_second_scu_and_identical_resends(
    local_scp: LocalScp, tmp_path: Path
) -> None:
    files = synthetic.make_small_instances(tmp_path / "s", n=20)
    assert send(local_scp.port, files) == [0x0000] * 20
    for _ in range(3):  # identical re-sends succeed and keep one copy
        assert send(local_scp.port, files[:5]) == [0x0000] * 5
    assert local_scp.rows() == 20
    assert len(list(local_scp.content.iter_instances())) == 20
    _assert_stored(local_scp, files)
    # The per-UID locks go with the stores that took them (a long push keeps none).
    assert local_scp.ingest._locks == {}


def test_same_uid_different_bytes_is_kept_aside(local_scp: LocalScp, tmp_path: Path) -> None:
    first = synthetic.make_small_instances(tmp_path / "a", n=1)[0]
    changed = synthetic.with_patient_id(first, tmp_path / "changed.dcm", "OTHER-ID")
    assert send(local_scp.port, [first]) == [0x0000]
    assert send(local_scp.port, [changed]) == [0x0000]
    assert local_scp.rows() == 1
    _assert_stored(local_scp, [first])  # the original stays in place
    conflicts = list(local_scp.content.conflicts.iterdir())
    assert len(conflicts) == 1 and dataset_bytes(conflicts[0]) == dataset_bytes(changed)
    from store.models import InstanceConflict

    with local_scp.db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(InstanceConflict)) == 1


@pytest.mark.parametrize("workers", [2])
def test_node_with_two_receiving_processes(
    node_factory: object, tmp_path: Path, workers: int
) -> None:
    need("dcmtk", have_dcmtk())
    node = node_factory(extra_scp=f"workers: {workers}")  # type: ignore[operator]
    files = synthetic.make_small_instances(tmp_path / "w", n=200)
    halves = [files[:100], files[100:]]
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda fs: storescu(node.port, fs), halves))
    assert all(r.returncode == 0 for r in results), [r.stderr[-500:] for r in results]
    import json
    import subprocess

    from tests.conftest import COURIER

    out = subprocess.run(
        [str(COURIER), "studies", "list", "--json", "--config", str(node.config)],
        capture_output=True,
        text=True,
        check=True,
    )
    studies = json.loads(out.stdout)
    assert [s["instances"] for s in studies] == [200]
    stored = list((node.data_dir / "instances").rglob("*.dcm"))
    assert len(stored) == 200
    assert spool_leftovers(node.data_dir) == []
    node.stop()  # an orderly stop: the receivers delete their ready spool files too
    assert [p for p in (node.data_dir / "spool").rglob("*") if p.is_file()] == []


def test_non_ascii_names_are_decoded_with_the_character_set(
    local_scp: LocalScp, tmp_path: Path
) -> None:
    from tests.scu import rewrite

    f = synthetic.make_small_instances(tmp_path / "n", n=1)[0]
    utf8 = rewrite(
        f,
        tmp_path / "utf8.dcm",
        SpecificCharacterSet="ISO_IR 192",
        PatientName="Müller^Zoë",
        StudyDescription="Thorax 胸部",
    )
    assert send(local_scp.port, [utf8]) == [0x0000]
    with local_scp.db.sessions() as s:
        study = s.scalars(select(Study)).one()
    assert (study.patient_name, study.study_description) == ("Müller^Zoë", "Thorax 胸部")

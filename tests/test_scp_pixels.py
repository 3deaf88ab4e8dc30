"""Ingest bounds the pixel size a header declares, and keeps bidi controls out of the index.

An absurd declaration (more than scp.max_pixels values) is refused with 0xC003 before it is
stored, with a log line naming the UID and the status; the association goes on. Bidi
controls in header text (a right-to-left override in a name) never reach the index.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
from pydantic import ValidationError
from sqlalchemy import select

from delivery.settings import DeliverySettings
from scp.header import read_header
from scp.settings import ScpSettings
from store.models import Instance, Series, Study
from tests import synthetic
from tests.conftest import LocalScp
from tests.imaging import hostile
from tests.scu import rewrite, send

BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


@pytest.mark.parametrize(
    ("rows", "columns", "samples"),
    [(30000, 30000, 3), (40000, 30000, 1), (65535, 65535, 1)],
    ids=["30k-rgb", "40k-by-30k", "64k-square"],
)
def test_an_absurd_declaration_is_refused_and_the_association_goes_on(
    local_scp: LocalScp,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    rows: int,
    columns: int,
    samples: int,
) -> None:
    lie = hostile.declared_only(tmp_path / "lie.dcm", rows, columns, samples=samples)
    normal = synthetic.make_small_instances(tmp_path / "ok", n=1)[0]
    uid = str(pydicom.dcmread(lie, stop_before_pixels=True).SOPInstanceUID)
    with caplog.at_level(logging.WARNING, logger="courier.scp.ingest"):
        assert send(local_scp.port, [lie, normal, lie]) == [0xC003, 0x0000, 0xC003]
    with local_scp.db.sessions() as s:
        stored = list(s.scalars(select(Instance.sop_instance_uid)))
    assert uid not in stored and len(stored) == 1
    assert not any(local_scp.content.root.rglob(f"{uid}*"))  # no file under any name
    refusals = [r.getMessage() for r in caplog.records if "max_pixels" in r.getMessage()]
    assert refusals and all(uid in m and "0xC003" in m for m in refusals)
    assert not any(synthetic.PATIENT_NAME in r.getMessage() for r in caplog.records)


def test_the_declared_size_is_recorded(local_scp: LocalScp, tmp_path: Path) -> None:
    big = hostile.rle_zeros(tmp_path / "big.dcm", 4096, 3000)
    lie = hostile.declared_only(tmp_path / "lie.dcm", 30000, 30000)  # 0.9 G: allowed
    assert send(local_scp.port, [big, lie]) == [0x0000, 0x0000]
    with local_scp.db.sessions() as s:
        declared = sorted(s.scalars(select(Instance.declared_pixels)))
    assert declared == [4096 * 3000, 30000 * 30000]


@pytest.mark.parametrize(
    "field", ["PatientName", "StudyDescription", "SeriesDescription", "PatientID"]
)
def test_bidi_controls_are_stripped_from_indexed_text(tmp_path: Path, field: str) -> None:
    src = synthetic.make_small_instances(tmp_path / "src", n=1)[0]
    value = f"EVIL{BIDI}^NAME" if field == "PatientName" else f"AB{BIDI}CD"
    path = rewrite(src, tmp_path / "bidi.dcm", SpecificCharacterSet="ISO_IR 192", **{field: value})
    header = read_header(path)
    indexed = {
        "PatientName": header.patient_name,
        "StudyDescription": header.study_description,
        "SeriesDescription": header.series_description,
        "PatientID": header.patient_id,
    }[field]
    assert indexed == value.replace(BIDI, "")


def test_bidi_controls_never_reach_the_study_and_series_rows(
    local_scp: LocalScp, tmp_path: Path
) -> None:
    src = synthetic.make_small_instances(tmp_path / "src", n=1)[0]
    path = rewrite(
        src,
        tmp_path / "bidi.dcm",
        SpecificCharacterSet="ISO_IR 192",
        PatientName="\u202eFDP.EXE^Müller",
        StudyDescription="Thorax \u2067胸部\u2069",
        SeriesDescription="\u200fAX\u061c",
    )
    assert send(local_scp.port, [path]) == [0x0000]
    with local_scp.db.sessions() as s:
        study = s.scalars(select(Study)).one()
        series = s.scalars(select(Series)).one()
    assert study.patient_name == "FDP.EXE^Müller"
    assert study.study_description == "Thorax 胸部"
    assert series.series_description == "AX"


@pytest.mark.parametrize(
    ("model", "key", "value"),
    [
        (ScpSettings, "max_pixels", 999_999),
        (ScpSettings, "max_pixels", 10**13),
        (DeliverySettings, "preview_max_pixels", 99_999),
        (DeliverySettings, "preview_memory_mb", 64),
        (DeliverySettings, "preview_timeout_s", 0.1),
    ],
)
def test_pixel_limits_are_bounded_settings(model: type, key: str, value: object) -> None:
    with pytest.raises(ValidationError, match=key):
        model(**{key: value})

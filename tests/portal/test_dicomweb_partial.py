"""WADO-RS with an unreadable stored file, against the portal served by uvicorn on
loopback (SQLite and PostgreSQL): a table of what is asked for (study, series,
instance, their metadata, frames, a rendering) by what happened to one instance's file
(all good, missing, its meta group damaged, cut short). A study or series answer is 206
with a ``Warning`` naming counts only and the readable parts byte for byte as when all
were good; a lone instance whose file cannot be read is 404 (frames and renderings of a
damaged one 422); the log names the instance's SOP Instance UID and no patient data;
the study's timeline tells staff, once."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pydicom
import pytest
import requests
from sqlalchemy import select, update

from portal.context import PortalContext
from portal.dicomweb_partial import split
from portal.dicomweb_scope import Stored
from portal.dicomweb_wado import CutShort, _multipart
from store.content import ContentStore
from store.models import Instance, Series, Study, StudyEvent
from tests import synthetic
from tests.portal import patient_rig
from tests.portal.test_dicomweb import Served, _parts, served  # noqa: F401  (fixture)

rig = patient_rig.rig
built_package = patient_rig.built_package

META_LENGTH_AT = 140  # (0002,0000)'s value: 128-byte preamble, "DICM", the 8-byte header


def _missing(path: Path) -> None:
    path.unlink()


def _meta_damaged(path: Path) -> None:
    """The same size, but the meta group says it is 4 GiB long."""
    data = bytearray(path.read_bytes())
    data[META_LENGTH_AT : META_LENGTH_AT + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))


def _cut_short(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGES: dict[str, Callable[[Path], None]] = {
    "missing": _missing,
    "meta damaged": _meta_damaged,
    "cut short": _cut_short,
}


@dataclass(frozen=True)
class Case:
    """What is asked for, and what each answer must be."""

    path: str  # with {study}, {series}, {sop}: the damaged instance, its series
    accept: str
    total: int  # instances asked for
    broken: dict[str, int]  # damage -> status when the instance's file is damaged
    kind: str  # "parts", "json", "frames" or "image"


DICOM = 'multipart/related; type="application/dicom"'
CASES = {
    "study": Case("/studies/{study}", DICOM, 4, dict.fromkeys(DAMAGES, 206), "parts"),
    "series": Case(
        "/studies/{study}/series/{series}", DICOM, 2, dict.fromkeys(DAMAGES, 206), "parts"
    ),
    "instance": Case(
        "/studies/{study}/series/{series}/instances/{sop}",
        DICOM,
        1,
        dict.fromkeys(DAMAGES, 404),
        "parts",
    ),
    "study metadata": Case(
        "/studies/{study}/metadata",
        "application/dicom+json",
        4,
        dict.fromkeys(DAMAGES, 206),
        "json",
    ),
    "series metadata": Case(
        "/studies/{study}/series/{series}/metadata",
        "application/dicom+json",
        2,
        dict.fromkeys(DAMAGES, 206),
        "json",
    ),
    "instance metadata": Case(
        "/studies/{study}/series/{series}/instances/{sop}/metadata",
        "application/dicom+json",
        1,
        dict.fromkeys(DAMAGES, 404),
        "json",
    ),
    "frames": Case(
        "/studies/{study}/series/{series}/instances/{sop}/frames/1",
        'multipart/related; type="application/octet-stream"',
        1,
        {"missing": 404, "meta damaged": 422, "cut short": 422},
        "frames",
    ),
    "rendered": Case(
        "/studies/{study}/series/{series}/instances/{sop}/rendered",
        "image/jpeg",
        1,
        {"missing": 404, "meta damaged": 422, "cut short": 422},
        "image",
    ),
}


def _pieces(r: requests.Response, kind: str) -> list[bytes]:
    """The answer's instances as bytes: multipart bodies, or each JSON object."""
    if kind in ("parts", "frames"):
        return _parts(r)
    if kind == "json":
        doc = json.loads(r.content)
        objects = doc if isinstance(doc, list) else [doc]
        return [json.dumps(o, sort_keys=True).encode() for o in objects]
    return [r.content]


def _sop_of(piece: bytes, kind: str) -> str:
    if kind == "json":
        return str(json.loads(piece)["00080018"]["Value"][0])
    return str(pydicom.dcmread(io.BytesIO(piece)).SOPInstanceUID)


@pytest.mark.parametrize("name", list(CASES))
def test_an_unreadable_instance_never_looks_complete(
    served: Served,  # noqa: F811  (the fixture)
    name: str,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.INFO, logger="courier.portal")
    case = CASES[name]
    p = served.patient(0)
    token = served.token(p)
    study = served.uids[0]
    with served.rig.db.sessions() as s:
        sop, series, rel = s.execute(
            select(Instance.sop_instance_uid, Series.series_uid, Instance.path)
            .join(Series, Series.id == Instance.series_id)
            .join(Study, Study.id == Instance.study_id)
            .where(Study.study_uid == study)
            .order_by(Series.id, Instance.id)
        ).first()  # type: ignore[misc]
    path = served.content.path(rel)
    kept = tmp_path / "kept.dcm"
    shutil.copyfile(path, kept)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    patient_data = [
        str(header.PatientName),
        str(header.PatientID),
        str(header.AccessionNumber),
        str(header.get("PatientBirthDate", "") or "") or "no birth date",
    ]
    url = case.path.format(study=study, series=series, sop=sop)

    # All good: 200, no Warning; what each instance's piece is when all are readable.
    good = served.get(url, token, Accept=case.accept)
    assert good.status_code == 200, good.text
    assert "warning" not in good.headers
    before = _pieces(good, case.kind)
    assert len(before) == (case.total if case.kind in ("parts", "json") else 1)

    for damage, apply in DAMAGES.items():
        caplog.clear()
        apply(path)
        try:
            r = served.get(url, token, Accept=case.accept)
            r_again = served.get(url, token, Accept=case.accept)
        finally:
            shutil.copyfile(kept, path)
        expected = case.broken[damage]
        assert r.status_code == expected, (damage, r.status_code, r.text)
        assert r_again.status_code == expected
        assert r.headers["access-control-allow-origin"] == "*"
        if expected == 206:
            # Counts only; a viewer on another origin may read it.
            assert r.headers["warning"] == (
                f"299 courier: 1 of {case.total} instances could not be read "
                "and are not in this answer"
            )
            assert "Warning" in r.headers["access-control-expose-headers"]
            after = _pieces(r, case.kind)
            assert len(after) == case.total - 1
            # The readable ones, byte for byte as they were; the damaged one is not there.
            assert after == [b for b in before if _sop_of(b, case.kind) != sop]
        else:
            assert "warning" not in r.headers
            assert r.headers["content-type"].startswith("application/json")
            detail = r.json()["detail"]
            assert sop not in detail and study not in detail
            if expected == 404 and case.kind in ("frames", "image"):
                assert "missing" in detail
        # The log names the instance (by UID) and its cause, never patient data.
        logged = caplog.text
        assert re.search(rf"unreadable \([^)]+\) sop_uid={re.escape(sop)}", logged), logged
        for secret in [*patient_data, token]:
            assert secret not in logged, damage
        for uid in served.uids:
            assert uid not in logged

        # Staff see it on the study's timeline: once, however often a viewer asks.
        with served.rig.db.sessions() as s:
            study_id = s.scalars(select(Study.id).where(Study.study_uid == study)).one()
            notes = [
                e.reason
                for e in s.scalars(select(StudyEvent).where(StudyEvent.study_id == study_id))
                if "could not be read" in e.reason
            ]
        assert len(notes) == 1, notes
        assert notes[0].startswith(f"DICOMweb: 1 of {case.total} instances asked for")
        assert sop not in notes[0]

    # Restored: whole again, the same bytes as before.
    again = served.get(url, token, Accept=case.accept)
    assert again.status_code == 200 and "warning" not in again.headers
    if case.kind != "image":
        assert _pieces(again, case.kind) == before


def test_a_study_with_every_file_gone_is_404_and_flagged_ones_count(
    served: Served,  # noqa: F811  (the fixture)
) -> None:
    """None readable: 404. Instances start-up recovery flagged ``file_missing`` count as
    content asked for that cannot be returned (206), not as never there."""
    p = served.patient(0)
    token = served.token(p)
    study = served.uids[0]
    with served.rig.db.sessions() as s:
        rows = s.execute(
            select(Instance.id, Instance.path)
            .join(Study, Study.id == Instance.study_id)
            .where(Study.study_uid == study)
            .order_by(Instance.id)
        ).all()
    with served.rig.db.sessions() as s, s.begin():
        s.execute(update(Instance).where(Instance.id == rows[0][0]).values(file_missing=True))
    r = served.get(f"/studies/{study}", token, Accept=DICOM)
    assert r.status_code == 206
    assert r.headers["warning"].startswith("299 courier: 1 of 4 instances")
    assert len(_parts(r)) == 3
    r = served.get(f"/studies/{study}/metadata", token)
    assert r.status_code == 206 and len(r.json()) == 3

    for _id, rel in rows[1:]:
        served.content.path(rel).unlink()
    r = served.get(f"/studies/{study}", token, Accept=DICOM)
    assert r.status_code == 404
    assert served.get(f"/studies/{study}/metadata", token).status_code == 404


def test_a_file_gone_after_the_check_cuts_the_answer_short(tmp_path: Path) -> None:
    """Checked readable, gone when its turn comes: the parts before it go out, then the
    answer ends without its closing delimiter (its status is out already), so a client
    never sees a complete-looking body."""
    content = ContentStore(tmp_path / "data")
    content.prepare()
    src = synthetic.make_small_instances(tmp_path / "src", n=2, n_series=1)
    found = []
    for k, source in enumerate(src):
        rel = f"x/{k}.dcm"
        content.path(rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, content.path(rel))
        size = content.path(rel).stat().st_size
        found.append(Stored("1.2", "1.2.3", f"1.2.3.{k}", "", "", str(k), rel, "", size))
    ctx = cast(PortalContext, SimpleNamespace(content=content))
    good, bad = split(ctx, found)
    assert good == found and bad == []
    content.path(found[1].relpath).unlink()
    body = _multipart(ctx, good, "b0undary")
    sent = [next(body) for _ in range(3)]  # the first part: its head, its bytes, its CRLF
    assert sent[1] == src[0].read_bytes()
    with pytest.raises(CutShort):
        next(body)

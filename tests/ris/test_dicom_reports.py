"""Reports the PACS pushes with the study: an SR (nested containers, a numeric
measurement, codes) and an Encapsulated PDF sent by dcmtk's storescu to Courier's SCP,
then recognised by :class:`ris.dicom.DicomReports` (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from release.purge import Candidate, Purger
from ris.dicom import BASIC_TEXT_SR, DicomReports
from ris.oru import read_oru
from ris.reports import ReportBook, current_reports, report_final
from store.models import Report, Study
from tests.conftest import LocalScp, have_dcmtk, need
from tests.ris.reportdata import make_pdf, make_sr
from tests.ris.test_mllp import oru
from tests.scu import storescu

STUDY = "1.2.826.0.1.3680043.8.498.5151"


def _push(scp: LocalScp, *files: Path) -> None:
    need("dcmtk", have_dcmtk())
    res = storescu(scp.port, list(files))
    assert res.returncode == 0, res.stderr


def _rows(scp: LocalScp) -> list[Report]:
    with scp.db.sessions() as s:
        return list(s.scalars(select(Report).order_by(Report.id)))


def test_sr_and_pdf_pushed_by_storescu_become_reports(local_scp: LocalScp, tmp_path: Path) -> None:
    sr, sr_uid = make_sr(tmp_path, STUDY)
    basic, _ = make_sr(tmp_path, STUDY, sop_class=BASIC_TEXT_SR, completion="PARTIAL")
    pdf, pdf_uid = make_pdf(tmp_path, STUDY)
    _push(local_scp, sr, basic, pdf)
    sweep = DicomReports(
        local_scp.db.sessions,
        local_scp.content,
        ReportBook(local_scp.db.sessions, local_scp.content),
    )
    assert sweep.sweep() == 3
    assert sweep.sweep() == 0  # once only
    rows = _rows(local_scp)
    by_uid = {r.sop_instance_uid: r for r in rows}
    assert (by_uid[sr_uid].kind, by_uid[sr_uid].status, by_uid[sr_uid].source) == (
        "sr",
        "final",
        "dicom",
    )
    assert by_uid[sr_uid].title == "Diagnostic Imaging Report"
    assert by_uid[pdf_uid].kind == "pdf" and by_uid[pdf_uid].status == "final"
    assert by_uid[pdf_uid].title == "Radiology report"
    assert sorted(r.status for r in rows) == ["final", "final", "preliminary"]
    assert {r.study_instance_uid for r in rows} == {STUDY}
    assert all(r.accession_number == "ACC1001" and r.instance_id for r in rows)
    with local_scp.db.sessions() as s:
        assert report_final(s, STUDY)
        current = current_reports(s, [STUDY])
    assert {r.sop_instance_uid for r in current} == {sr_uid, pdf_uid}


def test_unverified_sr_is_preliminary_and_its_verified_successor_replaces_it(
    local_scp: LocalScp, tmp_path: Path
) -> None:
    first, first_uid = make_sr(tmp_path, STUDY, verification="UNVERIFIED")
    _push(local_scp, first)
    sweep = DicomReports(
        local_scp.db.sessions,
        local_scp.content,
        ReportBook(local_scp.db.sessions, local_scp.content),
    )
    sweep.sweep()
    with local_scp.db.sessions() as s:
        assert not report_final(s, STUDY)
    second, second_uid = make_sr(tmp_path, STUDY, predecessor=first_uid)
    _push(local_scp, second)
    sweep.sweep()
    a, b = _rows(local_scp)
    assert (a.status, b.status, b.supersedes_id) == ("preliminary", "final", a.id)
    with local_scp.db.sessions() as s:
        assert [r.sop_instance_uid for r in current_reports(s, [STUDY])] == [second_uid]
    third, third_uid = make_sr(tmp_path, STUDY, predecessor=second_uid)
    _push(local_scp, third)
    sweep.sweep()
    c = _rows(local_scp)[-1]
    assert (c.status, c.supersedes_id) == ("corrected", b.id)
    with local_scp.db.sessions() as s:
        assert [r.sop_instance_uid for r in current_reports(s, [STUDY])] == [third_uid]


def test_purging_the_study_takes_its_reports_and_their_files(
    local_scp: LocalScp, tmp_path: Path
) -> None:
    """A DICOM report's row names its instance: the purge deletes the reports first
    (PostgreSQL enforces the key), and an HL7 report's body and raw message go too."""

    sr, _ = make_sr(tmp_path, STUDY)
    _push(local_scp, sr)
    book = ReportBook(local_scp.db.sessions, local_scp.content)
    DicomReports(local_scp.db.sessions, local_scp.content, book).sweep()

    raw = oru().encode()
    book.record_hl7(read_oru(raw, accession_field="OBR-3", default_charset="utf-8"), raw)
    rows = _rows(local_scp)
    assert len(rows) == 2 and all(r.study_instance_uid == STUDY for r in rows)
    hl7 = next(r for r in rows if r.source == "hl7")
    files = [local_scp.content.path(hl7.body_path), local_scp.content.path(str(hl7.raw_path))]
    assert all(f.exists() for f in files)
    with local_scp.db.sessions() as s, s.begin():
        study = s.scalars(select(Study).where(Study.study_uid == STUDY)).one()
        study.state = "stable"
        candidate = Candidate(study.id, STUDY, "stable", "hold", "", 30)
    assert Purger(local_scp.db.sessions, local_scp.content, 30).purge(candidate)
    assert _rows(local_scp) == []
    assert not any(f.exists() for f in files)

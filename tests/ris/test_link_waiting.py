"""HL7 reports that came before their study are linked once it is here
(:meth:`ris.reports.ReportBook.link_waiting`), on SQLite and PostgreSQL: every one of
them however many wait (page after page, in id order), matched as on arrival (the
message's Study Instance UID first, even for a study without an accession number, else
the accession number; PID-3 must name the study's PatientID), never one of another
patient; rows recorded before the message's UID was kept are still found by accession.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select, update

from ris.oru import read_oru
from ris.reports import ReportBook
from store.content import ContentStore
from store.models import Report, Study
from tests.conftest import Database
from tests.ris.test_mllp import oru

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
UID_A = "1.2.826.0.1.3680043.8.498.7001"
UID_B = "1.2.826.0.1.3680043.8.498.7002"


@dataclass
class Book:
    db: Database
    book: ReportBook
    n: int = 0

    def receive(self, accession: str, pid: str, study_uid: str = "") -> int:
        """Record one ORU (before its study); its report id."""
        self.n += 1
        extra = [f"OBX|9|ST|113014^Study Instance UID^DCM||{study_uid}||||||F"] if study_uid else []
        text = "OBX|1|TX|IMP^Impression||No change.||||||F"
        raw = oru(control=f"M{self.n}", accession=accession, pid=pid, obx=[text, *extra]).encode()
        recorded = self.book.record_hl7(
            read_oru(raw, accession_field="OBR-3", default_charset="utf-8"), raw
        )
        assert not recorded.matched
        return recorded.report_id

    def study(self, uid: str, accession: str, pid: str) -> None:
        with self.db.sessions() as s, s.begin():
            s.add(
                Study(
                    study_uid=uid,
                    patient_id=pid,
                    accession_number=accession,
                    first_received_at=T0,
                    last_received_at=T0,
                )
            )

    def linked(self) -> dict[int, str]:
        with self.db.sessions() as s:
            return {i: uid for i, uid in s.execute(select(Report.id, Report.study_instance_uid))}


@pytest.fixture
def book(db: Database, tmp_path: Path) -> Book:
    content = ContentStore(tmp_path / "data")
    content.prepare()
    return Book(db, ReportBook(db.sessions, content))


@pytest.mark.parametrize(
    ("page", "refused", "unmatched", "good"),
    [
        (2, 5, 3, 3),  # more reports that cannot be linked than a page, before the good ones
        (3, 0, 0, 7),  # several full pages of good ones
        (1, 2, 2, 1),
        (500, 4, 4, 4),  # everything in one page
    ],
)
def test_every_waiting_report_is_reached_page_after_page(
    book: Book, monkeypatch: pytest.MonkeyPatch, page: int, refused: int, unmatched: int, good: int
) -> None:
    monkeypatch.setattr("ris.reports.PAGE", page)
    other = [book.receive("ACCX", "SOMEONE-ELSE") for _ in range(refused)]  # wrong patient
    alone = [book.receive(f"NOSTUDY{k}", "PAT-1") for k in range(unmatched)]  # no study yet
    mine = [book.receive("ACCX", "PAT-1") for _ in range(good)]
    book.study(UID_A, "ACCX", "PAT-1")
    assert book.book.link_waiting("OBR-3", "utf-8") == good
    now = book.linked()
    assert [now[i] for i in mine] == [UID_A] * good
    assert [now[i] for i in other + alone] == [""] * (refused + unmatched)
    assert book.book.link_waiting("OBR-3", "utf-8") == 0  # nothing left to link


@pytest.mark.parametrize(
    ("studies", "report", "expected"),
    [
        # (study uid, accession, patient id) ...; the report's (accession, PID-3, UID)
        ([(UID_A, "ACC1", "PAT-1")], ("ACC1", "PAT-1", ""), UID_A),
        ([(UID_A, "ACC1", "PAT-2")], ("ACC1", "PAT-1", ""), ""),  # another patient
        ([(UID_A, "ACC1", "")], ("ACC1", "PAT-1", ""), ""),  # a study without PatientID
        # two studies with the accession: only the report's own UID can tell them apart
        ([(UID_A, "ACC1", "PAT-1"), (UID_B, "ACC1", "PAT-1")], ("ACC1", "PAT-1", UID_B), UID_B),
        ([(UID_A, "ACC1", "PAT-1"), (UID_B, "ACC1", "PAT-1")], ("ACC1", "PAT-1", ""), ""),
        # the message names a study that is not here: never the other one of its accession
        ([(UID_A, "ACC1", "PAT-1")], ("ACC1", "PAT-1", UID_B), ""),
        # the UID's study has another accession number: refused, as on arrival
        ([(UID_B, "ACC2", "PAT-1"), (UID_A, "ACC1", "PAT-1")], ("ACC1", "PAT-1", UID_B), ""),
        # the UID's study has no accession number: met by the UID alone, as on arrival
        ([(UID_A, "", "PAT-1")], ("ACC1", "PAT-1", UID_A), UID_A),
        ([(UID_A, "", "PAT-2")], ("ACC1", "PAT-1", UID_A), ""),  # but never another patient's
        ([(UID_A, "", "PAT-1")], ("ACC1", "PAT-1", ""), ""),  # no UID, no accession: nothing
    ],
    ids=[
        "accession-and-patient",
        "other-patient",
        "study-without-patient-id",
        "two-studies-uid-decides",
        "two-studies-no-uid",
        "uid-not-here",
        "uid-other-accession",
        "uid-study-without-accession",
        "uid-study-without-accession-other-patient",
        "no-uid-study-without-accession",
    ],
)
def test_a_waiting_report_is_matched_as_on_arrival(
    book: Book,
    studies: list[tuple[str, str, str]],
    report: tuple[str, str, str],
    expected: str,
) -> None:
    accession, pid, uid = report
    rid = book.receive(accession, pid, uid)
    for study in studies:
        book.study(*study)
    assert book.book.link_waiting("OBR-3", "utf-8") == (1 if expected else 0)
    assert book.linked()[rid] == expected


@pytest.mark.parametrize(("accession", "expected"), [("ACC1", UID_A), ("", "")])
def test_a_report_recorded_before_0021_is_found_by_accession(
    book: Book, accession: str, expected: str
) -> None:
    rid = book.receive("ACC1", "PAT-1", UID_A)
    with book.db.sessions() as s, s.begin():
        assert s.get(Report, rid).message_study_uid == UID_A  # type: ignore[union-attr]
        # As a row written before migration 0021: no message UID on it.
        s.execute(update(Report).where(Report.id == rid).values(message_study_uid=None))
    book.study(UID_A, accession, "PAT-1")
    assert book.book.link_waiting("OBR-3", "utf-8") == (1 if expected else 0)
    assert book.linked()[rid] == expected

"""Recording reports: an HL7 ``ORU^R01`` (from :mod:`ris.oru`) or a DICOM report instance
(from :mod:`ris.dicom`) becomes a :class:`store.models.Report` row.

An HL7 report's body (the PDF as received, or the text as UTF-8) and its raw message are
written durably into the content store under ``reports/`` before the row is committed
(and removed if the commit fails): nothing is acknowledged AA that is not on disk. A
DICOM report's body is the instance's own file. Reports are matched to their study by
Study Instance UID (when the message carries one) or by accession number; one that
arrives before its study waits (``study_instance_uid`` "", the message's own UID kept in
``message_study_uid``) and is linked by :meth:`ReportBook.link_waiting` once the study
is there and the patient ID agrees.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from release.reports import DELIVERABLE
from release.reports import current_reports as current_reports  # re-exported
from release.reports import report_final as report_final  # re-exported
from ris.oru import OruReport, Refused, read_oru
from ris.settings import AccessionField
from store.content import FILE_MODE, ContentStore, sha256_of
from store.models import Report, ReportStatus, Study

log = logging.getLogger(__name__)

#: Waiting reports read per transaction by :meth:`ReportBook.link_waiting` (all are read).
PAGE = 500


@dataclass(frozen=True)
class Recorded:
    """The outcome of :meth:`ReportBook.record_hl7`: the row, and whether it was new."""

    report_id: int
    duplicate: bool
    matched: bool


def _now() -> datetime:
    return datetime.now(UTC)


class ReportBook:
    """Reports in the store: record, link, and the current ones of a study."""

    def __init__(self, sessions: sessionmaker[Session], content: ContentStore) -> None:
        self._sessions = sessions
        self._content = content
        self._told: set[int] = set()  # waiting reports whose failed match was logged

    # -- HL7 ---------------------------------------------------------------------------

    def record_hl7(self, report: OruReport, raw: bytes, now: datetime | None = None) -> Recorded:
        """Store one ORU report; raises :class:`Refused` (AE) when it cannot be matched
        safely (nothing is stored then). A retransmission (same sender and MSH-10) is
        answered with the row already stored."""
        now = now or _now()
        with self._sessions() as s:
            existing = s.scalar(
                select(Report.id).where(Report.hl7_control_id == report.control_key).limit(1)
            )
            if existing is not None:
                return Recorded(existing, True, True)
            study_uid = self._match(s, report)
        body = report.pdf if report.pdf is not None else report.text.encode("utf-8")
        stem = f"reports/hl7/{now:%Y%m}/{uuid.uuid4().hex}"
        body_rel = f"{stem}.{'pdf' if report.pdf is not None else 'txt'}"
        raw_rel = f"{stem}.hl7"
        self._write(body_rel, body)
        try:
            self._write(raw_rel, raw)
            sha, size = sha256_of(self._content.path(body_rel))
            with self._sessions() as s, s.begin():
                previous = s.scalar(
                    select(Report.id)
                    .where(Report.source == "hl7", Report.accession_number == report.accession)
                    .order_by(Report.id.desc())
                    .limit(1)
                )
                row = Report(
                    study_instance_uid=study_uid,
                    accession_number=report.accession,
                    status=report.status,
                    source="hl7",
                    kind=report.kind,
                    title=report.title,
                    reported_at_text=report.reported_at,
                    received_at=now,
                    body_path=body_rel,
                    body_sha256=sha,
                    body_size=size,
                    raw_path=raw_rel,
                    hl7_control_id=report.control_key,
                    supersedes_id=previous,
                    message_study_uid=report.study_uid or None,
                )
                s.add(row)
                s.flush()
                report_id = row.id
        except BaseException:
            self._content.remove(body_rel)
            self._content.remove(raw_rel)
            raise
        log.info(
            "report %d recorded source=hl7 kind=%s status=%s matched=%s",
            report_id,
            report.kind,
            report.status,
            bool(study_uid),
        )
        return Recorded(report_id, False, bool(study_uid))

    def _match(self, s: Session, report: OruReport) -> str:
        """The study's UID, "" while none has arrived; :class:`Refused` (AE) on doubt:
        a report without a patient ID (PID-3) is never matched by accession alone, and
        the study must have a PatientID equal to one of PID-3's IDs."""
        if not any(report.patient_ids):
            raise Refused("AE", "204", "no patient ID (PID-3) in the report", report.header)
        if report.study_uid:
            studies = list(s.scalars(select(Study).where(Study.study_uid == report.study_uid)))
            if studies and studies[0].accession_number not in ("", report.accession):
                raise Refused("AE", "204", "the study's accession number differs", report.header)
        else:
            studies = list(
                s.scalars(select(Study).where(Study.accession_number == report.accession))
            )
        if len(studies) > 1:
            raise Refused(
                "AE", "205", "more than one study has this accession number", report.header
            )
        if not studies:
            return ""
        study = studies[0]
        if not study.patient_id or study.patient_id not in report.patient_ids:
            raise Refused(
                "AE", "204", "the patient ID (PID-3) does not match the study", report.header
            )
        return study.study_uid

    def link_waiting(self, accession_field: AccessionField, default_charset: str) -> int:
        """Give reports that arrived before their study the study's UID, now that it is
        here. Returns how many were linked.

        Every waiting HL7 report whose accession number a study now has, or whose
        message named the Study Instance UID of a study now here (``message_study_uid``,
        so a study without an accession number is met too), is looked at, oldest first
        (by id), :data:`PAGE` at a time, one transaction a page, until none is left:
        however many wait, none is skipped. Each is matched again exactly as on arrival
        (:meth:`_match`, from its raw message): by the message's Study Instance UID when
        it carries one (so two studies with the accession do not stop it), else by the
        accession number, and only when the study's PatientID is one of PID-3's; one that
        does not match stays waiting (logged once a process, by id). Reports recorded
        before ``message_study_uid`` existed (NULL) are found by accession only."""
        linked, after = 0, 0
        while True:  # bounded: ``after`` grows with every full page
            with self._sessions() as s, s.begin():
                page = list(
                    s.scalars(
                        select(Report)
                        .where(
                            Report.study_instance_uid == "",
                            Report.source == "hl7",
                            Report.id > after,
                            or_(
                                exists().where(Study.accession_number == Report.accession_number),
                                # the message's UID: its study may have no accession number
                                exists().where(Study.study_uid == Report.message_study_uid),
                            ),
                        )
                        .order_by(Report.id)
                        .limit(PAGE)
                    )
                )
                for row in page:
                    linked += self._link(s, row, accession_field, default_charset)
            if len(page) < PAGE:
                return linked
            after = page[-1].id

    def _link(
        self, s: Session, row: Report, accession_field: AccessionField, default_charset: str
    ) -> bool:
        """Match one waiting report (in ``s``'s transaction); True when it was linked."""
        if row.raw_path is None:
            return False
        try:
            raw = self._content.path(row.raw_path).read_bytes()
            oru = read_oru(raw, accession_field=accession_field, default_charset=default_charset)
            uid = self._match(s, oru)
        except (OSError, Refused) as exc:
            if row.id not in self._told:  # once a process, not at every sweep
                self._told.add(row.id)
                reason = exc.reason if isinstance(exc, Refused) else type(exc).__name__
                log.warning("report %d not linked: %s", row.id, reason)
            return False
        if not uid:
            return False
        row.study_instance_uid = uid
        return True

    def drop_waiting(self, days: int, now: datetime | None = None) -> int:
        """Delete HL7 reports still waiting for their study ``days`` after they came
        (``store.unmatched_retention_days``), with their body and raw message."""
        cutoff = (now or _now()) - timedelta(days=days)
        with self._sessions() as s, s.begin():
            rows = list(
                s.scalars(
                    select(Report)
                    .where(
                        Report.study_instance_uid == "",
                        Report.source == "hl7",
                        Report.received_at < cutoff,
                    )
                    .limit(500)
                )
            )
            ids = [r.id for r in rows]
            paths = [p for r in rows for p in (r.body_path, r.raw_path) if p]
            if ids:
                s.execute(
                    update(Report).where(Report.supersedes_id.in_(ids)).values(supersedes_id=None)
                )
                s.execute(delete(Report).where(Report.id.in_(ids)))
        for path in paths:
            self._content.remove(path)
        if ids:
            log.info("%d report(s) that never met their study deleted", len(ids))
        return len(ids)

    # -- DICOM -------------------------------------------------------------------------

    def record_dicom(
        self,
        s: Session,
        *,
        instance_id: int,
        study_uid: str,
        accession: str,
        sop_instance_uid: str,
        kind: str,
        status: str,
        title: str,
        reported_at: str,
        body_path: str,
        sha256: str,
        size: int,
        predecessors: Iterable[str] = (),
        now: datetime | None = None,
    ) -> Report:
        """One DICOM report instance as a row (in the caller's transaction)."""
        previous = None
        preds = [p for p in predecessors if p]
        if preds:
            prev = s.scalars(
                select(Report)
                .where(Report.sop_instance_uid.in_(preds))
                .order_by(Report.id.desc())
                .limit(1)
            ).first()
            previous = prev.id if prev is not None else None
            if status == ReportStatus.CORRECTED and (
                prev is None or prev.status not in DELIVERABLE
            ):
                status = ReportStatus.FINAL.value  # what it replaces never went out as final
        row = Report(
            study_instance_uid=study_uid,
            accession_number=accession,
            status=status,
            source="dicom",
            kind=kind,
            title=title[:200],
            reported_at_text=reported_at[:40],
            received_at=now or _now(),
            instance_id=instance_id,
            sop_instance_uid=sop_instance_uid,
            body_path=body_path,
            body_sha256=sha256,
            body_size=size,
            supersedes_id=previous,
        )
        s.add(row)
        return row

    # -- reading -----------------------------------------------------------------------

    def _write(self, relpath: str, data: bytes) -> None:
        spool = self._content.spool
        spool.mkdir(parents=True, exist_ok=True)
        tmp = spool / f"report-{uuid.uuid4().hex}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            self._content.place(tmp, relpath)
        finally:
            tmp.unlink(missing_ok=True)

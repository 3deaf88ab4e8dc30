"""Reports the PACS pushes with the study: SR (Basic Text, Enhanced, Comprehensive,
Comprehensive 3D, Extensible) and Encapsulated PDF instances, already stored by ``scp``,
recognised by SOP Class and recorded as :class:`store.models.Report` rows (the instance
file is the body). An Encapsulated CDA is not recorded: it is never sent
(``release.reports.withheld_instances``).

Status: an SR is ``final`` when its CompletionFlag is COMPLETE and its VerificationFlag
VERIFIED (``corrected`` when it also names a predecessor document), otherwise
``preliminary`` (a PreliminaryFlag of PRELIMINARY too). A PDF is ``final`` unless the
same flags, where present, say otherwise. Run by the worker's sweep
(:meth:`DicomReports.sweep`); only the header is read (the PDF's bytes stay on disk).

An instance whose header cannot be read (a damaged file, or one the node cannot open
right now) is marked ``report_unreadable_at`` (migration 0020) and logged once, by id:
the sweep's search for new report instances leaves marked ones out, so however many
pile up, new ones are always reached. Each marked one is tried again
:data:`RETRY_AFTER` after its last failure, at most :data:`RETRY_BATCH` a sweep. It
stays an instance like any other for staff, and, having no report row, it is withheld
from recipients (``release.reports.withheld_instances``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from release.reports import (  # noqa: F401 (re-exported: one definition, in release)
    BASIC_TEXT_SR,
    COMPREHENSIVE_SR,
    ENCAPSULATED_PDF,
    ENHANCED_SR,
    RECORDED_CLASSES,
    REPORT_CLASSES,
    SR_CLASSES,
)
from ris.reports import ReportBook
from store.content import ContentStore
from store.models import Instance, Report, Study

log = logging.getLogger(__name__)

MARGIN = 10_000  # instance ids looked at again by each sweep (late commits)
#: An unreadable report instance is read again this long after it last failed.
RETRY_AFTER = timedelta(days=1)
#: At most this many unreadable ones are read again per sweep (never at new ones' cost).
RETRY_BATCH = 20

_HEADER_TAGS = [
    "SOPClassUID",
    "CompletionFlag",
    "VerificationFlag",
    "PreliminaryFlag",
    "PredecessorDocumentsSequence",
    "ConceptNameCodeSequence",
    "DocumentTitle",
    "ContentDate",
    "ContentTime",
    "MIMETypeOfEncapsulatedDocument",
]


def status_of(ds: Dataset) -> str:
    """final | corrected | preliminary from a report instance's flags."""
    completion = str(ds.get("CompletionFlag", "") or "").upper()
    verification = str(ds.get("VerificationFlag", "") or "").upper()
    preliminary = str(ds.get("PreliminaryFlag", "") or "").upper()
    if preliminary == "PRELIMINARY":
        return "preliminary"
    if completion not in ("", "COMPLETE") or verification not in ("", "VERIFIED"):
        return "preliminary"
    if str(ds.get("SOPClassUID", "")) in SR_CLASSES and (
        completion != "COMPLETE" or verification != "VERIFIED"
    ):
        return "preliminary"
    return "corrected" if predecessors_of(ds) else "final"


def predecessors_of(ds: Dataset) -> list[str]:
    """SOP Instance UIDs the document replaces (PredecessorDocumentsSequence)."""
    out: list[str] = []
    for study in ds.get("PredecessorDocumentsSequence", []) or []:
        for series in study.get("ReferencedSeriesSequence", []) or []:
            for sop in series.get("ReferencedSOPSequence", []) or []:
                uid = str(sop.get("ReferencedSOPInstanceUID", "") or "")
                if uid:
                    out.append(uid)
    return out


def title_of(ds: Dataset) -> str:
    title = str(ds.get("DocumentTitle", "") or "")
    if not title:
        for item in ds.get("ConceptNameCodeSequence", []) or []:
            title = str(item.get("CodeMeaning", "") or "")
            break
    return title


def _now() -> datetime:
    return datetime.now(UTC)


class DicomReports:
    """Finds report instances with no Report row yet and records them."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        content: ContentStore,
        book: ReportBook,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._sessions = sessions
        self._content = content
        self._book = book
        self._clock = clock
        self._seen = 0  # instance ids up to this one were looked at (see sweep)

    def sweep(self, limit: int = 200) -> int:
        """Record up to ``limit`` new report instances (and retry up to
        :data:`RETRY_BATCH` unreadable ones that are due); returns how many were recorded.

        The first sweep of a process looks at every instance; later ones only at those
        added since (by id, with a margin of :data:`MARGIN` ids for rows that committed
        late on PostgreSQL), so a large store is not scanned every few seconds. Instances
        marked unreadable are left out of that search (see the module)."""
        now = self._clock()
        unrecorded = (
            select(Instance, Study)
            .join(Study, Study.id == Instance.study_id)
            .outerjoin(Report, Report.instance_id == Instance.id)
            .where(
                Instance.sop_class_uid.in_(RECORDED_CLASSES),
                Instance.file_missing.is_(False),
                Report.id.is_(None),
            )
        )
        with self._sessions() as s:
            top = s.scalar(select(func.max(Instance.id))) or 0
            rows = s.execute(
                unrecorded.where(
                    Instance.id > self._seen - MARGIN, Instance.report_unreadable_at.is_(None)
                )
                .order_by(Instance.id)
                .limit(limit)
            ).all()
            found = [(inst, study) for inst, study in rows]
            retry = s.execute(
                unrecorded.where(Instance.report_unreadable_at <= now - RETRY_AFTER)
                .order_by(Instance.report_unreadable_at, Instance.id)
                .limit(RETRY_BATCH)
            ).all()
            found += [(inst, study) for inst, study in retry]
        if len(rows) < limit:  # all caught up to ``top``
            self._seen = max(self._seen, top)
        return sum(self._record(inst, study, now) for inst, study in found)

    def _record(self, inst: Instance, study: Study, now: datetime) -> bool:
        """Read one instance's header and record it; False when it was unreadable (now
        marked) or another node's sweep was first."""
        try:
            ds = pydicom.dcmread(
                self._content.path(inst.path), specific_tags=_HEADER_TAGS, force=False
            )
        except (OSError, InvalidDicomError, ValueError, AttributeError, KeyError) as exc:
            self._mark_unreadable(inst, now, type(exc).__name__)
            return False
        kind = "pdf" if inst.sop_class_uid == ENCAPSULATED_PDF else "sr"
        with self._sessions() as s, s.begin():
            if s.scalar(select(Report.id).where(Report.instance_id == inst.id)) is not None:
                return False  # another node's sweep was first
            row = self._book.record_dicom(
                s,
                instance_id=inst.id,
                study_uid=study.study_uid,
                accession=study.accession_number,
                sop_instance_uid=inst.sop_instance_uid,
                kind=kind,
                status=status_of(ds),
                title=title_of(ds),
                reported_at=f"{ds.get('ContentDate', '')}{ds.get('ContentTime', '')}",
                body_path=inst.path,
                sha256=inst.sha256,
                size=inst.size_bytes,
                predecessors=predecessors_of(ds),
                now=now,
            )
            if inst.report_unreadable_at is not None:  # readable again: unmark it
                s.execute(
                    update(Instance).where(Instance.id == inst.id).values(report_unreadable_at=None)
                )
            s.flush()
            log.info("report %d recorded source=dicom kind=%s status=%s", row.id, kind, row.status)
        return True

    def _mark_unreadable(self, inst: Instance, now: datetime, error: str) -> None:
        """Remember that ``inst`` could not be read at ``now`` (logged on the first
        failure only: a retry that fails again is expected news)."""
        with self._sessions() as s, s.begin():
            s.execute(
                update(Instance).where(Instance.id == inst.id).values(report_unreadable_at=now)
            )
        if inst.report_unreadable_at is None:
            log.warning(
                "report instance %d unreadable (%s); tried again in %s",
                inst.id,
                error,
                RETRY_AFTER,
            )

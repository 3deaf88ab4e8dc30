"""Which of a study's reports may go to the patient, and whether it has a final one.

Shared by ``ris`` (which records reports), the release policy's ``until: report_final``
and ``delivery`` (which puts the current ones in the package): a report chain is a
report and those that replaced it (``supersedes_id``); only its latest final or
corrected member is current, never a preliminary.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import Report, ReportStatus

DELIVERABLE = (ReportStatus.FINAL.value, ReportStatus.CORRECTED.value)


def current_reports(s: Session, study_uids: Iterable[str]) -> list[Report]:
    """The reports of these studies that may go to a patient: in each chain of
    replacements (a final after a preliminary, a correction after a final) the latest
    final or corrected one; never a preliminary. Oldest first."""
    uids = sorted({u for u in study_uids if u})
    if not uids:
        return []
    rows = list(
        s.scalars(select(Report).where(Report.study_instance_uid.in_(uids)).order_by(Report.id))
    )
    return _latest_per_chain(rows)


def _latest_per_chain(rows: list[Report]) -> list[Report]:
    chain_of: dict[int, int] = {}
    latest: dict[int, Report] = {}
    for row in rows:  # ascending id: a row's predecessor comes first
        chain = chain_of.get(row.supersedes_id or -1, row.id)
        chain_of[row.id] = chain
        if row.status in DELIVERABLE:
            latest[chain] = row
    return sorted(latest.values(), key=lambda r: r.id)


def report_final(s: Session, study_uid: str) -> bool:
    """True when the study has a final (or corrected) report: ``until: report_final``."""
    return bool(
        s.scalar(
            select(Report.id)
            .where(Report.study_instance_uid == study_uid, Report.status.in_(DELIVERABLE))
            .limit(1)
        )
    )

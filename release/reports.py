"""Which of a study's reports may go to the patient, and whether it has a final one.

Shared by ``ris`` (which records reports), the release policy's ``until: report_final``
and ``delivery`` (which puts the current ones in the package): a report chain is a
report and those that replaced it (``supersedes_id``); only its latest final or
corrected member is current, never a preliminary.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from rules.matcher import RuleSet
from store.models import Report, ReportDelivery, ReportStatus, RequestStudy, Study

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


def studies_with_reports(
    s: Session, request_id: int, rules: RuleSet | None, default: str
) -> list[str]:
    """The request's studies whose current reports go in its package: the policy of the
    rule that attached each study (its ``reports:``), else ``default``
    (``delivery.reports``: ``never`` or ``with_images``). A study staff attached has no
    rule: the default."""
    rows = s.execute(
        select(RequestStudy.rule, Study.study_uid)
        .join(Study, Study.id == RequestStudy.study_id)
        .where(RequestStudy.request_id == request_id)
        .order_by(RequestStudy.id)
    ).all()
    out = []
    for rule_name, uid in rows:
        rule = rules.rule(rule_name) if rules is not None and rule_name else None
        policy = rule.reports if rule is not None and rule.reports is not None else default
        if policy == "with_images":
            out.append(uid)
    return out


def drop_reports(s: Session, study_uid: str) -> list[str]:
    """Delete the study's reports (and the records of where they went) in ``s``, the
    transaction that purges the study; returns the content-store paths to remove once
    it commits: HL7 bodies and raw messages, which live exactly as long as the report
    (a DICOM report's body is its instance's file, purged with it)."""
    rows = list(s.scalars(select(Report).where(Report.study_instance_uid == study_uid)))
    ids = [r.id for r in rows]
    if not ids:
        return []
    paths = [p for r in rows if r.source == "hl7" for p in (r.body_path, r.raw_path) if p]
    s.execute(delete(ReportDelivery).where(ReportDelivery.report_id.in_(ids)))
    s.execute(update(Report).where(Report.supersedes_id.in_(ids)).values(supersedes_id=None))
    s.execute(delete(Report).where(Report.id.in_(ids)))
    return paths

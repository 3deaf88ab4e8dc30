"""Which of a study's reports may go to the patient, and whether it has a final one.

Shared by ``ris`` (which records reports), the release policy's ``until: report_final``
and ``delivery`` (which puts the current ones in the package): a report chain is a
report and those that replaced it (``supersedes_id``); only its latest final or
corrected member is current, never a preliminary.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from rules.matcher import RuleSet
from store.models import Instance, Report, ReportDelivery, ReportStatus, RequestStudy, Study

DELIVERABLE = (ReportStatus.FINAL.value, ReportStatus.CORRECTED.value)

# The SOP classes of the reports the PACS pushes with a study (recognised by
# ``ris.dicom``, withheld by :func:`withheld_instances`): one definition, here.
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
EXTENSIBLE_SR = "1.2.840.10008.5.1.4.1.1.88.35"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
ENCAPSULATED_CDA = "1.2.840.10008.5.1.4.1.1.104.2"
SR_CLASSES = (BASIC_TEXT_SR, ENHANCED_SR, COMPREHENSIVE_SR, COMPREHENSIVE_3D_SR, EXTENSIBLE_SR)
# Recorded as Report rows by ``ris.dicom`` (may go out once current, ``with_images``).
RECORDED_CLASSES = (*SR_CLASSES, ENCAPSULATED_PDF)
# Every report class; a CDA document is never recorded, so it is always withheld.
REPORT_CLASSES = (*RECORDED_CLASSES, ENCAPSULATED_CDA)


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


def withheld_instances(
    s: Session, study_ids: Collection[int], report_study_uids: Collection[str]
) -> set[int]:
    """The ids of the instances of studies ``study_ids`` that may not go to the
    recipient: every instance of a report SOP class (:data:`REPORT_CLASSES`) unless its
    study is in ``report_study_uids`` (the studies whose policy is ``with_images``:
    :func:`studies_with_reports`) and it is the instance of a current report
    (:func:`current_reports`: a final or corrected one, not replaced). A report instance
    the sweep has not recorded yet is withheld too. The one rule of every way a study's
    instances reach a recipient (package, disc, portal viewer, DICOMweb)."""
    ids = sorted(set(study_ids))
    if not ids:
        return set()
    rows = s.execute(
        select(Instance.id, Study.study_uid)
        .join(Study, Study.id == Instance.study_id)
        .where(Instance.study_id.in_(ids), Instance.sop_class_uid.in_(REPORT_CLASSES))
    ).all()
    if not rows:
        return set()
    allowed_uids = {u for u in report_study_uids if u}
    allowed = {
        r.instance_id
        for r in current_reports(s, {uid for _, uid in rows if uid in allowed_uids})
        if r.instance_id is not None
    }
    return {int(i) for i, uid in rows if i not in allowed or uid not in allowed_uids}


def withheld_for_request(
    s: Session, request_id: int, report_study_uids: Collection[str] | None
) -> set[int]:
    """:func:`withheld_instances` for every study attached to request ``request_id``;
    ``report_study_uids`` None: no study's policy is ``with_images`` (all withheld)."""
    study_ids = s.scalars(
        select(RequestStudy.study_id).where(RequestStudy.request_id == request_id)
    ).all()
    return withheld_instances(s, list(study_ids), report_study_uids or ())


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

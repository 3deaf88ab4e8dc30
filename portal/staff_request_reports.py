"""The staff request page's radiology reports: every report of the request's studies
(from the PACS or the RIS), its status, whether it is the current one a patient may get
and whether it went out with this request. No report text: staff read it in the RIS."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from release.reports import current_reports
from store.models import Report, ReportDelivery, RequestStudy, Study


@dataclass(frozen=True)
class ReportRow:
    """One line of the page's Reports table."""

    received: str  # UTC, minutes
    source: str  # dicom | hl7
    kind: str  # pdf | text | sr
    status: str  # preliminary | final | corrected
    title: str
    current: bool
    delivered: bool


def request_reports(s: Session, request_id: int) -> list[ReportRow]:
    """The reports of the request's studies, oldest first."""
    uids = list(
        s.scalars(
            select(Study.study_uid)
            .join(RequestStudy, RequestStudy.study_id == Study.id)
            .where(RequestStudy.request_id == request_id)
        )
    )
    if not uids:
        return []
    rows = list(
        s.scalars(select(Report).where(Report.study_instance_uid.in_(uids)).order_by(Report.id))
    )
    current = {r.id for r in current_reports(s, uids)}
    sent = set(
        s.scalars(select(ReportDelivery.report_id).where(ReportDelivery.request_id == request_id))
    )
    return [
        ReportRow(
            received=r.received_at.strftime("%Y-%m-%d %H:%M UTC"),
            source="RIS (HL7)" if r.source == "hl7" else "PACS (DICOM)",
            kind={"pdf": "PDF", "text": "text", "sr": "structured report"}[r.kind],
            status=r.status,
            title=r.title,
            current=r.id in current,
            delivered=r.id in sent,
        )
        for r in rows
    ]

"""The studies staff pick from for a new request, read from the database.

Read-only; plain dataclasses out, so templates never touch a session. Also the rows a
request's page lists as matched (:func:`portal.staff_story.story` fills ``matched_at``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import Study, StudyState

STUDY_LIMIT = 200


@dataclass(frozen=True)
class StudyLine:
    study_uid: str
    accession_number: str
    study_date: str
    study_description: str
    modalities: str
    instance_count: int
    state: str
    matched_at: datetime | None = None


def study_line(st: Study, matched_at: datetime | None = None) -> StudyLine:
    """The row of ``st`` (``matched_at``: when it joined the request, if it did)."""
    return StudyLine(
        st.study_uid,
        st.accession_number,
        st.study_date,
        st.study_description,
        st.modalities,
        st.instance_count,
        str(st.state),
        matched_at,
    )


def studies_of_patient(s: Session, patient_id: str) -> list[StudyLine]:
    """Received studies (not purged) whose Patient ID is ``patient_id``, newest first."""
    q = (
        select(Study)
        .where(Study.patient_id == patient_id, Study.state != StudyState.PURGED)
        .order_by(Study.study_date.desc(), Study.last_received_at.desc())
        .limit(STUDY_LIMIT)
    )
    return [study_line(st) for st in s.scalars(q)]


def patient_of(s: Session, patient_id: str) -> tuple[str, str]:
    """The name and birth date the newest received study gives for ``patient_id``
    (to prefill the form; staff check them), or empty strings."""
    row = s.execute(
        select(Study.patient_name, Study.patient_birth_date)
        .where(Study.patient_id == patient_id)
        .order_by(Study.last_received_at.desc())
        .limit(1)
    ).first()
    return (row[0], row[1]) if row else ("", "")

"""Shared helpers for the release tests: a valid draft and row counts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from release.validation import RequestDraft
from store.models import ReleaseRequest, RequestEvent, RequestSelection

# A number phonenumbers accepts as a UK mobile (the 07700 900xxx drama range is not valid).
MOBILE = "+447911123456"


def draft_data(**overrides: Any) -> dict[str, Any]:
    """A valid, synthetic request as submitted (override any field)."""
    data: dict[str, Any] = {
        "patient_id": "MRN-000123",
        "patient_name": "Test^Patient",
        "patient_birth_date": "19700131",
        "recipient_email": "patient@example.org",
        "second_channel": f"sms:{MOBILE}",
        "selection": [{"kind": "accession", "value": "ACC0001"}],
        "requested_by": "dr.test",
    }
    data.update(overrides)
    return data


def draft(**overrides: Any) -> RequestDraft:
    return RequestDraft.model_validate(draft_data(**overrides))


def counts(sessions: sessionmaker[Session]) -> tuple[int, int, int]:
    """(requests, selections, events) rows."""
    with sessions() as s:
        return tuple(  # type: ignore[return-value]
            int(s.scalar(select(func.count()).select_from(m)) or 0)
            for m in (ReleaseRequest, RequestSelection, RequestEvent)
        )

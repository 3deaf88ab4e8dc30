"""Release requests as plain data: what the CLI prints and the API returns."""

from __future__ import annotations

from typing import Any

from store.models import ReleaseRequest, RequestEvent


def request_dict(req: ReleaseRequest) -> dict[str, Any]:
    """The request as plain data (CLI ``--json`` and the REST API)."""
    return {
        "id": req.id,
        "reference": req.reference,
        "state": str(req.state),
        "patient_id": req.patient_id,
        "patient_name": req.patient_name,
        "patient_birth_date": req.patient_birth_date,
        "recipient_email": req.recipient_email,
        "second_channel": req.second_channel,
        "backup_email": req.backup_email,
        "language": req.language,
        "urgency": str(req.urgency),
        "link_days": req.link_days,
        "note": req.note,
        "requested_by": req.requested_by,
        "idempotency_key": req.idempotency_key,
        "created_at": req.created_at,
        "updated_at": req.updated_at,
        "due_by": req.due_by,
        "selection": [
            {"kind": s.kind, "value": s.value, "expected_instances": s.expected_instances}
            for s in req.selections
        ],
    }


def event_dict(event: RequestEvent) -> dict[str, Any]:
    """One timeline entry as plain data."""
    return {
        "at": event.at,
        "actor": event.actor,
        "from": event.from_state,
        "to": event.to_state,
        "reason": event.reason,
    }

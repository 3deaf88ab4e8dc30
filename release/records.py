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
        "patient_issuer": req.patient_issuer,
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
        # The release policy's hold (release.embargo): "" none, embargo, report,
        # max_wait_passed, rule_missing, staff.
        "hold": req.hold_kind,
        "hold_until": req.hold_until,
        "tell_patient_when": req.tell_patient_when,
        "selection": [
            {"kind": s.kind, "value": s.value, "expected_instances": s.expected_instances}
            for s in req.selections
        ],
        "destination": destination_dict(req),
    }


def destination_dict(req: ReleaseRequest) -> dict[str, Any] | None:
    """Where a hospital-to-hospital request goes, and how its sending stands (None: the
    recipient is a person)."""
    dest = req.destination
    if dest is None:
        return None
    return {
        "ae_title": dest.ae_title,
        "host": dest.host,
        "port": dest.port,
        "commitment": str(dest.commitment),
        "attempts": dest.attempts,
        "next_attempt_at": dest.next_attempt_at,
        "last_error": dest.last_error,
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

"""Identity mismatches staff resolve: attach the held study anyway, or keep it held.

Matching (:mod:`release.matching`) records an :class:`~store.models.IdentityMismatch`
when a study's patient identity disagrees with a request's; these functions are the
two ways staff close one, each in the caller's transaction, with a required reason that
goes to the request's timeline and to an audit event naming the staff member.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from release.errors import InvalidRequest, InvalidTransition
from release.identity import Identity
from release.progress import JOINABLE, attach, note
from release.requests import RequestBook
from store.audit import record
from store.models import (
    IdentityMismatch,
    MismatchState,
    ReleaseRequest,
    RequestState,
    Study,
)


def identity_of(req: ReleaseRequest) -> Identity:
    """The patient identity a request was made for."""
    return Identity(
        patient_id=req.patient_id,
        birth_date=req.patient_birth_date,
        name=req.patient_name,
        issuer=req.patient_issuer or "",
    )


def mismatches(s: Session, request_id: int) -> list[tuple[IdentityMismatch, Study]]:
    """The identity mismatches of a request, oldest first, with their studies."""
    rows = s.execute(
        select(IdentityMismatch, Study)
        .join(Study, Study.id == IdentityMismatch.study_id)
        .where(IdentityMismatch.request_id == request_id)
        .order_by(IdentityMismatch.id)
    )
    return [(m, st) for m, st in rows]


REASON_MAX = 500


def _open_mismatch(s: Session, mismatch_id: int, request_id: int) -> IdentityMismatch:
    found = s.get(IdentityMismatch, mismatch_id, with_for_update=True)
    if found is None or found.request_id != request_id:
        raise InvalidTransition("no such identity mismatch on this request; look at it again")
    if found.state != MismatchState.OPEN:
        raise InvalidTransition(
            f"this identity mismatch was already resolved ({found.state}); look at it again"
        )
    return found


def _checked_reason(reason: str) -> str:
    text = " ".join(reason.split())
    if not text:
        raise InvalidRequest("give the reason (it goes to the timeline and the audit trail)")
    if len(text) > REASON_MAX:
        raise InvalidRequest(f"the reason is too long (at most {REASON_MAX} characters)")
    return text


def attach_anyway(
    s: Session,
    book: RequestBook,
    request_id: int,
    mismatch_id: int,
    *,
    actor: str,
    audit_actor: str,
    reason: str,
    now: datetime,
) -> RequestState:
    """Staff override, in the caller's transaction ``s``: attach the held study to the
    request although its identity disagrees, with a reason; the request moves on as
    matching would (``receiving``, then ``ready`` when complete). Timeline event and an
    audit event (an override of a safety check) name the staff member. Returns the
    request's state afterwards. Raises :class:`InvalidRequest` (no reason) or
    :class:`InvalidTransition` (already resolved, or the request cannot take studies
    any more)."""
    text = _checked_reason(reason)
    m = _open_mismatch(s, mismatch_id, request_id)
    req = s.get(ReleaseRequest, request_id)
    study = s.get(Study, m.study_id)
    assert req is not None and study is not None
    state = RequestState(req.state)
    if state not in JOINABLE:
        raise InvalidTransition(
            f"request {req.reference} is {state}: it takes no more studies; look at it again"
        )
    m.state, m.resolved_at, m.resolved_by, m.reason = MismatchState.ATTACHED, now, actor, text
    why = f"study {study.study_uid} attached despite identity mismatch ({m.fields}): {text}"
    state = attach(s, book, req, study, rule=m.rule, why=why, actor=actor, now=now)
    record(
        s,
        "identity-override",
        actor=audit_actor,
        studies=[study.study_uid],
        request=req.reference,
        detail=f"study attached despite identity mismatch ({m.fields}): {text}",
        at=now,
    )
    return state


def dismiss(
    s: Session,
    request_id: int,
    mismatch_id: int,
    *,
    actor: str,
    audit_actor: str,
    reason: str,
    now: datetime,
) -> None:
    """Staff confirm the held study is not this request's: it stays held (never
    attached to it, never alerted again), with a reason on the timeline and an audit
    event. Raises as :func:`attach_anyway`."""
    text = _checked_reason(reason)
    m = _open_mismatch(s, mismatch_id, request_id)
    req = s.get(ReleaseRequest, request_id)
    study = s.get(Study, m.study_id)
    assert req is not None and study is not None
    m.state, m.resolved_at, m.resolved_by, m.reason = MismatchState.DISMISSED, now, actor, text
    note(s, req, actor, f"study {study.study_uid} kept held (not this patient's): {text}", now)
    record(
        s,
        "identity-mismatch",
        actor=audit_actor,
        studies=[study.study_uid],
        request=req.reference,
        detail=f"staff kept the study held from the request ({m.fields}): {text}",
        at=now,
    )

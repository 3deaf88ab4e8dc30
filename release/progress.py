"""A request's progress as studies attach to it: the moves matching and staff share.

A study attached to a request (by the rules, or by staff from the request or study
pages) moves the request the same way: waiting requests go to ``receiving``, and a
request whose every selection is satisfied by a stable study (with at least the
expected instance count, when one was given) goes to ``ready``. A shortfall is never
released silently: :func:`unsatisfied` says what is missing. Every move goes through
:meth:`release.requests.RequestBook.move` inside the caller's transaction, so a lost
race writes nothing and the caller's transaction stays valid.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from release.errors import InvalidTransition
from release.requests import RequestBook
from release.states import allowed
from store.models import (
    ReleaseRequest,
    RequestEvent,
    RequestSelection,
    RequestState,
    RequestStudy,
    SelectionKind,
    Study,
    StudyState,
)

log = logging.getLogger("courier.release.matching")

#: The actor the rules' own moves are recorded under.
ACTOR = "rules"
#: Requests a study may still join: an overdue request takes late studies too.
JOINABLE = (RequestState.PENDING, RequestState.RECEIVING, RequestState.OVERDUE)


def unsatisfied(sel: RequestSelection, studies: list[Study]) -> str | None:
    """None when a stable attached study satisfies ``sel``; else what is missing."""
    if sel.kind == SelectionKind.REFERENCE:
        hits = studies
    elif sel.kind == SelectionKind.ACCESSION:
        hits = [st for st in studies if st.accession_number == sel.value]
    else:
        hits = [st for st in studies if st.study_uid == sel.value]
    stable = [st for st in hits if st.state == StudyState.STABLE]
    if not stable:
        return f"{sel.kind} not received and stable yet"
    if sel.expected_instances is not None:
        got = max(st.instance_count for st in stable)
        if got < sel.expected_instances:
            return f"{sel.kind}: {got} of {sel.expected_instances} instances (partial)"
    return None


def complete(
    s: Session, book: RequestBook, req: ReleaseRequest, state: RequestState, now: datetime
) -> bool:
    """In ``s``: move ``req`` to ready if every selection is satisfied; True if it did."""
    if state not in (RequestState.RECEIVING, RequestState.OVERDUE):
        return False
    selections = list(
        s.scalars(select(RequestSelection).where(RequestSelection.request_id == req.id))
    )
    studies = list(
        s.scalars(
            select(Study)
            .join(RequestStudy, RequestStudy.study_id == Study.id)
            .where(RequestStudy.request_id == req.id)
        )
    )
    missing = [m for sel in selections if (m := unsatisfied(sel, studies))]
    if missing:
        log.info("request %s not ready: %d selection(s) open", req.id, len(missing))
        return False
    reason = f"all {len(selections)} selection(s) received and stable"
    return move_in(s, book, req, state, RequestState.READY, reason, now)


def move_in(
    s: Session,
    book: RequestBook,
    req: ReleaseRequest,
    source: RequestState,
    target: RequestState,
    reason: str,
    now: datetime,
    actor: str = ACTOR,
) -> bool:
    """Move inside ``s``; False (nothing written) if someone moved it first."""
    if not allowed(source, target):
        return False
    try:
        # A lost race changes nothing (the UPDATE matched no row, no event was
        # added), so the rest of the caller's transaction stays valid.
        book.move(s, req, source, target, actor, reason, now)
    except InvalidTransition:
        return False  # their move stands
    if target == RequestState.READY:
        # Ready again (maybe with a new study): the release policy decides afresh
        # (release.embargo); a staff hold stays as staff set it.
        req.hold_checked_at = None
    return True


def note(s: Session, req: ReleaseRequest, actor: str, reason: str, now: datetime) -> None:
    """A line on the request's timeline that does not move it (same state both sides)."""
    state = str(req.state)
    s.add(
        RequestEvent(
            request_id=req.id, at=now, actor=actor, from_state=state, to_state=state, reason=reason
        )
    )


def attach(
    s: Session,
    book: RequestBook,
    req: ReleaseRequest,
    study: Study,
    *,
    rule: str,
    why: str,
    actor: str,
    now: datetime,
) -> RequestState:
    """In ``s``: attach ``study`` to ``req`` (a staff decision: the caller checked the
    request still takes studies) and move the request on as matching would: a waiting
    request to ``receiving`` with ``why`` on its timeline (otherwise ``why`` is a note
    there), then to ``ready`` if that completed it. Returns its state afterwards."""
    state = RequestState(req.state)
    s.add(RequestStudy(request_id=req.id, study_id=study.id, rule=rule, matched_at=now))
    if state in (RequestState.PENDING, RequestState.OVERDUE) and move_in(
        s, book, req, state, RequestState.RECEIVING, why, now, actor=actor
    ):
        state = RequestState.RECEIVING
    else:
        note(s, req, actor, why, now)
    s.flush()
    if complete(s, book, req, state, now):
        state = RequestState.READY
    return state

"""The transition table: every allowed move works and is recorded; the rest write nothing;
two actors moving the same request at once: exactly one wins."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from release.errors import InvalidTransition
from release.requests import RequestBook
from release.states import FINAL, RESENDABLE, TRANSITIONS
from store.models import ReleaseRequest, RequestEvent, RequestState
from tests.conftest import Database
from tests.release.helpers import counts, draft

S = RequestState
T0 = datetime(2030, 1, 31, 9, 0, tzinfo=UTC)


def _force(db: Database, reference: str, state: RequestState) -> None:
    """Put a request in ``state`` directly (test set-up, no event)."""
    with db.sessions.begin() as s:
        s.execute(
            update(ReleaseRequest).where(ReleaseRequest.reference == reference).values(state=state)
        )


def _state(db: Database, reference: str) -> str:
    with db.sessions() as s:
        return str(
            s.scalar(select(ReleaseRequest.state).where(ReleaseRequest.reference == reference))
        )


def test_the_table_covers_every_state_and_final_states_are_final() -> None:
    assert set(TRANSITIONS) == set(S)
    assert {S.EXPIRED, S.CANCELLED, S.DELIVERED} == FINAL
    for source, targets in TRANSITIONS.items():
        assert source not in targets
        assert (S.CANCELLED in targets) == (source not in FINAL)
    main_line = [S.PENDING, S.RECEIVING, S.READY, S.PACKAGING, S.NOTIFIED, S.DOWNLOADED]
    for a, b in itertools.pairwise(main_line):
        assert b in TRANSITIONS[a]


@pytest.mark.parametrize("source", list(S))
def test_every_pair(db: Database, source: RequestState) -> None:
    ticks = iter(T0 + timedelta(minutes=i) for i in range(100))
    book = RequestBook(db.sessions, clock=lambda: next(ticks))
    ref = book.create(draft(), "t").reference
    for target in S:
        _force(db, ref, source)
        before = counts(db.sessions)
        if target in TRANSITIONS[source]:
            event = book.transition(ref, target, "worker:1", f"to {target}")
            assert (event.from_state, event.to_state, event.actor, event.reason) == (
                source,
                target,
                "worker:1",
                f"to {target}",
            )
            assert _state(db, ref) == target
            last = book.timeline(ref)[-1]
            assert (last.id, last.from_state, last.to_state) == (event.id, source, target)
            assert book.get(ref).updated_at == event.at
            assert counts(db.sessions) == (before[0], before[1], before[2] + 1)
        else:
            with pytest.raises(InvalidTransition, match=ref):
                book.transition(ref, target, "worker:1", "nope")
            assert _state(db, ref) == source
            assert counts(db.sessions) == before


def test_refusals_say_what_is_possible(book_and_ref: tuple[RequestBook, str]) -> None:
    book, ref = book_and_ref
    with pytest.raises(InvalidTransition, match="from pending it can go to cancelled, overdue"):
        book.transition(ref, S.NOTIFIED, "t", "")
    book.cancel(ref, "t", "duplicate")
    with pytest.raises(InvalidTransition, match="stays so; create a new request"):
        book.cancel(ref, "t", "again")


@pytest.fixture
def book_and_ref(db: Database) -> tuple[RequestBook, str]:
    book = RequestBook(db.sessions, clock=lambda: T0)
    return book, book.create(draft(), "t").reference


def test_from_state_guards_the_move(db: Database, book_and_ref: tuple[RequestBook, str]) -> None:
    book, ref = book_and_ref
    _force(db, ref, S.READY)
    book.transition(ref, S.PACKAGING, "packager", "claimed", from_state=S.READY)
    before = counts(db.sessions)
    with pytest.raises(InvalidTransition, match="is packaging, not ready"):
        book.transition(ref, S.PACKAGING, "packager", "claimed", from_state=S.READY)
    assert counts(db.sessions) == before


def test_the_conditional_update_decides_who_wins(db: Database) -> None:
    """A rival moves the request between our read and our UPDATE: we lose, write nothing."""
    rival = RequestBook(db.sessions, clock=lambda: T0)
    armed: list[Callable[[], object]] = []

    def clock() -> datetime:
        while armed:  # runs after our SELECT, before our UPDATE
            armed.pop()()
        return T0

    book = RequestBook(db.sessions, clock=clock)
    ref = book.create(draft(), "t").reference
    _force(db, ref, S.READY)
    armed.append(lambda: rival.transition(ref, S.PACKAGING, "rival", "claimed"))
    before = counts(db.sessions)
    with pytest.raises(InvalidTransition, match="changed by someone else"):
        book.transition(ref, S.CANCELLED, "staff", "not needed")
    assert _state(db, ref) == S.PACKAGING
    assert counts(db.sessions) == (before[0], before[1], before[2] + 1)  # the rival's only
    assert book.timeline(ref)[-1].actor == "rival"


@pytest.mark.parametrize("contenders", [2, 6])
def test_concurrent_moves_from_the_same_state(db: Database, contenders: int) -> None:
    book = RequestBook(db.sessions, clock=lambda: T0)
    ref = book.create(draft(), "t").reference
    _force(db, ref, S.READY)
    barrier = threading.Barrier(contenders)
    won: list[str] = []
    lost: list[str] = []

    def claim(n: int) -> None:
        mine = RequestBook(db.sessions, clock=lambda: T0)
        barrier.wait()
        try:
            mine.transition(ref, S.PACKAGING, f"packager:{n}", "claimed")
            won.append(f"packager:{n}")
        except InvalidTransition:
            lost.append(f"packager:{n}")

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == contenders - 1
    with db.sessions() as s:
        moves = s.scalars(select(RequestEvent).where(RequestEvent.to_state == S.PACKAGING)).all()
    assert [e.actor for e in moves] == won


@pytest.mark.parametrize("state", list(S))
def test_resend_only_after_a_link_went_out(
    db: Database, book_and_ref: tuple[RequestBook, str], state: RequestState
) -> None:
    book, ref = book_and_ref
    _force(db, ref, state)
    before = counts(db.sessions)
    if state in RESENDABLE:
        event = book.resend(ref, "cli:alice")
        assert (event.from_state, event.to_state, event.reason) == (
            state,
            state,
            "resend requested",
        )
        assert counts(db.sessions) == (before[0], before[1], before[2] + 1)
    else:
        with pytest.raises(InvalidTransition, match="nothing to resend"):
            book.resend(ref, "cli:alice")
        assert counts(db.sessions) == before
    assert _state(db, ref) == state

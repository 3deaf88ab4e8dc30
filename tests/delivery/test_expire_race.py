"""The housekeeping sweep never expires a request whose link was extended after it read
its due list (review of bc48260): the move's UPDATE requires that no link of the request
expires after now, and on PostgreSQL it first waits for an extension in flight (the
link's row lock, as :func:`portal.grantsession.lock_grant` takes it) and reads its
commit. SQLite and PostgreSQL, an injected clock; the race is forced by a hook between
the list and the move, and on PostgreSQL by a second connection (another node) holding
the link's lock."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from delivery.batch import DeliveryBatch
from delivery.grants import GrantKeys
from delivery.outbox import Outbox
from portal.grantsession import lock_grant
from store.errors import DatabaseUnavailable
from store.models import Grant, RequestState
from tests.conftest import Database
from tests.pglocks import wait_until_blocked_on
from tests.release.helpers import draft
from tests.release.test_purge import World


@pytest.fixture
def world(db: Database, tmp_path: Path) -> World:
    return World(db, tmp_path)


class ExtendMeanwhile(DeliveryBatch):
    """A batch that, once it has read its due list, lets another node extend a link."""

    extend: tuple[int, datetime] | None = None

    def _expiring(self, now: datetime) -> list[tuple[int, str, str]]:
        due = super()._expiring(now)
        if self.extend is not None:
            grant_id, until = self.extend
            with self._sessions() as s, s.begin():
                lock_grant(s, grant_id).expires_at = until
        return due


def _delivered(
    world: World, tmp_path: Path, cls: type[ExtendMeanwhile] = ExtendMeanwhile
) -> tuple[ExtendMeanwhile, str, int, datetime]:
    batch = cls(
        world.sessions,
        world.content,
        world.book,
        Outbox(clock=world.clock),
        GrantKeys(b"k" * 32),
        tmp_path / "packages",
        purge_grace_days=7,
        clock=world.clock,
    )
    req = world.book.create(draft(selection=[{"kind": "accession", "value": "ACC77"}]), "t")
    world.receive("race", 1, accession="ACC77")
    world.settle()
    assert batch.deliver(req.reference) == "notified"
    with world.sessions() as s:
        grant = s.scalars(select(Grant).where(Grant.request_id == req.id)).one()
    return batch, req.reference, grant.id, grant.expires_at


def test_a_link_extended_after_the_list_was_read_is_not_expired(
    world: World, tmp_path: Path
) -> None:
    batch, reference, grant_id, ends = _delivered(world, tmp_path)
    world.clock.now = ends + timedelta(minutes=1)
    until = world.clock.now + timedelta(days=14)
    batch.extend = (grant_id, until)
    assert batch.expire() == []
    assert world.book.get(reference).state == RequestState.NOTIFIED
    # Once the extension has run out too, it expires as usual.
    batch.extend = None
    world.clock.now = until + timedelta(minutes=1)
    assert batch.expire() == [reference]
    assert world.book.get(reference).state == RequestState.EXPIRED


# PostgreSQL only: SQLite has one writer at a time, so nothing is in flight beside a move.
@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_an_extension_in_flight_on_another_node_is_waited_for(
    db: Database, world: World, tmp_path: Path
) -> None:
    batch, reference, grant_id, ends = _delivered(world, tmp_path)
    world.clock.now = ends + timedelta(minutes=1)
    other = db.sessions()  # another node: the patient's extension, not yet committed
    other.begin()
    lock_grant(other, grant_id).expires_at = world.clock.now + timedelta(days=14)
    other.flush()
    xid = other.scalar(text("SELECT pg_current_xact_id()::text"))
    result: list[list[str]] = []
    sweep = threading.Thread(target=lambda: result.append(batch.expire()))
    try:
        sweep.start()
        # Until the sweep waits on the link's lock, or ends.
        wait_until_blocked_on(db.engine, xid, sweep)
        other.commit()
    finally:
        other.close()
        sweep.join(30)
    assert result == [[]]
    assert world.book.get(reference).state == RequestState.NOTIFIED


class OneUnavailable(ExtendMeanwhile):
    """A batch whose move of one request meets an unavailable database (a lock timeout)."""

    failing: int | None = None

    def _expire_one(self, rid: int, state: str, now: datetime, days: int) -> bool:
        if rid == self.failing:
            raise DatabaseUnavailable("lock timeout (test)")
        return super()._expire_one(rid, state, now, days)


def test_one_request_that_cannot_be_moved_does_not_stop_the_others(
    world: World, tmp_path: Path
) -> None:
    batch, first, _grant, ends = _delivered(world, tmp_path, OneUnavailable)
    assert isinstance(batch, OneUnavailable)
    req = world.book.create(draft(selection=[{"kind": "accession", "value": "ACC78"}]), "t")
    world.receive("race2", 1, accession="ACC78")
    world.settle()
    assert batch.deliver(req.reference) == "notified"
    with world.sessions() as s:
        later = max(g.expires_at for g in s.scalars(select(Grant)))
        batch.failing = world.book.get(first).id
    world.clock.now = max(ends, later) + timedelta(minutes=1)
    assert batch.expire() == [req.reference]
    assert world.book.get(first).state == RequestState.NOTIFIED  # tried again next sweep
    batch.failing = None
    assert batch.expire() == [first]

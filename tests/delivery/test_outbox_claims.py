"""Who may release a ``sending`` outbox row (issue 16), in-process on SQLite and PostgreSQL.

- A row whose claimer still runs is never released, however long it has been sending
  (a slow SMTP server may take minutes after the final dot).
- A row whose claimer is gone is released at once, through the "outcome unknown" path:
  on PostgreSQL "gone" is "its advisory lock was dropped with its connection" (another
  node died), on SQLite "its process no longer runs".
- A relay claims only the rows it is about to send: while one message is with the
  provider, the other due rows are still ``queued`` (a crash would strand one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from delivery.channel import OutgoingMessage, Receipt
from delivery.compose import Branding, Composer
from delivery.files import FileChannel
from delivery.grants import GrantKeys, new_grant
from delivery.outbox import Outbox, process_identity
from delivery.relay import Relay
from release.requests import RequestBook
from store.claims import lock_connection
from store.db import make_engine, make_sessions
from store.models import Notification, NotificationAttempt, ReleaseRequest, RequestState
from tests.conftest import PG_URL, Database
from tests.release.helpers import draft

KEYS = GrantKeys(b"c" * 32)


class PeekingChannel(FileChannel):
    """The file channel, noting the states of all outbox rows while it sends."""

    def __init__(self, db: Database, outdir: Path) -> None:
        super().__init__("email", outdir, sender="imaging@hospital.example")
        self.db = db
        self.seen: list[list[str]] = []

    async def send(self, message: OutgoingMessage) -> Receipt:
        with self.db.sessions() as s:
            self.seen.append(list(s.scalars(select(Notification.state).order_by(Notification.id))))
        return await super().send(message)


def _links(db: Database, n: int) -> list[int]:
    """``n`` notified requests, each with its link email queued; their row ids."""
    book, outbox, ids = RequestBook(db.sessions), Outbox(domain="hospital.example"), []
    for _ in range(n):
        req = book.create(draft(), "test")
        with db.sessions() as s, s.begin():
            fresh = s.get(ReleaseRequest, req.id)
            assert fresh is not None
            fresh.state = RequestState.NOTIFIED
            grant = new_grant(s, KEYS, fresh, package_id=None, link_days=30, now=datetime.now(UTC))
            row = outbox.enqueue(
                s,
                kind="link_email",
                channel="email",
                recipient=fresh.recipient_email,
                request_id=fresh.id,
                grant_id=grant.id,
            )
            ids.append(row.id)
    return ids


def _relay(db: Database, channel: FileChannel, concurrency: int = 8) -> Relay:
    return Relay(
        db.sessions,
        Outbox(domain="hospital.example"),
        {"email": channel},
        Composer(KEYS, Branding("https://c.example", "H", "H")),
        RequestBook(db.sessions),
        concurrency=concurrency,
    )


@pytest.fixture
def other_node(db: Database) -> Iterator[Engine]:
    """A second engine on the same database: another node's connections."""
    engine = make_engine(PG_URL, schema=db.schema) if db.schema else make_engine(db.url)
    yield engine
    engine.dispose()


def _claim_elsewhere(engine: Engine, claimer: str) -> tuple[int, AbstractContextManager[Any]]:
    """Claim the next due row as another relay would, and start its attempt; returns the
    row id and the (open) lock connection's context manager."""
    ctx = lock_connection(engine)
    lock = ctx.__enter__()
    sessions = make_sessions(engine)
    outbox = Outbox(domain="hospital.example")
    with sessions() as s:
        nid = outbox.claim_next(s, lock, 900, claimer)
    assert nid is not None
    with sessions() as s:
        row = s.get(Notification, nid)
        assert row is not None
    with sessions() as s:
        outbox.start_attempt(s, row, "email")
    return nid, ctx


@pytest.mark.parametrize("claimer_alive", [True, False], ids=["alive", "dead"])
def test_only_a_dead_claimers_row_is_released(
    db: Database, other_node: Engine, tmp_path: Path, claimer_alive: bool
) -> None:
    [nid] = _links(db, 1)
    # SQLite tells by process (this one runs; "another start of this pid" does not);
    # PostgreSQL by the advisory lock, held while the other node's connection is open.
    me = process_identity()
    claimer = me if claimer_alive or db.schema else me.rsplit(":", 1)[0] + ":0"
    _, held = _claim_elsewhere(other_node, claimer)
    if not claimer_alive:
        held.__exit__(None, None, None)
        other_node.dispose()  # the node's connections are gone: PostgreSQL drops its locks
    channel = FileChannel("email", tmp_path / "out", sender="imaging@hospital.example")
    relay = _relay(db, channel)
    try:
        sent = asyncio.run(relay.run_once())
        with db.sessions() as s:
            row = s.get(Notification, nid)
            assert row is not None
            outcomes = list(
                s.scalars(
                    select(NotificationAttempt.outcome)
                    .where(NotificationAttempt.notification_id == nid)
                    .order_by(NotificationAttempt.id)
                )
            )
        if claimer_alive:  # untouched: the lease has 900 s to go and its relay runs
            assert (sent, row.state, row.claimed_by, outcomes) == (0, "sending", claimer, [""])
            assert not list((tmp_path / "out").glob("*.eml"))
        else:  # released, looked up (absent from the file outbox), sent once
            assert (sent, row.state, row.claimed_by, outcomes) == (1, "sent", None, ["", "sent"])
            assert len(list((tmp_path / "out").glob("*.eml"))) == 1
    finally:
        if claimer_alive:
            held.__exit__(None, None, None)


def test_a_relay_claims_only_the_rows_it_is_sending(db: Database, tmp_path: Path) -> None:
    ids = _links(db, 3)
    channel = PeekingChannel(db, tmp_path / "out")
    assert asyncio.run(_relay(db, channel, concurrency=1).run_once()) == 3
    # While each message was with the provider, only it was claimed.
    assert channel.seen == [
        ["sending", "queued", "queued"],
        ["sent", "sending", "queued"],
        ["sent", "sent", "sending"],
    ]
    with db.sessions() as s:
        rows = list(s.scalars(select(Notification).where(Notification.id.in_(ids))))
        assert all(r.claimed_by is None and r.claimed_until is None for r in rows)

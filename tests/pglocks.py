"""Waiting, in a test, until a PostgreSQL transaction has a waiter (bounded)."""

from __future__ import annotations

import threading

from sqlalchemy import Engine, text


def wait_until_blocked_on(engine: Engine, xid: str, worker: threading.Thread) -> None:
    """Return once some session waits for transaction ``xid``'s lock, or ``worker``
    ended, or after about 10 s (the caller's asserts then say what happened)."""
    pause = threading.Event()
    for _ in range(500):
        with engine.connect() as c:
            blocked = c.scalar(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' "
                    "AND NOT granted AND transactionid::text = :xid"
                ),
                {"xid": xid},
            )
        if blocked or not worker.is_alive():
            return
        pause.wait(0.02)

"""Claiming work when several nodes share one PostgreSQL database.

Every piece of work (a ready request to package, a due notification, a study to mark
stable, a due pull) has two guards:

- :func:`skip_locked`: the SELECT that picks it takes ``FOR UPDATE SKIP LOCKED`` on
  PostgreSQL, so concurrent workers each get *different* rows instead of queueing on
  the same one. SQLite (one node, one writer) compiles it away.
- the conditional UPDATE each module already makes (``WHERE state = 'ready'``), whose
  row count says who won: the exactly-once guard on every backend.

Two kinds of advisory lock, keyed per schema (``hashtext(current_schema() || name)``, so
test schemas sharing a database never collide):

- :func:`holding` a session-level lock on one row's work for as long as it runs
  (packaging): PostgreSQL drops it when the holder's connection dies, so "is anybody
  still working on this?" is answered by the database, not by guessing from a clock
  (:func:`orphaned`).
- :func:`turn`: one node at a time runs a periodic sweep; the others skip that round
  ("whichever node gets there first").

On SQLite both always succeed: a SQLite node is the only node (``courier serve`` refuses
a role other than ``all`` there).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Select, text

S = TypeVar("S", bound=Select[Any])

_KEY = "hashtext(current_schema() || ':' || :name)"


def skip_locked(stmt: S, *of: Any) -> S:
    """``stmt ... FOR UPDATE [OF of] SKIP LOCKED`` (PostgreSQL; SQLite ignores it).

    Use it inside the transaction that then claims the rows with a conditional UPDATE;
    ``of`` names the tables to lock when ``stmt`` outer-joins (PostgreSQL refuses to
    lock the nullable side of an outer join).
    """
    return stmt.with_for_update(skip_locked=True, of=list(of) if of else None)


def is_postgres(bind: Engine | Connection) -> bool:
    """True when ``bind`` talks to PostgreSQL (several nodes possible)."""
    return bind.dialect.name == "postgresql"


def try_lock(conn: Connection, name: str, key: int = 0) -> bool:
    """Take the session-level advisory lock ``(name, key)`` on ``conn`` if free."""
    if not is_postgres(conn):
        return True
    return bool(
        conn.execute(
            text(f"SELECT pg_try_advisory_lock({_KEY}, :key)"), {"name": name, "key": key}
        ).scalar()
    )


def unlock(conn: Connection, name: str, key: int = 0) -> None:
    """Release what :func:`try_lock` took on ``conn``."""
    if is_postgres(conn):
        conn.execute(text(f"SELECT pg_advisory_unlock({_KEY}, :key)"), {"name": name, "key": key})


@contextmanager
def lock_connection(engine: Engine) -> Iterator[Connection]:
    """A pooled connection in autocommit mode, to hold advisory locks on (no
    transaction stays open while the work runs). Whoever locks on it must unlock
    before leaving: a lock would otherwise go back to the pool with the connection."""
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


@contextmanager
def holding(conn: Connection, name: str, key: int) -> Iterator[bool]:
    """Hold ``(name, key)`` on ``conn`` for the body; yields whether it was free."""
    got = try_lock(conn, name, key)
    try:
        yield got
    finally:
        if got:
            unlock(conn, name, key)


@contextmanager
def turn(engine: Engine, name: str) -> Iterator[bool]:
    """This node's turn at sweep ``name``? Yields True for the one node that got the
    lock (held until the body ends), False for the others, which skip this round."""
    with lock_connection(engine) as conn, holding(conn, f"sweep:{name}", 0) as mine:
        yield mine


def orphaned(conn: Connection, name: str, keys: list[int]) -> list[int]:
    """Those of ``keys`` nobody holds ``(name, key)`` for: work whose node died (or
    ended). Each lock is taken and released at once; the caller's conditional UPDATE
    then decides (a worker that finished in between has moved the row on)."""
    free = []
    for key in keys:
        if try_lock(conn, name, key):
            unlock(conn, name, key)
            free.append(key)
    return free


@contextmanager
def serialized(conn: Connection, name: str) -> Iterator[None]:
    """Wait for the transaction-level advisory lock ``name`` inside ``conn``'s open
    transaction (released at its commit): migrations run one node at a time."""
    if is_postgres(conn):
        # A large migration may take minutes; the C-STORE-sized timeouts do not apply.
        conn.execute(text("SET LOCAL lock_timeout = 0"))
        conn.execute(text("SET LOCAL statement_timeout = 0"))
        conn.execute(text(f"SELECT pg_advisory_xact_lock({_KEY}, 0)"), {"name": name})
    yield

"""Engines, sessions and migrations for SQLite (embedded default) and PostgreSQL.

SQLite runs in WAL mode with ``synchronous=FULL``: a C-STORE is acknowledged only after
its row is committed, and ``NORMAL`` may lose the last commits on power loss.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from store.claims import serialized
from store.errors import DatabaseUnavailable
from store.settings import StoreSettings

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).parent / "migrations"


def database_url(
    settings: StoreSettings,
    data_dir: Path,
    base: Path,
    environ: Mapping[str, str] = os.environ,
) -> str:
    """Resolve the URL: from the env var, the file, the literal, or SQLite under data_dir."""
    if settings.database_url_env:
        value = environ.get(settings.database_url_env)
        if not value:
            raise ValueError(
                f"store.database_url_env: environment variable "
                f"{settings.database_url_env} is not set"
            )
        return value.strip()
    if settings.database_url_file:
        p = Path(settings.database_url_file)
        return (p if p.is_absolute() else base / p).read_text(encoding="utf-8").strip()
    if settings.database_url:
        return settings.database_url
    return f"sqlite:///{data_dir / 'courier.db'}"


def make_engine(
    url: str, *, busy_timeout_s: float = 5.0, pool_size: int = 8, schema: str | None = None
) -> Engine:
    """Create an engine with Courier's durability settings.

    ``schema`` (PostgreSQL only) puts every table in that schema, which tests use to
    isolate themselves in the shared ``test`` database.
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"future": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            path = Path(parsed.database)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Made owner-only before SQLite opens it: SQLite gives the -wal and -shm
            # files the database file's mode, and all three hold patient data.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        kwargs["connect_args"] = {"timeout": busy_timeout_s, "check_same_thread": False}
    else:
        connect_args: dict[str, Any] = {"connect_timeout": max(1, int(busy_timeout_s))}
        options = [
            f"-c lock_timeout={int(busy_timeout_s * 1000)}",
            f"-c statement_timeout={int(busy_timeout_s * 4000)}",
        ]
        if schema:
            options.append(f"-c search_path={schema}")
        given = parsed.query.get("options")
        if given:
            # Keep options given in the URL (e.g. a search_path) beside ours.
            options.insert(0, given if isinstance(given, str) else " ".join(given))
        connect_args["options"] = " ".join(options)
        kwargs.update(
            connect_args=connect_args,
            pool_size=pool_size,
            pool_pre_ping=True,
            pool_timeout=busy_timeout_s,
        )
    engine = create_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        timeout_ms = int(busy_timeout_s * 1000)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute(f"PRAGMA busy_timeout={timeout_ms}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        _GATES[engine] = threading.Lock()
        _GATE_WAIT_S[engine] = busy_timeout_s

    return engine


@contextmanager
def writing(s: Session) -> Iterator[None]:
    """Run the body as ``s``'s one short write transaction, which it ends with
    ``s.commit()`` (anything else is rolled back on the way out).

    Enter before the transaction's first write. On SQLite the database's one write lock
    is taken here (``BEGIN IMMEDIATE``), so reads in the body see the latest commit, and
    the engine's writers in this process queue on a lock for it in turn: a waiter wakes
    as soon as the writer before it commits, where SQLite's own busy wait polls with a
    back-off (up to 100 ms a poll) that lets newcomers overtake, which made the tail of
    the portal's code check take seconds under load. Keep the body short: every other
    writer waits for it. On PostgreSQL nothing is done here (each UPDATE locks its rows).
    """
    conn = s.connection()
    if conn.dialect.name != "sqlite":
        try:
            yield
        finally:
            if s.in_transaction():
                s.rollback()
        return
    if conn.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
        raise RuntimeError("writing() must come before the transaction's first write")
    gate = _GATES.get(conn.engine) or threading.Lock()  # an engine made elsewhere: none
    # Bounded: a writer that cannot get the gate in time still meets SQLite's own wait.
    held = gate.acquire(timeout=_GATE_WAIT_S.get(conn.engine, 5.0))
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield
    finally:
        try:
            if s.in_transaction():
                s.rollback()
        finally:
            if held:
                gate.release()


# The write gate of each SQLite engine made by make_engine (see writing), and its wait.
_GATES: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_GATE_WAIT_S: weakref.WeakKeyDictionary[Engine, float] = weakref.WeakKeyDictionary()


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    """The session factory every package receives (never a global)."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config() -> AlembicConfig:
    """Alembic's configuration for our migrations (``store/migrations``)."""
    from alembic.config import Config as AlembicConfig  # see migrate

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def migrate(engine: Engine) -> None:
    """Apply every Alembic migration up to head (idempotent, run at start-up).

    On PostgreSQL the upgrade waits for an advisory lock held until its transaction
    commits, so nodes starting together migrate one after the other (the second finds
    the schema at head and does nothing).

    A database already at head (every CLI command, every restart) is recognised by one
    SELECT against the revision named in the migration files, without importing Alembic
    (which reads and compiles every migration: a tenth of a second per command)."""
    if _at_head(engine):
        return
    from alembic import command

    cfg = alembic_config()
    try:
        with engine.begin() as conn, serialized(conn, "migrations"):
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except (OperationalError, DBAPIError) as exc:
        cause = type(getattr(exc, "orig", None) or exc).__name__
        raise DatabaseUnavailable(
            f"cannot open the index database ({cause}); check store.database_url and "
            "that the database server is running"
        ) from None


_REVISION = re.compile(r"^(down_)?revision\s*=\s*[\"']([^\"']*)[\"']", re.MULTILINE)


def _head() -> str | None:
    """The single head revision of the migration files (``revision = "…"`` not named as
    any file's ``down_revision``), or None when that cannot be told simply."""
    revisions: set[str] = set()
    downs: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for down, value in _REVISION.findall(path.read_text(encoding="utf-8")):
            (downs if down else revisions).add(value)
    heads = revisions - downs
    return heads.pop() if len(heads) == 1 else None


def _at_head(engine: Engine) -> bool:
    """True when the database's alembic_version is the files' head (any doubt: False,
    and Alembic decides)."""
    head = _head()
    if head is None:
        return False
    try:
        with engine.connect() as conn:
            found = list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    except DBAPIError:  # no such table yet, or no database: Alembic will say
        return False
    return found == [head]

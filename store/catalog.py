"""The catalog: index rows for what arrived, written once the file is durable.

One call, one transaction: the study and series rows are created or updated and the
instance row inserted together. A study that was ``stable`` and receives another
instance goes back to ``receiving``, and that change is recorded as a
:class:`~store.models.StudyEvent`. Database failures surface as
:class:`~store.errors.DatabaseUnavailable`; a concurrent insert of the same SOP
Instance UID as :class:`DuplicateRace`, so the caller can look again.

The receive path's rows (:meth:`Catalog.add`, once per instance) are written on the
driver's cursor with statements compiled once, and, on SQLite, committed *relaxed* on
connections of their own (see :meth:`Catalog.add`); everything else goes through
SQLAlchemy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Dialect,
    Engine,
    Pool,
    PoolProxiedConnection,
    Table,
    bindparam,
    case,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, TimeoutError
from sqlalchemy.orm import Session, sessionmaker

from store.db import _GATE_WAIT_S, _GATES, writing
from store.errors import DatabaseUnavailable, StoreError
from store.models import (
    Instance,
    InstanceConflict,
    Series,
    Study,
    StudyEvent,
    StudyState,
    UTCDateTime,
    utcnow,
)


class DuplicateRace(StoreError):
    """Another association inserted the same SOP Instance UID first."""


@dataclass(frozen=True)
class InstanceRecord:
    """Everything the index keeps about one arrival (patient fields stay out of logs)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    sha256: str
    size_bytes: int
    path: str
    patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_description: str = ""
    modality: str = ""
    series_number: str = ""
    series_description: str = ""
    instance_number: str = ""
    declared_pixels: int | None = None  # Rows x Columns x frames x samples; None: no image
    calling_ae: str = ""
    called_ae: str = ""
    peer_host: str = ""


@dataclass(frozen=True)
class KnownInstance:
    """An instance already in the index."""

    id: int
    sha256: str
    path: str
    file_missing: bool


@contextmanager
def guarded(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose database failures become :class:`DatabaseUnavailable`."""
    try:
        with sessions() as session:
            yield session
    except IntegrityError:
        raise
    except (OperationalError, TimeoutError, DBAPIError) as exc:
        raise _unavailable(exc) from None


_STUDIES = cast(Table, Study.__table__)
_SERIES = cast(Table, Series.__table__)
_INSTANCES = cast(Table, Instance.__table__)
_EVENTS = cast(Table, StudyEvent.__table__)


def _p(name: str) -> Any:
    # Bind names must differ from column names in INSERT/UPDATE: prefix them.
    return bindparam(f"p_{name}")


def _binds(*names: str) -> dict[str, Any]:
    """Column values bound to same-named parameters of :func:`_p`."""
    return {name: _p(name) for name in names}


_S, _SE, _I, _E = _STUDIES.c, _SERIES.c, _INSTANCES.c, _EVENTS.c
_NOW = bindparam("now", type_=UTCDateTime())
_BUMP_STUDY = (
    update(_STUDIES)
    .where(_S.study_uid == _p("study_uid"))
    .values(
        instance_count=_S.instance_count + 1,
        size_bytes=_S.size_bytes + _p("size_bytes"),
        last_received_at=case((_S.last_received_at < _NOW, _NOW), else_=_S.last_received_at),
    )
    .returning(_S.id, _S.state, _S.modalities)
)
_NEW_STUDY = (
    insert(_STUDIES)
    .values(
        **_binds(
            "study_uid",
            "patient_id",
            "patient_name",
            "patient_birth_date",
            "accession_number",
            "study_date",
            "study_description",
            "size_bytes",
            "calling_ae",
            "called_ae",
            "peer_host",
        ),
        modalities=_p("modality"),
        state=StudyState.RECEIVING,
        instance_count=1,
        first_received_at=_NOW,
        last_received_at=_NOW,
    )
    .returning(_S.id)
)
_NEW_EVENT = insert(_EVENTS).values(
    **_binds("study_id", "from_state", "to_state", "reason"), at=_NOW
)
_UNSTABLE = (
    update(_STUDIES)
    .where(_S.id == _p("study_id"))
    .values(state=StudyState.RECEIVING, stable_at=None)
)
_MODALITIES = update(_STUDIES).where(_S.id == _p("study_id")).values(modalities=_p("modalities"))
_BUMP_SERIES = (
    update(_SERIES)
    .where(_SE.series_uid == _p("series_uid"))
    .values(instance_count=_SE.instance_count + 1, size_bytes=_SE.size_bytes + _p("size_bytes"))
    .returning(_SE.id)
)
_NEW_SERIES = (
    insert(_SERIES)
    .values(
        **_binds(
            "study_id",
            "series_uid",
            "modality",
            "series_number",
            "series_description",
            "size_bytes",
        ),
        instance_count=1,
    )
    .returning(_SE.id)
)
_NEW_INSTANCE = insert(_INSTANCES).values(
    **_binds(
        "study_id",
        "series_id",
        "sop_instance_uid",
        "sop_class_uid",
        "transfer_syntax_uid",
        "instance_number",
        "size_bytes",
        "sha256",
        "path",
        "calling_ae",
        "declared_pixels",
    ),
    received_at=_NOW,
    file_missing=False,
)


@contextmanager
def guarded_connection(engine: Engine) -> Iterator[Connection]:
    """A connection whose database failures become :class:`DatabaseUnavailable`."""
    try:
        with engine.connect() as conn:
            yield conn
    except IntegrityError:
        raise
    except (OperationalError, TimeoutError, DBAPIError) as exc:
        raise _unavailable(exc) from None


def _unavailable(exc: Exception) -> DatabaseUnavailable:
    # The driver's message may quote SQL parameters (patient data): keep the type.
    cause = type(getattr(exc, "orig", None) or exc).__name__
    return DatabaseUnavailable(
        f"the index database is unavailable ({cause}); "
        "check store.database_url and that the database is running"
    )


_STATEMENTS = {
    "bump_study": _BUMP_STUDY,
    "new_study": _NEW_STUDY,
    "new_event": _NEW_EVENT,
    "unstable": _UNSTABLE,
    "modalities": _MODALITIES,
    "bump_series": _BUMP_SERIES,
    "new_series": _NEW_SERIES,
    "new_instance": _NEW_INSTANCE,
}


@dataclass(frozen=True)
class _Compiled:
    """One statement compiled for the driver: its SQL, and how to bind it."""

    sql: str
    order: tuple[str, ...] | None  # parameter names in order (qmark), None: named
    defaults: dict[str, Any]  # the statement's own literal values, as plain types

    def bind(self, values: dict[str, Any]) -> Any:
        merged = {**self.defaults, **values}
        if self.order is None:
            return merged
        return tuple(merged[name] for name in self.order)


class _Statements:
    """:meth:`Catalog.add`'s statements compiled once for one dialect, run on a DBAPI
    cursor: no ORM, no per-call compile or SQLAlchemy execution context."""

    def __init__(self, dialect: Dialect) -> None:
        self.compiled: dict[str, _Compiled] = {}
        for key, stmt in _STATEMENTS.items():
            c = stmt.compile(dialect=dialect)
            defaults = {
                k: (str(v) if isinstance(v, StrEnum) else v)
                for k, v in c.params.items()
                if not k.startswith("p_") and k != "now"
            }
            order = tuple(c.positiontup or ()) if c.positional else None
            self.compiled[key] = _Compiled(c.string, order, defaults)
        self.time = UTCDateTime().bind_processor(dialect) or (lambda v: v)
        dbapi = dialect.loaded_dbapi
        self.integrity_error: type[Exception] = dbapi.IntegrityError
        self.error: type[Exception] = dbapi.Error

    def one(self, cur: Any, key: str, values: dict[str, Any]) -> Any:
        """Run one statement; its first row, or None."""
        c = self.compiled[key]
        cur.execute(c.sql, c.bind(values))
        return cur.fetchone() if cur.description is not None else None


@contextmanager
def _gate(engine: Engine) -> Iterator[None]:
    """On SQLite, hold the engine's write gate (see store.db.writing): SQLite's own busy
    wait polls with a back-off that made four receiving associations wait on each other
    for milliseconds per instance."""
    gate = _GATES.get(engine)
    if gate is None:  # PostgreSQL (each UPDATE locks its rows), or an engine made elsewhere
        yield
        return
    held = gate.acquire(timeout=_GATE_WAIT_S.get(engine, 5.0))
    try:
        yield
    finally:
        if held:
            gate.release()


def _relaxed_pool(engine: Engine) -> Pool:
    """The receive path's own SQLite connections (see :meth:`Catalog.add`): a pool like
    the engine's (same driver, URL and connect hooks) that nothing else borrows from, so
    a connection set to commit without the flush never serves anyone else. Disposed with
    the engine."""
    pool = engine.pool.recreate()

    def _relax(dbapi_conn: Any, _record: Any) -> None:
        # WAL + NORMAL: a commit is durable once the WAL is checkpointed or synced; a
        # power loss can lose the last commits, never corrupt the database.
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    # Runs after the engine's own connect hooks (WAL, synchronous=FULL, busy_timeout).
    event.listen(pool, "connect", _relax)
    event.listen(engine, "engine_disposed", lambda _conn: pool.dispose())
    return pool


def _write(sql: _Statements, cur: Any, rec: InstanceRecord, values: dict[str, Any]) -> None:
    """The statements of one :meth:`Catalog.add`, in one transaction (not committed)."""
    now = values["now"]
    row = sql.one(cur, "bump_study", values)
    if row is None:
        study_id = int(sql.one(cur, "new_study", values)[0])
        change = {"p_study_id": study_id, "now": now, "p_from_state": ""}
        change |= {"p_to_state": str(StudyState.RECEIVING), "p_reason": "first instance"}
        sql.one(cur, "new_event", change)
        state, modalities = str(StudyState.RECEIVING), rec.modality
    else:
        study_id, state, modalities = int(row[0]), str(row[1]), str(row[2])
    if state != StudyState.RECEIVING:
        # Stable, or purged/being purged: the study is receiving again (a purge in
        # progress sees the state change and leaves the new instance alone).
        sql.one(cur, "unstable", {"p_study_id": study_id})
        change = {"p_study_id": study_id, "now": now, "p_from_state": state}
        change |= {"p_to_state": str(StudyState.RECEIVING)}
        change["p_reason"] = f"new instance after the study was {state}"
        sql.one(cur, "new_event", change)
    if rec.modality and rec.modality not in modalities.split("\\"):
        joined = "\\".join(m for m in (modalities, rec.modality) if m)
        sql.one(cur, "modalities", {"p_study_id": study_id, "p_modalities": joined[:64]})
    values["p_study_id"] = study_id
    row = sql.one(cur, "bump_series", values)
    values["p_series_id"] = (
        int(row[0]) if row is not None else int(sql.one(cur, "new_series", values)[0])
    )
    sql.one(cur, "new_instance", values)


def _end(conn: PoolProxiedConnection, *, clean: bool) -> None:
    """After a failed write: roll back a connection whose state is known (a constraint
    refused a row), otherwise invalidate it (never reused; its pool opens another)."""
    if clean:
        try:
            conn.rollback()
            return
        except Exception:
            pass
    conn.invalidate()


class Catalog:
    """Index writes and look-ups for the SCP (and re-indexing at start-up)."""

    def __init__(
        self, sessions: sessionmaker[Session], clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._sessions = sessions
        self._engine: Engine = sessions.kw["bind"]
        self._clock = clock
        self._statements: _Statements | None = None
        self._pool: Pool | None = None  # relaxed commits; made at the first one
        self._pool_lock = threading.Lock()

    def lookup(self, sop_instance_uid: str) -> KnownInstance | None:
        """The indexed instance with this UID, or None."""
        t = _INSTANCES.c
        with guarded_connection(self._engine) as conn:
            row = conn.execute(
                select(t.id, t.sha256, t.path, t.file_missing).where(
                    t.sop_instance_uid == sop_instance_uid
                )
            ).first()
        return None if row is None else KnownInstance(row[0], row[1], row[2], row[3])

    def mark_restored(self, instance_id: int, size_bytes: int) -> None:
        """The file of an indexed instance is back (re-sent with the same content), and
        is ``size_bytes`` long: the row is no longer flagged missing and takes that size,
        its series' and study's totals with it. The content digest leaves the sender
        elements out, so a re-send from another AE title or address is the same content
        in a file of another length (what storage commitment checks). The row's sender
        stays: it is what the rules matched at first receipt.

        Two restores of one instance at once (two receiving processes, or nodes on one
        PostgreSQL) move the totals once per change of the row: the row is locked before
        its size is read (SQLite's write lock, taken first; PostgreSQL's row lock, FOR
        UPDATE, which a second restorer waits for and then reads the first's committed
        row), and the totals follow only when the conditional UPDATE changed the row (its
        row count): a restore that finds the row already restored at this size changes
        nothing.
        """
        i, st, se = _INSTANCES.c, _STUDIES.c, _SERIES.c
        with guarded(self._sessions) as s, writing(s):
            row = s.execute(
                select(i.size_bytes, i.study_id, i.series_id)
                .where(i.id == instance_id)
                .with_for_update()
            ).first()
            if row is None:
                return
            old, study_id, series_id = int(row[0]), int(row[1]), int(row[2])
            changed = cast(
                CursorResult[Any],
                s.execute(
                    update(_INSTANCES)
                    .where(
                        i.id == instance_id,
                        (i.file_missing == True) | (i.size_bytes != size_bytes),  # noqa: E712
                    )
                    .values(file_missing=False, size_bytes=size_bytes)
                ),
            ).rowcount
            delta = size_bytes - old
            if changed == 1 and delta:
                s.execute(
                    update(_STUDIES)
                    .where(st.id == study_id)
                    .values(size_bytes=st.size_bytes + delta)
                )
                s.execute(
                    update(_SERIES)
                    .where(se.id == series_id)
                    .values(size_bytes=se.size_bytes + delta)
                )
            s.commit()

    def add(
        self, rec: InstanceRecord, received_at: datetime | None = None, *, relaxed: bool = False
    ) -> None:
        """Index a durably stored instance; raises DuplicateRace or DatabaseUnavailable.

        Counters are incremented in SQL (never read-modify-write in Python), and the
        first statement is a write, so SQLite takes its write lock and PostgreSQL its
        row lock before anything is read: concurrent receivers lose no count. The
        statements are compiled once and run on the driver's cursor (this runs for every
        received instance): for an instance of a study and series already known, three
        statements and the commit.

        ``relaxed``, on SQLite: the commit does not wait for the database's own flush to
        disk. It runs on connections of their own, set up once (``synchronous=NORMAL``
        in WAL) and never lent to anyone else. The row is committed (every reader sees
        it) when this returns; only a power loss or a crash of the operating system may
        still take it (the WAL is in the OS's cache), though any later commit that does
        wait (anything done with the row) flushes it too, as SQLite writes its log in
        order. Only for rows that start-up recovery re-creates from a file already
        durable (``scp.recovery``): whatever loses the row also restarts Courier, so the
        instance is never lost, its row comes back at that start.

        On PostgreSQL ``relaxed`` is ignored: the commit waits for the flush as usual
        (its group commit shares one flush among concurrent commits). A relaxed commit
        there (``synchronous_commit=off``) is lost when the server alone crashes or is
        restarted (the OOM killer ending a backend restarts them all) while Courier runs
        on: the row would stay missing until Courier's next start, and the instance,
        acknowledged, would be missing from its study's package and its commitment.
        """
        now = received_at or self._clock()
        sql = self._statements or self._compile()
        values: dict[str, Any] = {f"p_{k}": v for k, v in rec.__dict__.items()}
        values["now"] = sql.time(now)
        try:
            with _gate(self._engine):
                conn = self._connect(relaxed)
                try:
                    cur = conn.cursor()
                    _write(sql, cur, rec, values)
                    cur.close()
                    conn.commit()
                except BaseException as exc:
                    _end(conn, clean=isinstance(exc, sql.integrity_error))
                    raise
                finally:
                    conn.close()
        except Exception as exc:
            if isinstance(exc, (IntegrityError, sql.integrity_error)):
                raise DuplicateRace("instance, series or study was inserted concurrently") from None
            if isinstance(exc, (sql.error, DBAPIError, TimeoutError)):
                raise _unavailable(exc) from None
            raise

    def _compile(self) -> _Statements:
        self._statements = _Statements(self._engine.dialect)
        return self._statements

    def _connect(self, relaxed: bool) -> PoolProxiedConnection:
        """A DBAPI connection: the engine's pool, or (``relaxed``, on an SQLite file)
        the receive path's."""
        url = self._engine.url
        if (
            not relaxed
            or url.get_backend_name() != "sqlite"
            or url.database in (None, "", ":memory:")
        ):
            return self._engine.raw_connection()
        with self._pool_lock:
            if self._pool is None:
                self._pool = _relaxed_pool(self._engine)
        return self._pool.connect()

    def add_conflict(self, rec: InstanceRecord) -> None:
        """Record a same-UID, different-bytes arrival kept aside at ``rec.path``."""
        with guarded(self._sessions) as s, s.begin():
            s.add(
                InstanceConflict(
                    sop_instance_uid=rec.sop_instance_uid,
                    study_uid=rec.study_uid,
                    sha256=rec.sha256,
                    size_bytes=rec.size_bytes,
                    path=rec.path,
                    calling_ae=rec.calling_ae,
                    received_at=self._clock(),
                )
            )

"""The catalog: index rows for what arrived, written once the file is durable.

One call, one transaction: the study and series rows are created or updated and the
instance row inserted together. A study that was ``stable`` and receives another
instance goes back to ``receiving``, and that change is recorded as a
:class:`~store.models.StudyEvent`. Database failures surface as
:class:`~store.errors.DatabaseUnavailable`; a concurrent insert of the same SOP
Instance UID as :class:`DuplicateRace`, so the caller can look again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, bindparam, case, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, TimeoutError
from sqlalchemy.orm import Session, sessionmaker

from store.db import _GATE_WAIT_S, _GATES
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


@contextmanager
def _relaxed(conn: Connection, relaxed: bool) -> Iterator[None]:
    """On SQLite: hold the engine's write gate, and when ``relaxed`` let this
    connection's commits skip the flush to disk while inside."""
    if conn.dialect.name != "sqlite":
        yield
        return
    # This process's writers queue on the engine's gate (see store.db.writing): SQLite's
    # own busy wait polls with a back-off that made four receiving associations wait
    # on each other for milliseconds per instance.
    gate = _GATES.get(conn.engine) or threading.Lock()
    held = gate.acquire(timeout=_GATE_WAIT_S.get(conn.engine, 5.0))
    try:
        if not relaxed:
            yield
            return
        conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
        conn.commit()
        try:
            yield
        finally:
            try:
                conn.exec_driver_sql("PRAGMA synchronous=FULL")
                conn.commit()
            except Exception:
                conn.invalidate()  # never back to the pool with flushes off
                raise
    finally:
        if held:
            gate.release()


class Catalog:
    """Index writes and look-ups for the SCP (and re-indexing at start-up)."""

    def __init__(
        self, sessions: sessionmaker[Session], clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._sessions = sessions
        self._engine: Engine = sessions.kw["bind"]
        self._clock = clock

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

    def mark_restored(self, instance_id: int) -> None:
        """The file of a flagged instance is back (re-sent identical)."""
        with guarded(self._sessions) as s, s.begin():
            s.execute(update(Instance).where(Instance.id == instance_id).values(file_missing=False))

    def add(
        self, rec: InstanceRecord, received_at: datetime | None = None, *, relaxed: bool = False
    ) -> None:
        """Index a durably stored instance; raises DuplicateRace or DatabaseUnavailable.

        Counters are incremented in SQL (never read-modify-write in Python), and the
        first statement is a write, so SQLite takes its write lock and PostgreSQL its
        row lock before anything is read: concurrent receivers lose no count. The
        statements are built once (this runs for every received instance).

        ``relaxed``: the commit does not wait for the database's own flush to disk
        (SQLite ``synchronous=NORMAL`` for this transaction, PostgreSQL
        ``synchronous_commit=off``). Only for rows that start-up recovery re-creates from
        a file already durable: a power loss may lose the row, never the instance.
        """
        now = received_at or self._clock()
        values: dict[str, Any] = {f"p_{k}": v for k, v in rec.__dict__.items()}
        values["now"] = now
        try:
            with guarded_connection(self._engine) as conn, _relaxed(conn, relaxed), conn.begin():
                if relaxed and conn.dialect.name == "postgresql":
                    conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                row = conn.execute(_BUMP_STUDY, values).first()
                if row is None:
                    study_id = int(conn.execute(_NEW_STUDY, values).scalar_one())
                    conn.execute(
                        _NEW_EVENT,
                        {
                            "p_study_id": study_id,
                            "now": now,
                            "p_from_state": "",
                            "p_to_state": StudyState.RECEIVING,
                            "p_reason": "first instance",
                        },
                    )
                    state, modalities = str(StudyState.RECEIVING), rec.modality
                else:
                    study_id, state, modalities = int(row[0]), str(row[1]), str(row[2])
                if state != StudyState.RECEIVING:
                    # Stable, or purged/being purged: the study is receiving again (a purge
                    # in progress sees the state change and leaves the new instance alone).
                    conn.execute(_UNSTABLE, {"p_study_id": study_id})
                    conn.execute(
                        _NEW_EVENT,
                        {
                            "p_study_id": study_id,
                            "now": now,
                            "p_from_state": state,
                            "p_to_state": StudyState.RECEIVING,
                            "p_reason": f"new instance after the study was {state}",
                        },
                    )
                if rec.modality and rec.modality not in modalities.split("\\"):
                    joined = "\\".join(m for m in (modalities, rec.modality) if m)
                    conn.execute(_MODALITIES, {"p_study_id": study_id, "p_modalities": joined[:64]})
                series_id = conn.execute(_BUMP_SERIES, values).scalar()
                if series_id is None:
                    series_id = conn.execute(
                        _NEW_SERIES, {**values, "p_study_id": study_id}
                    ).scalar_one()
                conn.execute(
                    _NEW_INSTANCE, {**values, "p_study_id": study_id, "p_series_id": series_id}
                )
        except IntegrityError:
            raise DuplicateRace("instance, series or study was inserted concurrently") from None

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

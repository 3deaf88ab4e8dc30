"""Catalog.add on the driver's cursor: durable and relaxed commits write the same rows;
relaxed ones, on SQLite only, run on connections of their own (flush skipped there
only), closed with the engine; on PostgreSQL every commit waits for the flush; failures
map to DuplicateRace and DatabaseUnavailable as before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, select, update

from store.catalog import Catalog, DuplicateRace, InstanceRecord
from store.models import Instance, Series, Study, StudyEvent, StudyState
from tests.conftest import Database

T0 = datetime(2026, 12, 6, 19, 0, tzinfo=UTC)


def _rec(uid: str, series: str = "1.2.3.1", modality: str = "CT") -> InstanceRecord:
    return InstanceRecord(
        study_uid="1.2.3",
        series_uid=series,
        sop_instance_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        sha256="b" * 64,
        size_bytes=100,
        path=f"instances/1.2.3/{series}/{uid}.dcm",
        modality=modality,
        calling_ae="MODALITY_A",
        called_ae="COURIER",
        peer_host="10.1.2.3",
    )


def _setting(conn: object, dialect: str) -> str:
    cur = conn.cursor()  # type: ignore[attr-defined]
    sql = "PRAGMA synchronous" if dialect == "sqlite" else "SHOW synchronous_commit"
    cur.execute(sql)
    value = str(cur.fetchone()[0])
    cur.close()
    return {"1": "NORMAL", "2": "FULL"}.get(value, value)


@pytest.mark.parametrize("relaxed", [False, True], ids=["durable", "relaxed"])
def test_both_commits_write_the_same_rows(db: Database, relaxed: bool) -> None:
    clock = iter(T0 + timedelta(seconds=i) for i in range(100))
    cat = Catalog(db.sessions, lambda: next(clock))
    # (record, what it exercises)
    for rec in (
        _rec("1.2.3.1.1"),  # new study, series, instance; the first event
        _rec("1.2.3.1.2"),  # known study and series: three statements
        _rec("1.2.3.2.1", series="1.2.3.2", modality="SR"),  # new series, new modality
    ):
        cat.add(rec, relaxed=relaxed)
    with db.sessions() as s, s.begin():
        s.execute(update(Study).values(state=StudyState.STABLE))
    cat.add(_rec("1.2.3.1.3"), relaxed=relaxed)  # a stable study receives again
    with pytest.raises(DuplicateRace):
        cat.add(_rec("1.2.3.1.1"), relaxed=relaxed)
    cat.add(_rec("1.2.3.1.4"), relaxed=relaxed)  # the connection is usable after a refusal
    with db.sessions() as s:
        study = s.scalars(select(Study)).one()
        assert (study.instance_count, study.size_bytes, study.modalities) == (5, 500, "CT\\SR")
        assert (study.state, study.calling_ae, study.called_ae, study.peer_host) == (
            StudyState.RECEIVING,
            "MODALITY_A",
            "COURIER",
            "10.1.2.3",
        )
        assert study.first_received_at == T0
        assert study.last_received_at == T0 + timedelta(seconds=5)
        assert [x.instance_count for x in s.scalars(select(Series).order_by(Series.id))] == [4, 1]
        instances = s.scalars(select(Instance).order_by(Instance.id)).all()
        assert [i.received_at for i in instances] == [
            T0 + timedelta(seconds=n) for n in (0, 1, 2, 3, 5)
        ]
        assert {(i.calling_ae, i.file_missing) for i in instances} == {("MODALITY_A", False)}
        events = s.scalars(select(StudyEvent).order_by(StudyEvent.id)).all()
        assert [(e.from_state, e.to_state) for e in events] == [
            ("", "receiving"),
            ("stable", "receiving"),
        ]


def test_relaxed_commits_skip_the_flush_on_sqlite_only_on_their_own_connections(
    db: Database,
) -> None:
    dialect = db.engine.dialect.name
    used: list[object] = []  # the DBAPI connections lent (the relaxed pool's included)
    event.listen(db.engine, "checkout", lambda dbapi_conn, _rec, _proxy: used.append(dbapi_conn))
    cat = Catalog(db.sessions)
    cat.add(_rec("1.2.3.1.1"), relaxed=True)
    if dialect == "postgresql":
        # A PostgreSQL restart while Courier runs would lose relaxed commits until
        # Courier's next start: there the receive path commits as everything else does.
        assert cat._pool is None
        assert used and {_setting(conn, dialect) for conn in used} == {"on"}
        return
    assert used and {_setting(conn, dialect) for conn in used} == {"NORMAL"}
    relaxed = cat._pool.connect()  # type: ignore[union-attr]
    shared = db.engine.raw_connection()
    try:
        assert (_setting(relaxed, dialect), _setting(shared, dialect)) == ("NORMAL", "FULL")
    finally:
        relaxed.close()
        shared.close()
    pool = cat._pool
    assert pool is not None and pool.checkedin() >= 1  # type: ignore[attr-defined]
    db.engine.dispose()  # closes the receive path's connections too
    assert pool.checkedin() == 0  # type: ignore[attr-defined]

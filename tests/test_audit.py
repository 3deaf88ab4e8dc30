"""The audit store: append-only (the database refuses UPDATE and DELETE), checked values,
and the read queries ``courier audit`` uses. Each test on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import DBAPIError

from store.audit import AuditError, Outcome, actor_of, events, kinds_for, record, record_now
from store.models import AuditEvent
from tests.conftest import Database

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
STUDY = "1.2.826.0.1.3680043.8.498.1"
OTHER = "1.2.826.0.1.3680043.8.498.12"  # STUDY is a prefix of it: filters must not mix them


def _add(db: Database, kind: str = "export", **kw: object) -> int:
    with db.sessions() as s, s.begin():
        fields: dict[str, object] = {"actor": "node", "at": T0, **kw}
        event = record(s, kind, **fields)  # type: ignore[arg-type]
        s.flush()
        return event.id


def _count(db: Database) -> int:
    with db.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def test_the_database_refuses_to_change_or_delete_an_event(db: Database) -> None:
    event_id = _add(db, studies=[STUDY], request="CR-7KQ4-M2XD-9", detail="package built")
    for statement in (
        update(AuditEvent).where(AuditEvent.id == event_id).values(detail="nothing happened"),
        delete(AuditEvent).where(AuditEvent.id == event_id),
        delete(AuditEvent),
    ):
        with pytest.raises(DBAPIError, match="append-only"), db.sessions() as s, s.begin():
            s.execute(statement)
    # Raw SQL (a stray script) meets the same triggers.
    with pytest.raises(DBAPIError, match="append-only"), db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET outcome = 0"))
    if db.kind == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"), db.engine.begin() as conn:
            conn.execute(text("TRUNCATE audit_events"))
    with db.sessions() as s:
        row = s.get(AuditEvent, event_id)
        assert row is not None and row.detail == "package built"
    assert _count(db) == 1


def test_record_writes_the_ps3_15_codes(db: Database) -> None:
    _add(db, "application-start")
    _add(db, "instances-stored", actor="scp:PACS1", host="10.1.2.3", studies=[STUDY])
    _add(db, "study-deleted", studies=[STUDY], outcome=Outcome.SERIOUS_FAILURE)
    _add(db, "login", actor="staff:alice", outcome=Outcome.MINOR_FAILURE)
    with db.sessions() as s:
        rows = [
            (e.kind, e.event_id, e.event_type, e.action, e.outcome)
            for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))
        ]
    assert rows == [
        ("application-start", "110100", "110120", "E", 0),
        ("instances-stored", "110104", "", "C", 0),
        ("study-deleted", "110105", "", "D", 8),
        ("login", "110114", "110122", "E", 4),
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "coffee"}, "unknown audit event kind"),
        ({"actor": "Test^Patient"}, "audit actor"),
        ({"actor": "staff:alice smith"}, "audit actor"),
        ({"studies": ["MRN-000123"]}, "not a Study Instance UID"),
        ({"request": "patient@example.org"}, "not a request reference"),
        ({"host": "a host"}, "audit host"),
    ],
)
def test_record_refuses_what_could_carry_patient_data(
    db: Database, fields: dict[str, object], message: str
) -> None:
    fields = dict(fields)
    kind = str(fields.pop("kind", "export"))
    with pytest.raises(AuditError, match=message):
        _add(db, kind, **fields)
    assert _count(db) == 0


def test_actor_names_are_made_safe() -> None:
    assert actor_of("scp", "MY PACS ") == "scp:MY_PACS"
    assert actor_of("scp", "") == "scp"
    assert actor_of("staff", "x" * 100) == "staff:" + "x" * 64


def test_an_event_rolls_back_with_its_transaction(db: Database) -> None:
    with pytest.raises(RuntimeError), db.sessions() as s, s.begin():
        record(s, "export", actor="delivery", request="CR-7KQ4-M2XD-9")
        s.flush()
        raise RuntimeError("the package row could not be written")
    assert _count(db) == 0
    record_now(db.sessions, "application-stop", actor="node", clock=lambda: T0)
    assert _count(db) == 1


def test_queries_filter_by_request_time_and_type(db: Database) -> None:
    _add(db, "instances-stored", actor="scp:PACS1", studies=[STUDY])
    _add(db, "instances-stored", actor="scp:PACS1", studies=[OTHER], at=T0 + timedelta(hours=1))
    _add(db, "export", request="CR-7KQ4-M2XD-9", studies=[STUDY], at=T0 + timedelta(days=1))
    _add(db, "package-deleted", request="CR-AAAA-BBBB-2", at=T0 + timedelta(days=9))
    _add(db, "study-deleted", studies=[OTHER], at=T0 + timedelta(days=10))
    with db.sessions() as s:
        assert [e.kind for e in events(s, request="CR-7KQ4-M2XD-9")] == ["export"]
        since = [e.kind for e in events(s, since=T0 + timedelta(days=2))]
        assert since == ["package-deleted", "study-deleted"]
        purges = [e.kind for e in events(s, kinds=kinds_for("purge"))]
        assert purges == ["package-deleted", "study-deleted"]
        last_two = events(s, limit=2)
        assert [e.kind for e in last_two] == ["package-deleted", "study-deleted"]
    with pytest.raises(AuditError, match="unknown event type"):
        kinds_for("downloads")

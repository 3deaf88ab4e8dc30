"""The request book on SQLite and PostgreSQL: create, idempotency, look-ups, schema."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, update

from release.errors import InvalidRequest, RequestConflict, RequestNotFound
from release.reference import normalize_reference
from release.requests import RequestBook
from store.models import Base, ReleaseRequest, RequestState
from tests.conftest import Database
from tests.release.helpers import counts, draft

T0 = datetime(2030, 1, 31, 9, 0, tzinfo=UTC)
ACC7 = {"kind": "accession", "value": "ACC7"}


@pytest.fixture
def book(db: Database) -> RequestBook:
    return RequestBook(db.sessions, clock=lambda: T0, rng=random.Random(3))


def test_migrations_match_the_models(db: Database) -> None:
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    indexes = inspect(db.engine).get_indexes("request_selections")
    assert ["kind", "value"] in [ix["column_names"] for ix in indexes]


def test_create_stores_everything_and_records_the_event(db: Database, book: RequestBook) -> None:
    req = book.create(
        draft(
            selection=[
                {"kind": "accession", "value": "ACC0001", "expected_instances": 12},
                {"kind": "study_uid", "value": "1.2.826.0.1.3680043.8.498.7"},
            ],
            by_reference=True,
            urgency="now",
            link_days=7,
            note="bring the CD too",
            due_by="2030-02-01T18:00:00+01:00",
        ),
        actor="cli:alice",
    )
    assert normalize_reference(req.reference) == req.reference
    again = book.get(req.reference.lower().replace("-", " "))
    assert again.id == req.id == book.get(str(req.id)).id == book.get(req.id).id
    assert (again.state, again.urgency, again.link_days, again.language) == (
        "pending",
        "now",
        7,
        "en",
    )
    assert again.created_at == again.updated_at == T0
    assert again.due_by == datetime(2030, 2, 1, 17, 0, tzinfo=UTC)
    assert [(s.kind, s.value, s.expected_instances) for s in again.selections] == [
        ("accession", "ACC0001", 12),
        ("study_uid", "1.2.826.0.1.3680043.8.498.7", None),
        ("reference", req.reference, None),
    ]
    [event] = book.timeline(req.reference)
    assert (event.actor, event.from_state, event.to_state, event.reason, event.at) == (
        "cli:alice",
        "",
        "pending",
        "created",
        T0,
    )
    assert counts(db.sessions) == (1, 3, 1)


def test_not_found_says_what_to_do(book: RequestBook) -> None:
    with pytest.raises(RequestNotFound, match="courier request list"):
        book.get("CR-2345-6789-2")  # check symbol wrong
    with pytest.raises(RequestNotFound, match="no request"):
        book.get(9999)
    with pytest.raises(RequestNotFound):
        book.timeline("nonsense")


def test_actor_is_required(db: Database, book: RequestBook) -> None:
    with pytest.raises(InvalidRequest, match="actor"):
        book.create(draft(), actor="  ")
    assert counts(db.sessions) == (0, 0, 0)


def test_same_idempotency_key_gives_the_same_request(db: Database, book: RequestBook) -> None:
    first, created = book.submit(draft(idempotency_key="ris:42"), "ris")
    second, created_again = book.submit(draft(idempotency_key="ris:42"), "ris")
    assert (created, created_again) == (True, False)
    assert second.id == first.id and second.reference == first.reference
    assert counts(db.sessions) == (1, 1, 1)


@pytest.mark.parametrize(
    "change",
    [
        {"recipient_email": "other@example.org"},
        {"selection": [{"kind": "accession", "value": "ACC0002"}]},
        {"selection": [{"kind": "accession", "value": "ACC0001", "expected_instances": 3}]},
        {"by_reference": True},
        {"link_days": 5},
        {"note": "changed"},
    ],
)
def test_reused_key_with_other_content_is_refused(
    db: Database, book: RequestBook, change: dict[str, object]
) -> None:
    first = book.create(draft(idempotency_key="ris:42"), "ris")
    with pytest.raises(RequestConflict, match=f"{first.reference}.*new key"):
        book.create(draft(idempotency_key="ris:42", **change), "ris")
    assert counts(db.sessions) == (1, 1, 1)


def test_same_key_at_once_gives_one_request(db: Database) -> None:
    barrier = threading.Barrier(4)
    results: list[int] = []

    def submit() -> None:
        book = RequestBook(db.sessions)
        barrier.wait()
        results.append(book.create(draft(idempotency_key="same"), "ris").id)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1
    assert counts(db.sessions) == (1, 1, 1)


def test_reference_collision_is_retried(db: Database) -> None:
    class Replay(random.Random):
        """Draws the same reference twice, then a new one."""

        def __init__(self) -> None:
            super().__init__(0)
            self.calls = 0

        def choice(self, seq):  # type: ignore[no-untyped-def]
            self.calls += 1
            return seq[0] if self.calls <= 16 else super().choice(seq)

    book = RequestBook(db.sessions, rng=Replay())
    a = book.create(draft(), "t")
    b = book.create(draft(), "t")
    assert a.reference != b.reference
    assert counts(db.sessions) == (2, 2, 2)


def test_list_newest_first_and_by_state(db: Database) -> None:
    times = iter(datetime(2030, 1, d, tzinfo=UTC) for d in range(1, 20))
    book = RequestBook(db.sessions, clock=lambda: next(times))
    refs = [book.create(draft(), "t").reference for _ in range(3)]
    book.cancel(refs[1], "t", "duplicate")
    assert [r.reference for r in book.list()] == refs[::-1]
    assert [r.reference for r in book.list(limit=2)] == refs[:0:-1]
    assert [r.reference for r in book.list(state=RequestState.CANCELLED)] == [refs[1]]
    assert [r.reference for r in book.list(state=RequestState.PENDING)] == [refs[2], refs[0]]


def test_find_pending_by_each_kind(db: Database, book: RequestBook) -> None:
    uid = "1.2.826.0.1.3680043.8.498.9"
    a = book.create(draft(selection=[ACC7]), "t")
    b = book.create(
        draft(
            selection=[{"kind": "accession", "value": "ACC7"}, {"kind": "study_uid", "value": uid}]
        ),
        "t",
    )
    c = book.create(draft(selection=[], by_reference=True), "t")
    assert [r.id for r in book.find_pending_by("accession", "ACC7 ")] == [a.id, b.id]
    assert [r.id for r in book.find_pending_by("study_uid", uid)] == [b.id]
    assert [r.id for r in book.find_pending_by("reference", c.reference.lower())] == [c.id]
    assert book.find_pending_by("reference", c.reference[:-1] + "Z") == []
    assert book.find_pending_by("accession", "ACC8") == []
    assert book.find_pending_by("accession", c.reference) == []  # kinds do not mix
    book.transition(b.reference, RequestState.RECEIVING, "rules", "study arrived")
    book.cancel(a.reference, "t", "not needed")
    assert [r.id for r in book.find_pending_by("accession", "ACC7")] == [b.id]
    with db.sessions.begin() as s:
        s.execute(
            update(ReleaseRequest).where(ReleaseRequest.id == b.id).values(state=RequestState.READY)
        )
    assert book.find_pending_by("accession", "ACC7") == []
    ready = book.find_pending_by("accession", "ACC7", states=[RequestState.READY])
    assert [r.id for r in ready] == [b.id]

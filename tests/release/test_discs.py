"""The CD burn queue's sweep (:mod:`delivery.discs`): each automatic reason queues a
request exactly once, with its timeline note and one staff alert; jobs whose reason went
away are closed; the database refuses a second open job. Both databases."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from delivery import messages
from delivery.discs import DiscQueue, DiscRefused
from delivery.grants import GrantKeys, new_grant
from delivery.outbox import Outbox
from delivery.settings import DeliverySettings
from release.requests import RequestBook
from store.models import (
    DiscJob,
    DiscWhy,
    Grant,
    Notification,
    Package,
    ReleaseRequest,
    RequestEvent,
    RequestState,
)
from tests.conftest import Database
from tests.release.helpers import draft

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
S = RequestState
PATHS = {
    S.PENDING: [],
    S.OVERDUE: [S.OVERDUE],
    S.READY: [S.READY],
    S.NOTIFIED: [S.READY, S.PACKAGING, S.NOTIFIED],
    S.FAILED: [S.READY, S.PACKAGING, S.FAILED],
}


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class Rig:
    db: Database
    clock: Clock
    book: RequestBook
    queue: DiscQueue

    def request(self, state: RequestState) -> str:
        req = self.book.create(draft(), "test")
        self.move(req.reference, *PATHS[state])
        return req.reference

    def move(self, reference: str, *states: RequestState) -> None:
        for target in states:
            self.book.transition(reference, target, "delivery", "test")

    def jobs(self, reference: str | None = None) -> list[DiscJob]:
        q = select(DiscJob).order_by(DiscJob.id)
        if reference is not None:
            q = q.join(ReleaseRequest, ReleaseRequest.id == DiscJob.request_id).where(
                ReleaseRequest.reference == reference
            )
        with self.db.sessions() as s:
            return list(s.scalars(q))

    def alerts(self) -> list[dict[str, Any]]:
        with self.db.sessions() as s:
            rows = s.scalars(select(Notification).where(Notification.kind == "alert_disc"))
            return [json.loads(r.params) for r in rows]

    def notes(self, reference: str) -> list[tuple[str, str]]:
        return [
            (e.actor, e.reason)
            for e in self.book.timeline(reference)
            if e.from_state == e.to_state and "CD" in e.reason
        ]

    def grant(self, reference: str, *, days: int = 1) -> int:
        """A package and the patient's link (valid ``days``) for a notified request."""
        with self.db.sessions() as s, s.begin():
            req = s.scalars(select(ReleaseRequest).where(ReleaseRequest.reference == reference))
            row = req.one()
            pkg = Package(
                request_id=row.id,
                folder=reference,
                parts="[]",
                studies=1,
                instances=1,
                size_bytes=1,
                built_at=self.clock(),
            )
            s.add(pkg)
            s.flush()
            keys = GrantKeys(b"k" * 32)
            return new_grant(s, keys, row, package_id=pkg.id, link_days=days, now=self.clock()).id

    def set_grant(self, grant_id: int, **values: Any) -> None:
        with self.db.sessions() as s, s.begin():
            g = s.get(Grant, grant_id)
            assert g is not None
            for k, v in values.items():
                setattr(g, k, v)


@pytest.fixture
def rig(db: Database, tmp_path: Path) -> Rig:
    clock = Clock()
    outbox = Outbox(staff_email="imaging@example.org", clock=clock)
    queue = DiscQueue(db.sessions, outbox, cd_after_h=24, data_dir=tmp_path, clock=clock)
    return Rig(db, clock, RequestBook(db.sessions, clock), queue)


def test_a_failed_request_is_queued_once_with_a_note_and_an_alert(rig: Rig) -> None:
    ref = rig.request(S.FAILED)
    first = rig.queue.sweep()
    assert first.queued == [(ref, "failed")]
    assert rig.queue.sweep().queued == []  # idempotent
    [job] = rig.jobs(ref)
    assert (job.why, job.queued_by, job.queued_at, job.burned_at, job.cancelled_at) == (
        "failed",
        "delivery",
        T0,
        None,
        None,
    )
    assert rig.notes(ref) == [("delivery", "queued for CD: failed")]
    assert rig.alerts() == [{"alert": "disc", "reference": ref}]


def test_an_overdue_request_is_queued_after_cd_after_h(rig: Rig) -> None:
    ref = rig.request(S.OVERDUE)
    rig.clock.advance(hours=23, minutes=59)
    assert rig.queue.sweep().queued == []
    rig.clock.advance(minutes=1)
    assert rig.queue.sweep().queued == [(ref, "overdue")]
    assert rig.queue.sweep().queued == []
    assert [j.why for j in rig.jobs(ref)] == ["overdue"]
    assert rig.notes(ref) == [("delivery", "queued for CD: overdue")]
    assert len(rig.alerts()) == 1


def test_a_link_that_expired_unopened_is_queued(rig: Rig) -> None:
    unopened = rig.request(S.NOTIFIED)
    rig.grant(unopened, days=1)
    opened = rig.request(S.NOTIFIED)
    rig.set_grant(rig.grant(opened, days=1), first_opened_at=T0)
    revoked = rig.request(S.NOTIFIED)
    rig.set_grant(rig.grant(revoked, days=1), revoked_at=T0)
    assert rig.queue.sweep().queued == []  # still valid
    rig.clock.advance(days=1)
    assert rig.queue.sweep().queued == [(unopened, "unopened")]
    assert rig.queue.sweep().queued == []
    assert [j.why for j in rig.jobs()] == ["unopened"]
    assert rig.alerts() == [{"alert": "disc", "reference": unopened}]
    # The request expiring (as the delivery sweep moves it) changes nothing.
    rig.move(unopened, S.EXPIRED)
    assert rig.queue.sweep().queued == [] and rig.queue.sweep().closed == []


def test_requests_on_their_way_are_not_queued(rig: Rig) -> None:
    for state in (S.PENDING, S.READY, S.NOTIFIED):
        rig.request(state)
    rig.clock.advance(days=400)
    assert rig.queue.sweep().queued == [] and rig.jobs() == []


def test_a_request_that_recovers_leaves_the_queue_and_returns_on_a_new_episode(
    rig: Rig,
) -> None:
    ref = rig.request(S.OVERDUE)
    rig.clock.advance(hours=25)
    rig.queue.sweep()
    rig.move(ref, S.READY)  # the late studies arrived after all
    result = rig.queue.sweep()
    assert (result.queued, result.closed) == ([], [ref])
    [job] = rig.jobs(ref)
    assert job.cancelled_at == rig.clock() and job.cancelled_by == "delivery"
    assert rig.notes(ref)[-1] == (
        "delivery",
        "CD no longer needed: the request is ready again (was overdue)",
    )
    assert rig.queue.sweep().closed == []
    # Overdue again later: a new episode, a new job and alert.
    rig.clock.advance(hours=1)
    rig.move(ref, S.RECEIVING, S.OVERDUE)
    rig.clock.advance(hours=25)
    assert rig.queue.sweep().queued == [(ref, "overdue")]
    assert [j.cancelled_at is None for j in rig.jobs(ref)] == [False, True]
    assert len(rig.alerts()) == 2


def test_an_unopened_link_extended_closes_its_job(rig: Rig) -> None:
    ref = rig.request(S.NOTIFIED)
    grant_id = rig.grant(ref, days=1)
    rig.clock.advance(days=2)
    rig.queue.sweep()
    rig.set_grant(grant_id, expires_at=rig.clock() + timedelta(days=7))
    assert rig.queue.sweep().closed == [ref]
    assert "the patient's link works again" in rig.notes(ref)[-1][1]


def test_a_job_staff_cancelled_stays_cancelled_until_the_next_failure(rig: Rig) -> None:
    ref = rig.request(S.FAILED)
    rig.queue.sweep()
    with rig.db.sessions() as s, s.begin():
        req = s.scalars(select(ReleaseRequest).where(ReleaseRequest.reference == ref)).one()
        assert rig.queue.cancel(s, req, "staff:alice", rig.clock()) is None
    rig.clock.advance(hours=1)
    assert rig.queue.sweep().queued == []
    rig.move(ref, S.READY, S.PACKAGING, S.FAILED)  # tried again, failed again
    assert rig.queue.sweep().queued == [(ref, "failed")]
    assert len(rig.jobs(ref)) == 2


def test_staff_jobs_stay_when_the_request_recovers_but_go_when_it_is_cancelled(
    rig: Rig,
) -> None:
    ref = rig.request(S.OVERDUE)
    with rig.db.sessions() as s, s.begin():
        req = s.scalars(select(ReleaseRequest).where(ReleaseRequest.reference == ref)).one()
        rig.queue.queue(s, req, DiscWhy.STAFF, "staff:alice", rig.clock())
        with pytest.raises(DiscRefused, match="already in the CD burn queue"):
            rig.queue.queue(s, req, DiscWhy.STAFF, "staff:alice", rig.clock())
    rig.clock.advance(hours=30)
    assert rig.queue.sweep().queued == []  # it has an open job: no second one
    rig.move(ref, S.READY)
    assert rig.queue.sweep().closed == []
    rig.move(ref, S.CANCELLED)
    assert rig.queue.sweep().closed == [ref]
    assert rig.notes(ref)[-1] == ("delivery", "CD no longer needed: the request was cancelled")
    assert rig.alerts() == []  # staff queued it themselves: nobody to alert


def test_the_database_refuses_a_second_open_job(rig: Rig) -> None:
    ref = rig.request(S.OVERDUE)
    with rig.db.sessions() as s, s.begin():
        rid = s.scalar(select(ReleaseRequest.id).where(ReleaseRequest.reference == ref))
        assert rid is not None
        s.add(DiscJob(request_id=rid, why="staff", queued_at=T0, queued_by="x", burned_at=T0))
        s.add(DiscJob(request_id=rid, why="staff", queued_at=T0, queued_by="x"))
    with pytest.raises(IntegrityError), rig.db.sessions() as s, s.begin():
        s.add(DiscJob(request_id=rid, why="overdue", queued_at=T0, queued_by="x"))
    with pytest.raises(IntegrityError), rig.db.sessions() as s, s.begin():
        s.add(DiscJob(request_id=rid, why="lunch", queued_at=T0, queued_by="x", burned_at=T0))
    with rig.db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(DiscJob)) == 2


def test_no_patient_data_in_the_notes_or_the_alert(rig: Rig) -> None:
    ref = rig.request(S.FAILED)
    rig.queue.sweep()
    with rig.db.sessions() as s:
        texts = [e.reason for e in s.scalars(select(RequestEvent))]
        texts += [n.params for n in s.scalars(select(Notification))]
    for text in texts:
        for phi in ("MRN-000123", "Test^Patient", "patient@example.org", "+447911123456"):
            assert phi not in text
    alert = messages.staff_alert(
        to="imaging@example.org",
        kind=cast(messages.AlertKind, "disc"),
        reference=ref,
        message_id="a@b.c",
    )
    assert alert.subject == f"[Courier] Request {ref} is in the CD burn queue"
    assert "CD burn queue" in alert.text and f"courier request show {ref}" in alert.text


@pytest.mark.parametrize("language", ["ar", "zh-Hans"])
def test_the_disc_alert_is_translated(language: str) -> None:
    alert = messages.staff_alert(
        to="imaging@example.org",
        kind=cast(messages.AlertKind, "disc"),
        reference="CR-ABCD-EFGH-K",
        message_id="a@b.c",
        language=language,
    )
    assert "CR-ABCD-EFGH-K" in alert.subject and "burn queue" not in alert.text


@pytest.mark.parametrize("bad", [0, -1, 24 * 366, "soon"])
def test_cd_after_h_is_checked(bad: object) -> None:
    assert DeliverySettings().cd_after_h == 24
    assert DeliverySettings(cd_after_h=0.5).cd_after_h == 0.5
    with pytest.raises(ValidationError, match="cd_after_h"):
        DeliverySettings(cd_after_h=bad)  # type: ignore[arg-type]

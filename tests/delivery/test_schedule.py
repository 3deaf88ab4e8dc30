"""DeliveryScheduler: the due rule, the nightly trigger over DST, and a real scheduler.

Decisions are tested with an injected clock; the real ``BackgroundScheduler`` runs with
intervals of a few hundredths of a second. Every wait is bounded and nothing asserts how
fast anything ran.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from delivery.schedule import DeliveryScheduler, batch_due, nightly_trigger
from delivery.settings import DeliverySettings
from delivery.window import DeliveryWindow, WindowError

LON = DeliveryWindow.parse("01:00-05:00", "Europe/London")
FAST = {"urgent_check_s": 0.05, "sweep_interval_s": 0.05}


def u(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


# (case, now, last_batch_at, due) -- the summer window is 00:00-04:00 UTC
DUE = [
    ("never ran, afternoon", u(2026, 6, 10, 14), None, True),
    ("never ran, inside the window", u(2026, 6, 10, 1), None, True),
    ("ran last night", u(2026, 6, 10, 14), u(2026, 6, 10, 0, 0, 3), False),
    ("ran exactly at the start", u(2026, 6, 10, 14), u(2026, 6, 10, 0), False),
    ("missed a night", u(2026, 6, 10, 14), u(2026, 6, 9, 0, 0, 3), True),
    ("missed a week", u(2026, 6, 10, 14), u(2026, 6, 3, 0, 0, 3), True),
    ("inside the window, already ran tonight", u(2026, 6, 10, 2), u(2026, 6, 10, 0, 1), False),
    ("inside the window, not yet tonight", u(2026, 6, 10, 2), u(2026, 6, 9, 0, 1), True),
    (
        "ran by hand in the afternoon, window now open",
        u(2026, 6, 10, 0, 30),
        u(2026, 6, 9, 15),
        True,
    ),
    ("just before tonight's start", u(2026, 6, 9, 23, 59), u(2026, 6, 9, 0, 1), False),
    (
        "fall-back night, the second 01:00",
        u(2026, 10, 25, 1, 0, 5),
        u(2026, 10, 25, 0, 0, 5),
        False,
    ),
    ("spring-forward night, at 02:00 BST", u(2026, 3, 29, 1, 0, 5), u(2026, 3, 28, 1, 0, 5), True),
]


@pytest.mark.parametrize(("case", "now", "last", "due"), DUE, ids=[c[0] for c in DUE])
def test_batch_due(case: str, now: datetime, last: datetime | None, due: bool) -> None:
    assert batch_due(now, last, LON) is due


def test_batch_due_refuses_naive_datetimes() -> None:
    with pytest.raises(WindowError, match="naive"):
        batch_due(datetime(2026, 6, 10, 14), None, LON)
    with pytest.raises(WindowError, match="naive"):
        batch_due(u(2026, 6, 10, 14), datetime(2026, 6, 10, 1), LON)


# (window, zone, now, the CronTrigger's next fire in UTC)
CRON = [
    ("01:00-05:00", "Europe/London", u(2026, 3, 28, 12), u(2026, 3, 29, 1)),  # 02:00 BST
    ("01:00-05:00", "Europe/London", u(2026, 3, 29, 1, 0, 1), u(2026, 3, 30, 0)),
    ("01:30-05:00", "Europe/London", u(2026, 3, 28, 12), u(2026, 3, 29, 1, 30)),  # 02:30 BST
    ("01:00-05:00", "Europe/London", u(2026, 10, 24, 12), u(2026, 10, 25, 0)),  # first 01:00
    # the trigger fires again at the second 01:00 (GMT); batch_due refuses that fire
    ("01:00-05:00", "Europe/London", u(2026, 10, 25, 0, 0, 1), u(2026, 10, 25, 1)),
    ("01:00-05:00", "Europe/London", u(2026, 10, 25, 1, 0, 1), u(2026, 10, 26, 1)),
    ("02:30-06:00", "America/New_York", u(2026, 3, 7, 12), u(2026, 3, 8, 7, 30)),
    ("01:30-03:00", "America/New_York", u(2026, 10, 31, 12), u(2026, 11, 1, 5, 30)),
]


@pytest.mark.parametrize(("text", "zone", "now", "fire"), CRON)
def test_cron_next_fire_over_dst(text: str, zone: str, now: datetime, fire: datetime) -> None:
    trigger = nightly_trigger(DeliveryWindow.parse(text, zone))
    got = trigger.get_next_fire_time(None, now)
    assert got is not None and got.astimezone(UTC) == fire


@pytest.mark.parametrize(
    ("text", "zone"),
    [("01:00-05:00", "Europe/London"), ("01:30-03:00", "America/New_York")],
)
def test_cron_agrees_with_window_and_due_check_absorbs_double_fire(text: str, zone: str) -> None:
    """All year: every fire is a window start, or a repeat on the same night that is not due."""
    w = DeliveryWindow.parse(text, zone)
    trigger = nightly_trigger(w)
    now, repeats = u(2026, 1, 1), 0
    for _ in range(370):
        fire = trigger.get_next_fire_time(None, now)
        assert fire is not None
        fire = fire.astimezone(UTC)
        if fire == w.next_start(now):
            assert w.last_start(fire) == fire
        else:  # the fall-back overlap: the same night, and a batch already ran at its start
            repeats += 1
            assert not batch_due(fire, w.last_start(fire), w)
        now = fire + timedelta(seconds=1)
    assert repeats == 1


class FakeDb:
    """Records batch runs like the database would; the clock is set by the test."""

    def __init__(self, now: datetime, last: datetime | None = None) -> None:
        self.now, self.last, self.runs = now, last, 0
        self.ran = threading.Event()

    def clock(self) -> datetime:
        return self.now

    def batch(self) -> None:
        self.last, self.runs = self.now, self.runs + 1
        self.ran.set()


@pytest.fixture
def make() -> Iterator[Callable[..., DeliveryScheduler]]:
    made: list[DeliveryScheduler] = []

    def build(db: FakeDb | None = None, **kw: object) -> DeliveryScheduler:
        db = db or FakeDb(u(2026, 6, 10, 14), u(2026, 6, 10, 0, 1))
        jobs: dict[str, Callable[[], object]] = {
            "batch": db.batch,
            "urgent": lambda: None,
            "sweep": lambda: None,
        }
        settings = {k: v for k, v in kw.items() if k not in jobs}
        jobs.update({k: v for k, v in kw.items() if k in jobs})  # type: ignore[misc]
        s = DeliveryScheduler(
            DeliverySettings.model_validate(settings),
            last_batch_at=lambda: db.last,
            clock=db.clock,
            **jobs,
        )
        made.append(s)
        return s

    yield build
    for s in made:
        s.shutdown(wait=True)


def test_nightly_runs_once_on_the_fall_back_night(make: Callable[..., DeliveryScheduler]) -> None:
    db = FakeDb(u(2026, 10, 25, 0, 0, 2), u(2026, 10, 24, 0, 0, 2))
    s = make(db)
    assert s.nightly() is True and db.runs == 1
    db.now = u(2026, 10, 25, 1, 0, 2)  # the trigger's second 01:00
    assert s.nightly() is False and db.runs == 1
    db.now = u(2026, 10, 26, 1, 0, 2)
    assert s.nightly() is True and db.runs == 2


def test_nightly_remembers_its_own_run_when_the_batch_records_nothing(
    make: Callable[..., DeliveryScheduler],
) -> None:
    db = FakeDb(u(2026, 10, 25, 0, 0, 2), u(2026, 10, 24, 0, 0, 2))
    calls: list[int] = []
    s = make(db, batch=lambda: calls.append(1))
    assert s.nightly() is True
    db.now = u(2026, 10, 25, 1, 0, 2)
    assert s.nightly() is False and len(calls) == 1


def test_a_failed_batch_is_retried_by_the_next_catch_up(
    make: Callable[..., DeliveryScheduler],
) -> None:
    db = FakeDb(u(2026, 6, 10, 0, 0, 2), u(2026, 6, 9, 0, 0, 2))
    s = make(db, batch=lambda: 1 / 0)
    assert s.run_batch() is False
    assert s.due()


@pytest.mark.timeout(60)
def test_start_catches_up_a_missed_night(make: Callable[..., DeliveryScheduler]) -> None:
    db = FakeDb(u(2026, 6, 10, 14), u(2026, 6, 8, 0, 0, 3))  # last night was missed
    s = make(db)
    s.start()
    assert db.ran.wait(10) and db.runs == 1
    assert s.catch_up() is False  # cheap, and not twice
    # the nightly job, aimed at "now" for the catch-up, re-arms at a window start
    assert wait_until(lambda: LON.contains(s.next_batch_at() or u(2026, 6, 10, 14)))


@pytest.mark.timeout(60)
def test_no_batch_outside_the_window_when_nothing_was_missed(
    make: Callable[..., DeliveryScheduler],
) -> None:
    db = FakeDb(u(2026, 6, 10, 14), u(2026, 6, 10, 0, 0, 3))
    s = make(db)
    s.start()
    assert s.catch_up() is False
    s.run_now()  # an explicit request runs whatever the window
    assert db.ran.wait(10) and db.runs == 1


@pytest.mark.timeout(120)
def test_run_now_then_shutdown_repeatedly(make: Callable[..., DeliveryScheduler]) -> None:
    """A batch asked for just before shutdown: no error in APScheduler's thread, no leak."""
    for i in range(20):
        db = FakeDb(u(2026, 6, 10, 14), u(2026, 6, 10, 0, 0, 3))
        s = make(db)
        s.start()
        s.run_now()
        if i % 2:  # sometimes stop while the batch runs, sometimes before it starts
            db.ran.wait(10)
        s.shutdown(wait=True)
        assert db.runs <= 1


def test_run_now_needs_a_started_scheduler(make: Callable[..., DeliveryScheduler]) -> None:
    s = make()
    with pytest.raises(RuntimeError, match="start the delivery scheduler"):
        s.run_now()


def test_jobs_are_configured_against_misfires(make: Callable[..., DeliveryScheduler]) -> None:
    s = make(misfire_grace_h=6)
    jobs = {j.id: j for j in s.apscheduler.get_jobs()}
    assert set(jobs) == {"nightly", "urgent", "sweep"}
    assert jobs["nightly"].misfire_grace_time == 6 * 3600
    assert all(j.coalesce and j.max_instances == 1 for j in jobs.values())


@pytest.mark.timeout(60)
def test_urgent_and_sweep_fire(make: Callable[..., DeliveryScheduler]) -> None:
    counts = {"urgent": 0, "sweep": 0}

    def bump(name: str) -> Callable[[], None]:
        return lambda: counts.__setitem__(name, counts[name] + 1)

    s = make(urgent=bump("urgent"), sweep=bump("sweep"), **FAST)
    s.start()
    assert wait_until(lambda: counts["urgent"] >= 3 and counts["sweep"] >= 3)


@pytest.mark.timeout(60)
def test_a_slow_job_is_not_overlapped(
    make: Callable[..., DeliveryScheduler], caplog: pytest.LogCaptureFixture
) -> None:
    lock, release = threading.Lock(), threading.Event()
    state = {"active": 0, "most": 0, "calls": 0}

    def slow() -> None:
        with lock:
            state["active"] += 1
            state["calls"] += 1
            state["most"] = max(state["most"], state["active"])
        release.wait(10)
        with lock:
            state["active"] -= 1

    s = make(urgent=slow, **FAST)
    s.start()
    assert wait_until(lambda: state["calls"] == 1)
    assert wait_until(lambda: "maximum number of running instances" in caplog.text)
    release.set()
    assert wait_until(lambda: state["calls"] >= 2)
    assert state["most"] == 1


@pytest.mark.timeout(60)
def test_batches_never_overlap(make: Callable[..., DeliveryScheduler]) -> None:
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow_batch() -> None:
        calls.append(1)
        entered.set()
        release.wait(10)

    s = make(FakeDb(u(2026, 6, 10, 14)), batch=slow_batch)
    s.start()  # never ran before: catch-up queues the first batch
    assert entered.wait(10)
    assert s.nightly() is False  # the nightly fire finds the batch running
    assert s.run_batch() is False
    release.set()
    s.shutdown(wait=True)
    assert len(calls) == 1


@pytest.mark.timeout(60)
def test_a_failing_job_is_logged_without_its_message_and_keeps_running(
    make: Callable[..., DeliveryScheduler], caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def sweep() -> None:
        calls.append(1)
        if len(calls) <= 2:
            raise ValueError("patient DOE^JANE 1234567")

    s = make(sweep=sweep, **FAST)
    with caplog.at_level(logging.ERROR, logger="courier.delivery.schedule"):
        s.start()
        assert wait_until(lambda: len(calls) >= 4)
    assert "delivery job sweep failed: ValueError at test_schedule.py:" in caplog.text
    assert "DOE^JANE" not in caplog.text and "1234567" not in caplog.text


@pytest.mark.timeout(60)
def test_shutdown_leaves_no_thread(make: Callable[..., DeliveryScheduler]) -> None:
    before = set(threading.enumerate())
    ran = threading.Event()
    s = make(urgent=ran.set, **FAST)
    s.start()
    assert ran.wait(10)
    s.shutdown(wait=True)
    assert not s.running
    assert set(threading.enumerate()) - before == set()
    s.shutdown()  # a second shutdown is harmless

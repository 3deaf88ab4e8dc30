"""When delivery work runs: APScheduler 3 triggers it, the database holds the state.

:class:`DeliveryScheduler` runs its jobs in a ``BackgroundScheduler`` with an in-memory
job store (the database, not APScheduler, knows what was done; two schedulers sharing a
persistent job store would run every job twice):

- ``nightly``: a ``CronTrigger`` at the window's start in its zone, with a misfire grace of
  ``misfire_grace_h`` hours (APScheduler's default of 1 second silently skips a night
  that starts a little late), coalesced, one instance. It runs the batch only when
  :func:`batch_due` says so, which absorbs the trigger's second fire on a fall-back night.
- ``urgent`` every ``urgent_check_s`` and ``sweep`` every ``sweep_interval_s``: interval
  triggers, coalesced, one instance, no misfire limit (a late sweep is still useful).
- ``reminders`` (when given) every :data:`REMINDERS_EVERY_S`: queues the reminders due
  before links expire (:mod:`delivery.reminders`, which claims each in the database, so
  every node may run it).

:meth:`DeliveryScheduler.catch_up` (called by :meth:`~DeliveryScheduler.start`, and cheap
to call at any time) queues the batch when a night was missed, so a machine that was off
at the window's start delivers when it next starts. Outside the window, a batch runs only
through catch-up or :meth:`~DeliveryScheduler.run_now` (both make the nightly job fire
at once; it then re-arms for the next window start). All batch runs share one lock:
never two at once, whatever asked for them.

A job that raises is logged by job name and exception type only (the message may quote
patient values) and keeps its schedule. The callables themselves must be idempotent
(claim work in the database); this module only decides when to call them.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from delivery.settings import DeliverySettings
from delivery.window import DeliveryWindow, WindowError

log = logging.getLogger("courier.delivery.schedule")

Job = Callable[[], object]
#: Seconds between looks for links to remind (a reminder is due days ahead: minutes of
#: lateness do not matter, and each look is one indexed query).
REMINDERS_EVERY_S = 300.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


def batch_due(now: datetime, last_batch_at: datetime | None, window: DeliveryWindow) -> bool:
    """True when a batch should run now: none has run since the latest window start.

    ``last_batch_at`` is when the last batch started (``None``: never). A node that has
    never run a batch runs one: it cannot tell a fresh install from a missed night, and
    an empty batch costs nothing. Inside the window this is "not yet tonight"; outside it,
    "a night was missed". Raises ``WindowError`` (a ``ValueError``) for naive datetimes.
    """
    opened = window.last_start(now)
    if last_batch_at is None:
        return True
    if last_batch_at.tzinfo is None or last_batch_at.utcoffset() is None:
        raise WindowError("last_batch_at is a naive datetime; store and pass aware ones")
    return last_batch_at < opened


def _guarded(name: str, fn: Job) -> Callable[[], bool]:
    """``fn`` wrapped so that an exception is logged (type and our frame, no message)."""

    def run() -> bool:
        try:
            fn()
        except Exception as exc:
            frames = traceback.extract_tb(exc.__traceback__)
            where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
            log.error("delivery job %s failed: %s%s", name, type(exc).__name__, where)
            return False
        return True

    return run


def nightly_trigger(window: DeliveryWindow) -> CronTrigger:
    """The trigger of the nightly batch: the window's start time, every day, in its zone.

    It fires where :meth:`DeliveryWindow.last_start` says the window opened, and also a
    second time in a fall-back overlap (which :func:`batch_due` then refuses).
    """
    return CronTrigger(hour=window.start.hour, minute=window.start.minute, timezone=window.zone)


class DeliveryScheduler:
    """Triggers the nightly batch, the urgent check, the sweeps and the reminders; see
    the module doc.

    ``batch``, ``urgent`` and ``sweep`` do the work; ``last_batch_at`` reads from the
    database when the last batch started (``None``: never); ``clock`` returns the aware
    current time and must agree with the system clock when running for real.
    """

    def __init__(
        self,
        settings: DeliverySettings,
        *,
        batch: Job,
        urgent: Job,
        sweep: Job,
        last_batch_at: Callable[[], datetime | None],
        clock: Callable[[], datetime] = _utc_now,
        reminders: Job | None = None,
    ) -> None:
        self.settings = settings
        self.window = settings.delivery_window()
        self._batch = _guarded("batch", batch)
        self._last_batch_at = last_batch_at
        self._clock = clock
        self._batch_lock = threading.Lock()
        self._forced = threading.Event()  # run_now asked: the next nightly call runs
        self._ran_at: datetime | None = None  # start of the last batch that returned
        self._scheduler = BackgroundScheduler(
            jobstores={"default": MemoryJobStore()},
            executors={
                "default": ThreadPoolExecutor(
                    4, pool_kwargs={"thread_name_prefix": "courier-delivery"}
                )
            },
            timezone=self.window.zone,
        )
        self._scheduler.add_job(
            self.nightly,
            nightly_trigger(self.window),
            id="nightly",
            name="nightly",
            misfire_grace_time=round(settings.misfire_grace_h * 3600),
            coalesce=True,
            max_instances=1,
        )
        interval_jobs: list[tuple[str, Job, float]] = [
            ("urgent", urgent, settings.urgent_check_s),
            ("sweep", sweep, settings.sweep_interval_s),
        ]
        if reminders is not None:
            interval_jobs.append(("reminders", reminders, REMINDERS_EVERY_S))
        for name, fn, every in interval_jobs:
            self._scheduler.add_job(
                _guarded(name, fn),
                IntervalTrigger(seconds=every, timezone=self.window.zone),
                id=name,
                name=name,
                misfire_grace_time=None,
                coalesce=True,
                max_instances=1,
            )

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`shutdown`."""
        return bool(self._scheduler.running)

    @property
    def apscheduler(self) -> BackgroundScheduler:
        """The underlying scheduler, to inspect jobs or add listeners (not to add jobs)."""
        return self._scheduler

    def start(self) -> None:
        """Start the jobs, then :meth:`catch_up`. Raises RuntimeError if already running."""
        if self.running:
            raise RuntimeError("the delivery scheduler is already running")
        self._scheduler.start()
        log.info("delivery scheduler started window=%s", self.window)
        self.catch_up()

    def shutdown(self, wait: bool = True) -> None:
        """Stop triggering; with ``wait``, return once every running job has finished."""
        if self.running:
            self._scheduler.shutdown(wait=wait)
            log.info("delivery scheduler stopped")

    def next_batch_at(self) -> datetime | None:
        """When the nightly trigger fires next (UTC); ``None`` before :meth:`start`."""
        job = self._scheduler.get_job("nightly")
        when = getattr(job, "next_run_time", None) if job is not None else None
        return when.astimezone(UTC) if isinstance(when, datetime) else None

    def due(self) -> bool:
        """:func:`batch_due` now, from the database's record and this process's own."""
        last = self._last_batch_at()
        if self._ran_at is not None and (last is None or self._ran_at > last):
            last = self._ran_at
        return batch_due(self._clock(), last, self.window)

    def catch_up(self) -> bool:
        """Queue one batch if :meth:`due`; returns whether it did. Needs :meth:`start`."""
        if not self.due():
            return False
        log.info("delivery batch due (window %s): catching up", self.window)
        self.run_now()
        return True

    def run_now(self) -> None:
        """Have the nightly job fire at once, whatever the window (it runs in the pool).

        The batch then runs even if it is not due. The nightly job is re-aimed rather than
        a one-off job added: APScheduler 3 raises JobLookupError in its own thread when
        it removes a finished one-off job while ``shutdown`` is under way. Raises
        RuntimeError before :meth:`start` or after :meth:`shutdown`.
        """
        if not self.running:
            raise RuntimeError("start the delivery scheduler before asking for a batch")
        self._forced.set()
        self._scheduler.modify_job("nightly", next_run_time=datetime.now(self.window.zone))

    def nightly(self) -> bool:
        """What the nightly job calls: :meth:`run_batch` if :meth:`due` or asked for."""
        if not self._forced.is_set() and not self.due():
            log.info("nightly delivery batch already ran since the window opened; skipped")
            return False
        return self.run_batch()

    def run_batch(self) -> bool:
        """Run the batch in this thread unless one is running; True if it ran and returned.

        A batch that raised is logged and not recorded here, so the next catch-up retries.
        """
        if not self._batch_lock.acquire(blocking=False):
            log.info("delivery batch already running; this request is skipped")
            return False
        try:
            self._forced.clear()  # whoever asked for a batch, this one answers them
            started = self._clock()
            ok = self._batch()
            if ok:
                self._ran_at = started
            return ok
        finally:
            self._batch_lock.release()


__all__ = ["REMINDERS_EVERY_S", "DeliveryScheduler", "batch_due", "nightly_trigger"]

"""The SMS circuit breaker: ``sms.max_per_hour`` attempts in any hour, for the whole node.

Every SMS costs money and goes to a phone; a script that finds a way to make Courier
send them (a portal flaw, a bulk import gone wrong) must not run up a bill overnight.
The per-link limits (codes per hour, shares per link) stop one link; this stops them all.

The relay consults :meth:`SmsBreaker.hold` just before it records an SMS attempt, in
the same synchronous step (no ``await`` in between), so one relay's concurrent sends
cannot overshoot. The count comes from the database (attempts whose row's channel is
``sms``, started in the last hour), so every node and a restarted relay share it; relays
on several nodes may overshoot by at most the SMS they start in the same instant.

When the breaker holds:

- the row goes back to ``queued`` without counting an attempt, due again when the
  oldest attempt of the hour leaves the window: nothing is dropped or failed, and
  sending resumes by itself;
- staff get one ``sms_breaker`` alert (by email, which the breaker never holds) per
  hour while it keeps holding, not one per held SMS.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from delivery.outbox import Outbox
from store.models import Notification, NotificationAttempt, utcnow

log = logging.getLogger("courier.delivery.smsbreaker")
WINDOW = timedelta(hours=1)
ALERT = "sms_breaker"


class SmsBreaker:
    """Holds SMS once ``max_per_hour`` attempts were started in the last hour (0: never)."""

    def __init__(
        self,
        max_per_hour: int,
        outbox: Outbox,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.max_per_hour = max_per_hour
        self._outbox = outbox
        self._clock = clock

    def hold(self, s: Session) -> datetime | None:
        """None when one more SMS may be attempted now; otherwise when to try again.

        Holding queues the staff alert (once per hour) in ``s`` and flushes; the caller
        commits it with the row it puts back.
        """
        if self.max_per_hour <= 0:
            return None
        now = self._clock()
        since = now - WINDOW
        recent = (
            select(NotificationAttempt.started_at)
            .join(Notification, Notification.id == NotificationAttempt.notification_id)
            .where(Notification.channel == "sms", NotificationAttempt.started_at > since)
        )
        count = s.scalar(select(func.count()).select_from(recent.subquery())) or 0
        if count < self.max_per_hour:
            return None
        oldest = s.scalar(select(func.min(recent.subquery().c.started_at)))
        resume = (oldest or now) + WINDOW
        resume = max(resume, now + timedelta(seconds=1))
        self._alert_once(s, now)
        return resume

    def _alert_once(self, s: Session, now: datetime) -> None:
        already = s.scalar(
            select(Notification.id)
            .where(Notification.kind == f"alert_{ALERT}", Notification.created_at > now - WINDOW)
            .limit(1)
        )
        if already is not None:
            return
        log.error(
            "SMS circuit breaker: %d SMS in the last hour; SMS held until the hour allows",
            self.max_per_hour,
        )
        self._outbox.alert(s, ALERT, reference=None, request_id=None)

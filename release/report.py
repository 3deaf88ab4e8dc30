"""Figures for staff and the hospital's own reporting, read from the request history.

:meth:`Reports.build` returns, for the last ``days`` UTC calendar days (today, so far,
included; at most :data:`MAX_DAYS`):

- **outcomes per day**: how many requests reached each outcome that day: downloaded
  (``→ downloaded``), expired unopened (``notified → expired`` with no patient link
  ever opened), failed (``→ failed``), on CD (a burn-queue job marked burned), delivered
  to a DICOM destination (``→ delivered``). A request counts once per outcome, on the
  first day it reached it within the period; every day of the period is listed, empty
  ones with zeros;
- **time to first download per ISO week**: from the request's creation to its first
  ``→ downloaded`` event, for the requests first downloaded in the period, grouped by
  the week of that download: how many, the median and the 90th percentile (nearest
  rank: the smallest time at or under which at least that share of downloads fall, so
  always a time that happened), and how many took under two days;
- **failures by cause**, counted over the period: an email refused for good by the mail
  server (an attempt ending ``permanent`` on an email notification), an SMS refused (the
  same on an SMS), packaging (``packaging → failed`` of a request for a link), a DICOM
  send (``→ failed`` of a request to a DICOM destination), an identity mismatch found
  (a study held from a request because its patient differs), a request gone overdue.

Bounded work: one pass over the period's request events into the states it reads
(grouped in the database per request, state and from-state, so one row per request
and outcome comes back), then look-ups by primary or unique key (whether a patient link
was opened, whether a request went to a DICOM destination) in chunks of :data:`CHUNK`
ids, and counts of the period's outbox attempts, CD jobs and identity mismatches. The
period is at most :data:`MAX_DAYS` days. ``bench/report.py`` times it on 100,000
requests.
Works on SQLite and PostgreSQL alike. No patient data is read: states, times, counts.

Raises :class:`ReportError` (a ``ValueError``) for a period out of range, and
:class:`store.errors.DatabaseUnavailable` when the database cannot be read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from store.catalog import guarded
from store.models import (
    DicomDestination,
    DiscJob,
    Grant,
    IdentityMismatch,
    Notification,
    NotificationAttempt,
    ReleaseRequest,
    RequestEvent,
    RequestState,
    utcnow,
)

MAX_DAYS = 366
"""The longest period a report covers (a year, leap day included)."""
PERIODS = (30, 365)
"""The periods the staff page and ``courier report --days`` offer."""
FAST_HOURS = 48.0
"""The seed's measure: a patient has the images in fewer than two days."""

OUTCOMES: dict[str, str] = {
    "downloaded": "Downloaded",
    "expired_unopened": "Link expired unopened",
    "failed": "Failed",
    "disc": "Sent on CD",
    "delivered": "Delivered to a hospital (DICOM)",
}
"""Outcome keys, in display order, with their labels."""

CAUSES: dict[str, str] = {
    "smtp_permanent": "Email refused by the mail server",
    "sms_refused": "SMS refused",
    "packaging": "Packaging",
    "dicom_send": "DICOM send",
    "identity_mismatch": "Identity mismatch",
    "overdue": "Overdue (studies not received in time)",
}
"""Failure causes, in display order, with their labels."""

S = RequestState


class ReportError(ValueError):
    """A report was asked for a period it cannot cover."""


@dataclass(frozen=True)
class DayOutcomes:
    """How many requests reached each outcome on one UTC day."""

    day: date
    counts: dict[str, int]


@dataclass(frozen=True)
class WeekTimes:
    """Time from request to first download, for the downloads of one ISO week."""

    week: str  # ISO 8601 week, e.g. "2026-W10"
    starts: date  # its Monday
    downloads: int
    median_h: float | None  # hours; None when nothing was downloaded that week
    p90_h: float | None
    under_2_days: int


@dataclass(frozen=True)
class Report:
    """The figures of one period: ``[since, until)``, ``days`` UTC days."""

    days: int
    since: datetime
    until: datetime
    per_day: list[DayOutcomes]
    weeks: list[WeekTimes]
    failures: dict[str, int]
    totals: dict[str, int] = field(default_factory=dict)  # outcomes over the period

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: dates and times as ISO 8601 strings."""
        return {
            "days": self.days,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "outcomes": dict(OUTCOMES),
            "totals": dict(self.totals),
            "per_day": [{"day": d.day.isoformat(), **d.counts} for d in self.per_day],
            "time_to_download": [{**asdict(w), "starts": w.starts.isoformat()} for w in self.weeks],
            "failure_causes": dict(CAUSES),
            "failures": dict(self.failures),
        }


def nearest_rank(values: list[float], share: float) -> float | None:
    """The ``share`` (0 < share ≤ 1) percentile of ``values`` by nearest rank: the value
    at rank ⌈share·n⌉ of the sorted values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(share * len(ordered))) - 1]


class Reports:
    """Builds :class:`Report` from the database; ``clock`` says when "now" is."""

    def __init__(
        self, sessions: sessionmaker[Session], *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._sessions = sessions
        self._clock = clock

    def build(self, days: int) -> Report:
        """The figures of the last ``days`` UTC days (today included). Raises
        :class:`ReportError` when ``days`` is not within 1…:data:`MAX_DAYS`."""
        if not 1 <= days <= MAX_DAYS:
            raise ReportError(f"a report covers 1 to {MAX_DAYS} days, not {days}")
        until = self._clock().astimezone(UTC)
        first = until.date() - timedelta(days=days - 1)
        since = datetime.combine(first, time(0), tzinfo=UTC)
        with guarded(self._sessions) as s:
            seen = _scan(s, since, until)
            firsts = {
                "downloaded": seen.firsts[S.DOWNLOADED],
                "expired_unopened": _unopened(s, seen.expired),
                "failed": seen.firsts[S.FAILED],
                "disc": _burned(s, since, until),
                "delivered": seen.firsts[S.DELIVERED],
            }
            failures = _failures(s, seen, since, until)
        per_day = {first + timedelta(days=i): dict.fromkeys(OUTCOMES, 0) for i in range(days)}
        for key, times in firsts.items():
            for at in times.values():
                per_day[at.date()][key] += 1
        hours: dict[date, list[float]] = {monday: [] for monday in _mondays(first, until.date())}
        for rid, at in seen.firsts[S.DOWNLOADED].items():
            taken = (at - seen.created[rid]).total_seconds() / 3600
            hours[_monday(at.date())].append(max(0.0, taken))
        return Report(
            days=days,
            since=since,
            until=until,
            per_day=[DayOutcomes(d, counts) for d, counts in per_day.items()],
            weeks=[_week(monday, values) for monday, values in hours.items()],
            failures=failures,
            totals={key: len(times) for key, times in firsts.items()},
        )


@dataclass
class _Seen:
    """What the period's request events say, per request id."""

    firsts: dict[str, dict[int, datetime]]  # state -> request -> first time in the period
    expired: dict[int, datetime]  # notified -> expired: first time (opened or not)
    created: dict[int, datetime]  # when each request was created
    failed: dict[tuple[int, str], int]  # (request, from state) -> how many -> failed
    overdue: int = 0


WATCHED = (S.DOWNLOADED, S.EXPIRED, S.FAILED, S.DELIVERED, S.OVERDUE)
"""The states whose events the report reads."""
CHUNK = 500
"""Request ids per ``IN (...)`` (well under SQLite's and PostgreSQL's parameter caps)."""


def _scan(s: Session, since: datetime, until: datetime) -> _Seen:
    """One pass over the period's events into the watched states: per request, state
    and from-state, the first time and how many, with the request's creation time."""
    seen = _Seen({str(st): {} for st in WATCHED}, {}, {}, {})
    rows = s.execute(
        select(
            RequestEvent.request_id,
            RequestEvent.to_state,
            RequestEvent.from_state,
            func.min(RequestEvent.at),
            func.count(),
            ReleaseRequest.created_at,
        )
        .join(ReleaseRequest, ReleaseRequest.id == RequestEvent.request_id)
        .where(
            RequestEvent.to_state.in_(WATCHED),
            RequestEvent.at >= since,
            RequestEvent.at < until,
        )
        .group_by(
            RequestEvent.request_id,
            RequestEvent.to_state,
            RequestEvent.from_state,
            ReleaseRequest.created_at,
        )
    )
    for rid, to_state, from_state, at, n, created in rows:
        at = _utc(at)
        seen.created[rid] = _utc(created)
        firsts = seen.firsts[to_state]
        firsts[rid] = min(at, firsts.get(rid, at))
        if to_state == S.EXPIRED and from_state == S.NOTIFIED:
            seen.expired[rid] = min(at, seen.expired.get(rid, at))
        elif to_state == S.FAILED:
            seen.failed[(rid, from_state)] = int(n)
        elif to_state == S.OVERDUE:
            seen.overdue += int(n)
    return seen


def _chunks(ids: Iterable[int]) -> Iterable[list[int]]:
    items = sorted(ids)
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


def _unopened(s: Session, expired: dict[int, datetime]) -> dict[int, datetime]:
    """Those of ``expired`` whose patient never opened a link."""
    opened: set[int] = set()
    for ids in _chunks(expired):
        opened.update(
            s.scalars(
                select(Grant.request_id).where(
                    Grant.request_id.in_(ids),
                    Grant.purpose == "patient",
                    Grant.first_opened_at.is_not(None),
                )
            )
        )
    return {rid: at for rid, at in expired.items() if rid not in opened}


def _burned(s: Session, since: datetime, until: datetime) -> dict[int, datetime]:
    """When each request's CD was first marked burned in the period."""
    rows = s.execute(
        select(DiscJob.request_id, func.min(DiscJob.burned_at))
        .where(DiscJob.burned_at >= since, DiscJob.burned_at < until)
        .group_by(DiscJob.request_id)
    )
    return {rid: _utc(at) for rid, at in rows if at is not None}


def _failures(s: Session, seen: _Seen, since: datetime, until: datetime) -> dict[str, int]:
    counts = dict.fromkeys(CAUSES, 0)
    refused = s.execute(
        select(Notification.channel, func.count())
        .select_from(NotificationAttempt)
        .join(Notification, Notification.id == NotificationAttempt.notification_id)
        .where(
            NotificationAttempt.outcome == "permanent",
            NotificationAttempt.started_at >= since,
            NotificationAttempt.started_at < until,
        )
        .group_by(Notification.channel)
    )
    for channel, n in refused:
        if channel == "email":
            counts["smtp_permanent"] += int(n)
        elif channel == "sms":
            counts["sms_refused"] += int(n)
    to_dicom: set[int] = set()
    for ids in _chunks({rid for rid, _ in seen.failed}):
        to_dicom.update(
            s.scalars(
                select(DicomDestination.request_id).where(DicomDestination.request_id.in_(ids))
            )
        )
    for (rid, from_state), n in seen.failed.items():
        if rid in to_dicom:
            counts["dicom_send"] += n
        elif from_state == S.PACKAGING:
            counts["packaging"] += n
    counts["overdue"] = seen.overdue
    counts["identity_mismatch"] = int(
        s.scalar(
            select(func.count()).where(
                IdentityMismatch.found_at >= since, IdentityMismatch.found_at < until
            )
        )
        or 0
    )
    return counts


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


def _mondays(first: date, last: date) -> Iterable[date]:
    monday = _monday(first)
    while monday <= last:
        yield monday
        monday += timedelta(days=7)


def _week(monday: date, hours: list[float]) -> WeekTimes:
    year, week, _ = monday.isocalendar()
    return WeekTimes(
        week=f"{year}-W{week:02d}",
        starts=monday,
        downloads=len(hours),
        median_h=_rounded(nearest_rank(hours, 0.5)),
        p90_h=_rounded(nearest_rank(hours, 0.9)),
        under_2_days=sum(1 for h in hours if h < FAST_HOURS),
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)

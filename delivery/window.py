"""The nightly delivery window: ``"HH:MM-HH:MM"`` local wall time in one IANA zone.

A window opens once per local night: the *night* of a local date ``D`` opens at ``start``
on ``D`` and closes at ``end`` on ``D`` (or on ``D + 1`` when ``end`` is earlier than
``start``: the window wraps midnight). The start is inclusive and the end exclusive.

Daylight-saving changes (the choice, and why):

- A wall time that does not exist (the spring-forward gap, e.g. 01:00-02:00 in
  Europe/London on 2026-03-29) is read with the offset in force *before* the change
  (PEP 495, ``fold=0``): it moves forward by the length of the gap, so 01:00 becomes
  02:00 BST and 01:30 becomes 02:30 BST. This is exactly where APScheduler's
  ``CronTrigger`` fires, so the window and the trigger that runs the batch agree.
- A wall time that happens twice (the fall-back overlap, e.g. 01:00-02:00 in
  Europe/London on 2026-10-25) means its first occurrence (``fold=0``, still summer time).
- Each local date has exactly one start, so the window never opens twice in one local
  night (``CronTrigger`` does fire twice in an overlap; the scheduler's due check absorbs
  the second fire).
- If a gap would leave a night's window empty (an end just after a gap that swallowed
  the start), that night's window keeps its nominal wall-clock length from its start.

All instants in and out are timezone-aware; naive datetimes are refused with
:class:`WindowError` (a ``ValueError``), because guessing their zone is how a batch runs
an hour early twice a year.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
_DAY = timedelta(days=1)


class WindowError(ValueError):
    """A window string, time zone name or datetime is unusable; the message says why."""


def parse_zone(name: str) -> ZoneInfo:
    """The IANA zone called ``name`` (e.g. ``"Europe/London"``).

    Raises :class:`WindowError` naming the bad value when the zone is unknown.
    """
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise WindowError(
            f"unknown time zone {name!r}; give an IANA name such as Europe/London, "
            "America/New_York or UTC"
        ) from None


def _parse_times(text: str) -> tuple[time, time]:
    m = _WINDOW.match(text.strip())
    if m is None:
        raise WindowError(
            f"{text!r} is not a window; expected local start and end as HH:MM-HH:MM "
            "in 24-hour time, e.g. 01:00-05:00 (it may wrap midnight: 22:00-02:00)"
        )
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if (h1, m1) == (h2, m2):
        raise WindowError(
            f"{text!r}: the window starts and ends at the same time; give two different "
            "times (a window cannot last 0 or 24 hours)"
        )
    return time(h1, m1), time(h2, m2)


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise WindowError("naive datetime given; pass an aware one, e.g. datetime.now(UTC)")
    return now.astimezone(UTC)


@dataclass(frozen=True)
class DeliveryWindow:
    """A daily local-time window in ``zone``; see the module docstring for DST rules."""

    start: time
    end: time
    zone: ZoneInfo

    @classmethod
    def parse(cls, text: str, zone: str) -> DeliveryWindow:
        """Build from ``"HH:MM-HH:MM"`` and an IANA zone name.

        Raises :class:`WindowError` for a malformed window, equal start and end, or an
        unknown zone.
        """
        start, end = _parse_times(text)
        return cls(start, end, parse_zone(zone))

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M} {self.zone.key}"

    @property
    def wraps_midnight(self) -> bool:
        """True when the window ends on the local day after it starts."""
        return self.end < self.start

    def _instant(self, day: date, at: time) -> datetime:
        # fold=0: a gap moves forward by its length, an overlap takes its first occurrence.
        return datetime.combine(day, at, tzinfo=self.zone).astimezone(UTC)

    def opening(self, night: date) -> tuple[datetime, datetime]:
        """The ``[start, end)`` instants (UTC) of the window of local date ``night``."""
        start = self._instant(night, self.start)
        end = self._instant(night + _DAY if self.wraps_midnight else night, self.end)
        if end <= start:  # a gap swallowed the start: keep the nominal length
            nominal = datetime.combine(night + _DAY, self.end) - datetime.combine(night, self.start)
            end = start + (nominal if self.wraps_midnight else nominal - _DAY)
        return start, end

    def _nights(self, now: datetime) -> list[date]:
        today = now.astimezone(self.zone).date()
        return [today + timedelta(days=k) for k in range(-2, 3)]

    def contains(self, now_utc: datetime) -> bool:
        """True when ``now_utc`` (aware) is inside a window; raises WindowError if naive."""
        now = _aware(now_utc)
        for night in self._nights(now):
            start, end = self.opening(night)
            if start <= now < end:
                return True
        return False

    def next_start(self, now_utc: datetime) -> datetime:
        """The first window start strictly after ``now_utc``, in UTC."""
        now = _aware(now_utc)
        return min(s for s in (self.opening(n)[0] for n in self._nights(now)) if s > now)

    def last_start(self, now_utc: datetime) -> datetime:
        """The most recent window start at or before ``now_utc``, in UTC."""
        now = _aware(now_utc)
        return max(s for s in (self.opening(n)[0] for n in self._nights(now)) if s <= now)

"""DeliveryWindow: tables of instants for ordinary, wrapping and DST nights.

Europe/London changes on 2026-03-29 (01:00 GMT -> 02:00 BST, at 01:00 UTC) and on
2026-10-25 (02:00 BST -> 01:00 GMT, at 01:00 UTC); America/New_York on 2026-03-08
(02:00 EST -> 03:00 EDT, at 07:00 UTC) and 2026-11-01 (02:00 EDT -> 01:00 EST, at 06:00
UTC). Every expectation is written in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from delivery.window import DeliveryWindow, WindowError


def u(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=UTC)


LON = "Europe/London"
NY = "America/New_York"

# (window, zone, now, contains)
CONTAINS = [
    # ordinary summer night (BST, UTC+1): 00:00-04:00 UTC
    ("01:00-05:00", LON, u(2026, 6, 10, 0, 0), True),
    ("01:00-05:00", LON, u(2026, 6, 10, 3, 59), True),
    ("01:00-05:00", LON, u(2026, 6, 10, 4, 0), False),
    ("01:00-05:00", LON, u(2026, 6, 9, 23, 59), False),
    ("01:00-05:00", LON, u(2026, 6, 10, 12, 0), False),
    # winter (GMT): 01:00-05:00 UTC
    ("01:00-05:00", LON, u(2026, 1, 15, 0, 30), False),
    ("01:00-05:00", LON, u(2026, 1, 15, 1, 0), True),
    # wrapping midnight, winter: 22:00 UTC to 02:00 UTC next day
    ("22:00-02:00", LON, u(2026, 1, 15, 21, 59), False),
    ("22:00-02:00", LON, u(2026, 1, 15, 22, 0), True),
    ("22:00-02:00", LON, u(2026, 1, 16, 0, 0), True),
    ("22:00-02:00", LON, u(2026, 1, 16, 1, 59), True),
    ("22:00-02:00", LON, u(2026, 1, 16, 2, 0), False),
    # spring forward: 01:00 does not exist, the window opens at 02:00 BST = 01:00 UTC
    # and closes at 05:00 BST = 04:00 UTC (three hours that night)
    ("01:00-05:00", LON, u(2026, 3, 29, 0, 59), False),
    ("01:00-05:00", LON, u(2026, 3, 29, 1, 0), True),
    ("01:00-05:00", LON, u(2026, 3, 29, 3, 59), True),
    ("01:00-05:00", LON, u(2026, 3, 29, 4, 0), False),
    # start and end both near the gap: 01:45 -> 02:45 BST, keeps its nominal 30 minutes
    ("01:45-02:15", LON, u(2026, 3, 29, 1, 44), False),
    ("01:45-02:15", LON, u(2026, 3, 29, 2, 0), True),
    ("01:45-02:15", LON, u(2026, 3, 29, 2, 15), False),
    # fall back: opens at the first 01:00 (BST, 00:00 UTC), closes 05:00 GMT (5 hours)
    ("01:00-05:00", LON, u(2026, 10, 24, 23, 59), False),
    ("01:00-05:00", LON, u(2026, 10, 25, 0, 0), True),
    ("01:00-05:00", LON, u(2026, 10, 25, 1, 30), True),  # the second 01:30
    ("01:00-05:00", LON, u(2026, 10, 25, 4, 59), True),
    ("01:00-05:00", LON, u(2026, 10, 25, 5, 0), False),
    # New York spring: 01:00 EST = 06:00 UTC to 05:00 EDT = 09:00 UTC
    ("01:00-05:00", NY, u(2026, 3, 8, 5, 59), False),
    ("01:00-05:00", NY, u(2026, 3, 8, 6, 0), True),
    ("01:00-05:00", NY, u(2026, 3, 8, 9, 0), False),
    # New York: 02:30 does not exist on 2026-03-08 -> 03:30 EDT = 07:30 UTC
    ("02:30-06:00", NY, u(2026, 3, 8, 7, 29), False),
    ("02:30-06:00", NY, u(2026, 3, 8, 7, 30), True),
    ("02:30-06:00", NY, u(2026, 3, 8, 9, 59), True),
    ("02:30-06:00", NY, u(2026, 3, 8, 10, 0), False),
    # New York fall: 01:30 EDT = 05:30 UTC to 03:00 EST = 08:00 UTC
    ("01:30-03:00", NY, u(2026, 11, 1, 5, 29), False),
    ("01:30-03:00", NY, u(2026, 11, 1, 5, 30), True),
    ("01:30-03:00", NY, u(2026, 11, 1, 7, 59), True),
    ("01:30-03:00", NY, u(2026, 11, 1, 8, 0), False),
]


@pytest.mark.parametrize(("text", "zone", "now", "expected"), CONTAINS)
def test_contains(text: str, zone: str, now: datetime, expected: bool) -> None:
    w = DeliveryWindow.parse(text, zone)
    assert w.contains(now) is expected
    assert w.contains(now.astimezone(ZoneInfo(zone))) is expected  # any aware zone works


# (window, zone, now, last_start, next_start)
STARTS = [
    ("01:00-05:00", LON, u(2026, 6, 10, 12), u(2026, 6, 10, 0), u(2026, 6, 11, 0)),
    # exactly at a start: last_start is now, next_start is tomorrow
    ("01:00-05:00", LON, u(2026, 6, 10, 0), u(2026, 6, 10, 0), u(2026, 6, 11, 0)),
    ("22:00-02:00", LON, u(2026, 1, 16, 1), u(2026, 1, 15, 22), u(2026, 1, 16, 22)),
    # spring forward in London
    ("01:00-05:00", LON, u(2026, 3, 28, 12), u(2026, 3, 28, 1), u(2026, 3, 29, 1)),
    ("01:00-05:00", LON, u(2026, 3, 29, 1), u(2026, 3, 29, 1), u(2026, 3, 30, 0)),
    ("01:30-05:00", LON, u(2026, 3, 28, 12), u(2026, 3, 28, 1, 30), u(2026, 3, 29, 1, 30)),
    ("00:30-04:00", LON, u(2026, 3, 29, 12), u(2026, 3, 29, 0, 30), u(2026, 3, 29, 23, 30)),
    # fall back in London: one start on the 25th, at the first 01:00
    ("01:00-05:00", LON, u(2026, 10, 24, 12), u(2026, 10, 24, 0), u(2026, 10, 25, 0)),
    ("01:00-05:00", LON, u(2026, 10, 25, 0), u(2026, 10, 25, 0), u(2026, 10, 26, 1)),
    ("01:00-05:00", LON, u(2026, 10, 25, 1, 30), u(2026, 10, 25, 0), u(2026, 10, 26, 1)),
    # New York
    ("01:00-05:00", NY, u(2026, 3, 7, 12), u(2026, 3, 7, 6), u(2026, 3, 8, 6)),
    ("02:30-06:00", NY, u(2026, 3, 8, 12), u(2026, 3, 8, 7, 30), u(2026, 3, 9, 6, 30)),
    ("01:30-03:00", NY, u(2026, 11, 1, 6), u(2026, 11, 1, 5, 30), u(2026, 11, 2, 6, 30)),
]


@pytest.mark.parametrize(("text", "zone", "now", "last", "nxt"), STARTS)
def test_starts(text: str, zone: str, now: datetime, last: datetime, nxt: datetime) -> None:
    w = DeliveryWindow.parse(text, zone)
    assert w.last_start(now) == last
    assert w.next_start(now) == nxt
    assert w.next_start(now).tzinfo is UTC and w.last_start(now).tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "zone"),
    [
        ("01:00-05:00", LON),
        ("01:30-05:00", LON),
        ("22:00-02:00", LON),
        ("02:30-06:00", NY),
        ("01:30-03:00", NY),
        ("02:00-04:00", "Australia/Lord_Howe"),  # a 30-minute DST shift
        ("00:00-06:00", "America/Santiago"),  # the gap is at midnight
    ],
)
def test_one_start_per_local_night_all_year(text: str, zone: str) -> None:
    w = DeliveryWindow.parse(text, zone)
    tz = ZoneInfo(zone)
    t = u(2026, 1, 1)
    prev = w.last_start(t)
    for _ in range(366):
        nxt = w.next_start(t)
        assert nxt > t and w.last_start(nxt) == nxt
        assert nxt.astimezone(tz).date() == prev.astimezone(tz).date() + timedelta(days=1)
        assert timedelta(hours=22) <= nxt - prev <= timedelta(hours=26)
        assert w.contains(nxt)  # every night's window is open at its start
        prev, t = nxt, nxt


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("25:00-01:00", "HH:MM-HH:MM"),
        ("01:60-02:00", "HH:MM-HH:MM"),
        ("1-5", "HH:MM-HH:MM"),
        ("1:00-5:00", "HH:MM-HH:MM"),
        ("01:00", "HH:MM-HH:MM"),
        ("", "HH:MM-HH:MM"),
        ("01:00-01:00", "same time"),
        ("00:00-00:00", "same time"),
    ],
)
def test_bad_window_strings(text: str, message: str) -> None:
    with pytest.raises(WindowError, match=message):
        DeliveryWindow.parse(text, LON)


@pytest.mark.parametrize("zone", ["Mars/Olympus", "../../etc/passwd", "", "GMT+25"])
def test_bad_zone(zone: str) -> None:
    with pytest.raises(WindowError, match="unknown time zone"):
        DeliveryWindow.parse("01:00-05:00", zone)


@pytest.mark.parametrize("method", ["contains", "next_start", "last_start"])
def test_naive_datetimes_are_refused(method: str) -> None:
    w = DeliveryWindow.parse("01:00-05:00", LON)
    with pytest.raises(WindowError, match="naive"):
        getattr(w, method)(datetime(2026, 6, 10, 1, 0))


def test_value_type() -> None:
    w = DeliveryWindow.parse(" 22:00-02:00 ", LON)
    assert str(w) == "22:00-02:00 Europe/London"
    assert w.wraps_midnight and w == DeliveryWindow.parse("22:00-02:00", LON)
    assert w.opening(u(2026, 1, 15).date()) == (u(2026, 1, 15, 22), u(2026, 1, 16, 2))

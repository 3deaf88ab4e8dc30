"""Dates in rules: the bounds an admin writes, and the DA/DT values headers hold.

A bound is absolute, ``20240131`` or ``2024-01-31``, or relative, ``-30d`` (thirty days
before the day the rule is evaluated; ``-0d`` is that day). Relative bounds are resolved
at match time against the ``today`` the caller passes in, so tests and dry-runs can fix
the clock.

Header values are read as DICOM DA (``YYYYMMDD``; the old ``YYYY.MM.DD`` form too) or DT
(whose first eight digits are the date). Anything else is "not a date", and a date
condition on it does not hold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta

_ABSOLUTE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")
_RELATIVE = re.compile(r"-(\d{1,5})d")
_DICOM = re.compile(r"(\d{4})\.?(\d{2})\.?(\d{2})")


@dataclass(frozen=True)
class DateBound:
    """An absolute date, or a number of days before the evaluation day."""

    text: str
    absolute: date | None = None
    days_ago: int = 0

    def resolve(self, today: date) -> date:
        """The concrete date this bound stands for when evaluated on ``today``."""
        if self.absolute is not None:
            return self.absolute
        return today - timedelta(days=self.days_ago)


def parse_bound(text: str) -> DateBound:
    """Parse a rule's date bound; raises ``ValueError`` naming the accepted forms."""
    found = _ABSOLUTE.fullmatch(text)
    if found is not None:
        try:
            day = date(int(found[1]), int(found[2]), int(found[3]))
        except ValueError:
            raise ValueError(f"{text!r} is not a calendar date") from None
        return DateBound(text=text, absolute=day)
    found = _RELATIVE.fullmatch(text)
    if found is not None:
        return DateBound(text=text, days_ago=int(found[1]))
    raise ValueError(
        f"{text!r} is not a date: write YYYYMMDD (quoted, e.g. '20240131'), "
        "YYYY-MM-DD, or -Nd for N days ago (e.g. -30d)"
    )


def dicom_date(value: str) -> date | None:
    """The date a DA or DT value starts with, or ``None`` if it does not hold one."""
    found = _DICOM.match(value.strip())
    if found is None:
        return None
    try:
        return date(int(found[1]), int(found[2]), int(found[3]))
    except ValueError:
        return None

"""When a released study may go out: a rule's ``release:`` block (or the site default).

A release rule may hold what it releases for a while, as many sites must (an embargo of
48-72 h after the scan, or until the radiologist's final report)::

    - name: ct-by-accession
      when: {Modality: CT}
      action: release
      join: {accession: AccessionNumber}
      release:
        after: 72h              # an embargo: Nh (elapsed hours) or Nd (calendar days)
        from: study_date        # or arrival (default): where `after` and `max_wait` count from
        until: report_final     # and wait for the final (or corrected) report ...
        max_wait: 7d            # ... at most this long (default 7d) ...
        then: hold_for_staff    # ... then hold for staff (default) or release_images

Durations: ``Nh`` is N elapsed hours (so 72h is 72 real hours whatever a DST change
does to the wall clock); ``Nd`` is N calendar days in the site's time zone (the same
local time N days later: 23 or 25 real hours across a DST change). ``0h`` is none.
``study_date`` counts from local midnight of the study's StudyDate in the site zone
(the study's time is not kept); ``arrival`` from when the study's first instance came.

The model only describes the policy; :mod:`release.embargo` applies it to requests.
Pure: imports nothing of ours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, model_validator

_DURATION = re.compile(r"(\d{1,5})([hd])")
_MAX_HOURS = 24 * 366

Anchor = Literal["arrival", "study_date"]
Until = Literal["report_final"]
Then = Literal["hold_for_staff", "release_images"]
POLICY_KEYS = ("after", "from", "until", "max_wait", "then")


@dataclass(frozen=True)
class Duration:
    """``amount`` hours (``unit`` ``h``, elapsed) or calendar days (``d``, local)."""

    amount: int
    unit: Literal["h", "d"]

    @property
    def text(self) -> str:
        """As written: ``72h``, ``7d``."""
        return f"{self.amount}{self.unit}"

    def add_to(self, start: datetime, zone: tzinfo) -> datetime:
        """``start`` (aware) plus this duration, in UTC.

        Hours are elapsed time; days move the wall clock in ``zone`` (the same local time
        N days later), so a DST change in between makes them 23 or 25 real hours.
        """
        if self.unit == "h":
            # In UTC: Python adds a timedelta to a zoned datetime's wall clock.
            return start.astimezone(UTC) + timedelta(hours=self.amount)
        local = start.astimezone(zone)
        naive = local.replace(tzinfo=None) + timedelta(days=self.amount)
        # A local time skipped by a spring-forward gap resolves (fold=0) forward by the gap.
        return naive.replace(tzinfo=zone).astimezone(UTC)


def parse_duration(text: str) -> Duration:
    """``72h`` or ``7d``; raises ``ValueError`` naming the accepted forms."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise ValueError(
            f"{text!r} is not a duration: write Nh (hours, e.g. 72h) or Nd (calendar days, e.g. 7d)"
        )
    amount, unit = int(found[1]), found[2]
    hours = amount * (24 if unit == "d" else 1)
    if hours > _MAX_HOURS:
        raise ValueError(f"{text!r} is too long: at most 366 days")
    return Duration(amount, "h" if unit == "h" else "d")


def _duration(text: str) -> str:
    parse_duration(text)
    return text


DurationText = Annotated[StrictStr, AfterValidator(_duration)]


class ReleasePolicy(BaseModel):
    """When released studies may go out; see the module docstring for the keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    after: DurationText | None = None
    from_: Anchor = Field(default="arrival", alias="from")
    until: Until | None = None
    max_wait: DurationText | None = None
    then: Then | None = None

    @model_validator(mode="after")
    def _coherent(self) -> ReleasePolicy:
        if self.until is None and (self.max_wait is not None or self.then is not None):
            raise ValueError("max_wait and then apply with until: report_final only")
        return self

    @property
    def embargo(self) -> Duration | None:
        """The ``after`` duration, or None when there is none (or it is ``0h``)."""
        if self.after is None:
            return None
        found = parse_duration(self.after)
        return found if found.amount else None

    @property
    def wait(self) -> Duration:
        """How long ``until`` waits at most (``max_wait``, default 7 days)."""
        return parse_duration(self.max_wait or "7d")

    @property
    def outcome(self) -> Then:
        """What happens when ``max_wait`` runs out (default ``hold_for_staff``)."""
        return self.then or "hold_for_staff"

    @property
    def holds(self) -> bool:
        """True when this policy can delay anything at all."""
        return self.embargo is not None or self.until is not None

    def describe(self) -> str:
        """One line for people: ``after 72h from arrival, until report_final (max 7d, then
        hold_for_staff)``; ``at once`` when it holds nothing."""
        parts = []
        if self.embargo is not None:
            parts.append(f"after {self.embargo.text} from {self.from_}")
        if self.until is not None:
            parts.append(f"until {self.until} (at most {self.wait.text}, then {self.outcome})")
        return ", ".join(parts) if parts else "at once"

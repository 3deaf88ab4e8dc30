"""The staff dashboard and the request list, read from the database.

Read-only; plain dataclasses out, so templates never touch a session. The dashboard
lists what needs attention now (overdue, failed, stuck in packaging, locked links,
staff alerts held or failed, the CD burn queue, requests only staff can let go: the
report did not come by max_wait, or held by staff until released) and how many requests
are in each state, and which the release policy holds (embargoed until, waiting for the
report, held by staff until: :mod:`release.embargo`). Times are the site's local time
(``delivery.timezone``) with the zone's abbreviation, as the hold's own words are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, selectinload

from delivery.discs import WHY_TEXT
from delivery.outbox import stale_links
from portal.staff_choices import LIVE
from release.embargo import describe, local_time, policy_reasons
from release.holds import (
    EMBARGO,
    EXPLAINED,
    HOLDABLE,
    MAX_WAIT,
    REPORT,
    RULE_MISSING,
    STAFF,
    held_now,
    needs_staff,
)
from store.models import (
    DiscJob,
    Grant,
    Notification,
    NotificationState,
    ReleaseRequest,
    RequestState,
)

STUCK_PACKAGING = timedelta(hours=1)
"""A request still ``packaging`` after this long needs a look (a build normally takes
seconds to minutes; a crash leaves it there until the next start-up)."""
LIST_LIMIT = 200


@dataclass(frozen=True)
class RequestLine:
    reference: str
    state: str
    patient_id: str
    patient_name: str
    urgency: str
    created_at: datetime
    updated_at: datetime
    due_by: datetime | None
    selected: int = 0
    # The release hold as the request page says it ("embargoed until ..."), "" none.
    hold: str = ""
    hold_kind: str = ""


@dataclass(frozen=True)
class HeldLine:
    """A request a hold keeps back: which kind (``embargo``, ``report``,
    ``max_wait_passed``, ``rule_missing``, ``staff``), until when (None: until staff
    release it), when the release policy last looked at it (``since``:
    ``hold_checked_at``, which the sweep rewrites at every run for a report wait, so the
    page calls it "Checked", not "held since"; and that time as staff read it: local,
    with the zone's abbreviation), and the request page's words for it (local time)."""

    reference: str
    state: str
    kind: str
    until: datetime | None
    since: datetime | None
    text: str
    since_text: str = ""


@dataclass(frozen=True)
class LockedLine:
    reference: str
    grant_id: int
    purpose: str
    locked_at: datetime


@dataclass(frozen=True)
class AlertLine:
    kind: str
    state: str
    reference: str | None
    created_at: datetime
    last_error: str


@dataclass(frozen=True)
class BurnLine:
    """A request in the CD burn queue: why, since when, whether its image is written."""

    reference: str
    state: str
    why: str
    why_text: str
    queued_at: datetime
    written_at: datetime | None


@dataclass
class Dashboard:
    counts: dict[str, int]
    overdue: list[RequestLine] = field(default_factory=list)
    failed: list[RequestLine] = field(default_factory=list)
    stuck: list[RequestLine] = field(default_factory=list)
    locked: list[LockedLine] = field(default_factory=list)
    alerts: list[AlertLine] = field(default_factory=list)
    burn: list[BurnLine] = field(default_factory=list)
    # Link emails queued longer than delivery.outbox.LINK_QUEUED_WARN, not yet accepted.
    queued_links: list[RequestLine] = field(default_factory=list)
    # The release policy's holds: "needs you" (max_wait passed and the policy holds for
    # staff, or staff held it until released) and the rest, which end by themselves.
    # Each at most LIST_LIMIT long; held_counts says how many there are.
    for_staff: list[HeldLine] = field(default_factory=list)
    embargoed: list[HeldLine] = field(default_factory=list)
    report_wait: list[HeldLine] = field(default_factory=list)
    staff_until: list[HeldLine] = field(default_factory=list)
    # How many of each (not capped at LIST_LIMIT): max_wait_passed, rule_missing,
    # staff_open (held by staff until released), embargo, report, staff_until.
    held_counts: dict[str, int] = field(default_factory=dict)

    @property
    def held(self) -> int:
        return sum(self.held_counts.values())

    @property
    def for_staff_count(self) -> int:
        """How many only a staff member can let go (``for_staff``, not capped)."""
        return sum(self.held_counts.get(k, 0) for k in (MAX_WAIT, RULE_MISSING, "staff_open"))

    @property
    def quiet(self) -> bool:
        return not (
            self.for_staff
            or self.overdue
            or self.failed
            or self.stuck
            or self.locked
            or self.alerts
            or self.burn
            or self.queued_links
        )


def line(req: ReleaseRequest, selected: int = 0, hold: str | None = None) -> RequestLine:
    return RequestLine(
        req.reference,
        str(req.state),
        req.patient_id,
        req.patient_name,
        str(req.urgency),
        req.created_at,
        req.updated_at,
        req.due_by,
        selected,
        hold or "",
        req.hold_kind if hold else "",
    )


def _held(s: Session, now: datetime, zone: tzinfo, board: Dashboard) -> None:
    """Fill ``board``'s held lists and counts: requests a hold keeps back at ``now``.

    Each list is sorted and cut in SQL (at most :data:`LIST_LIMIT`), so the longest held
    and the soonest to end are never the ones left out; the counts are not capped."""
    counts = {
        MAX_WAIT: 0,
        RULE_MISSING: 0,
        "staff_open": 0,
        EMBARGO: 0,
        REPORT: 0,
        "staff_until": 0,
    }
    for kind, open_ended, n in s.execute(
        select(ReleaseRequest.hold_kind, ReleaseRequest.hold_until.is_(None), func.count())
        .where(held_now(now))
        .group_by(ReleaseRequest.hold_kind, ReleaseRequest.hold_until.is_(None))
    ):
        if kind == STAFF:
            counts["staff_open" if open_ended else "staff_until"] += int(n)
        elif kind in counts:
            counts[kind] += int(n)
    board.held_counts = counts
    since = func.coalesce(ReleaseRequest.hold_checked_at, ReleaseRequest.updated_at)
    ends = ReleaseRequest.hold_until.asc().nulls_first()
    lists = (
        # Only staff end these: longest held first.
        (board.for_staff, needs_staff(), (since, ReleaseRequest.id)),
        # These end by themselves: soonest to end first.
        (board.embargoed, ReleaseRequest.hold_kind == EMBARGO, (ends, ReleaseRequest.reference)),
        (board.report_wait, ReleaseRequest.hold_kind == REPORT, (ends, ReleaseRequest.reference)),
        (
            board.staff_until,
            and_(ReleaseRequest.hold_kind == STAFF, ReleaseRequest.hold_until.is_not(None)),
            (ends, ReleaseRequest.reference),
        ),
    )
    for into, which, order in lists:
        rows = list(
            s.execute(
                select(ReleaseRequest, since)
                .where(held_now(now), which)
                .order_by(*order)
                .limit(LIST_LIMIT)
            )
        )
        # Why the policy holds it for staff: its line on the timeline names the max_wait
        # or the lost rule.
        why = policy_reasons(s, [req.id for req, _ in rows if req.hold_kind in EXPLAINED])
        for req, at in rows:
            into.append(
                HeldLine(
                    req.reference,
                    str(req.state),
                    req.hold_kind,
                    req.hold_until,
                    at,
                    describe(req, zone, now, why.get(req.id, "")) or req.hold_kind,
                    local_time(_aware(at), zone) if at is not None else "",
                )
            )


def _aware(at: datetime) -> datetime:
    """``at`` with its zone (SQLite hands back naive UTC from a SQL expression)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _in_state(s: Session, state: RequestState, *extra: Any) -> list[RequestLine]:
    q = (
        select(ReleaseRequest)
        .where(ReleaseRequest.state == state, *extra)
        .order_by(ReleaseRequest.updated_at, ReleaseRequest.id)
        .limit(LIST_LIMIT)
    )
    return [line(r) for r in s.scalars(q)]


def dashboard(s: Session, now: datetime, zone: tzinfo = UTC) -> Dashboard:
    """What needs attention now, how many requests are in each state, and which a
    release hold keeps back (its times in ``zone``, the site's ``delivery.timezone``)."""
    counts = {str(st): 0 for st in RequestState}
    for state, n in s.execute(
        select(ReleaseRequest.state, func.count()).group_by(ReleaseRequest.state)
    ):
        counts[str(state)] = int(n)
    board = Dashboard(counts)
    _held(s, now, zone, board)
    board.overdue = _in_state(s, RequestState.OVERDUE)
    board.failed = _in_state(s, RequestState.FAILED)
    board.stuck = _in_state(
        s, RequestState.PACKAGING, ReleaseRequest.updated_at < now - STUCK_PACKAGING
    )
    board.queued_links = _in_state(
        s, RequestState.NOTIFIED, ReleaseRequest.id.in_(stale_links(now))
    )
    for grant, reference in s.execute(
        select(Grant, ReleaseRequest.reference)
        .join(ReleaseRequest, ReleaseRequest.id == Grant.request_id)
        .where(
            Grant.locked_at.is_not(None),
            Grant.revoked_at.is_(None),
            Grant.expires_at > now,
            ReleaseRequest.state.in_(LIVE),
        )
        .order_by(Grant.locked_at)
        .limit(LIST_LIMIT)
    ):
        assert grant.locked_at is not None
        board.locked.append(LockedLine(reference, grant.id, grant.purpose, grant.locked_at))
    for job, reference, state in s.execute(
        select(DiscJob, ReleaseRequest.reference, ReleaseRequest.state)
        .join(ReleaseRequest, ReleaseRequest.id == DiscJob.request_id)
        .where(DiscJob.burned_at.is_(None), DiscJob.cancelled_at.is_(None))
        .order_by(DiscJob.queued_at, DiscJob.id)
        .limit(LIST_LIMIT)
    ):
        board.burn.append(
            BurnLine(
                reference,
                str(state),
                job.why,
                WHY_TEXT.get(job.why, job.why),
                job.queued_at,
                job.written_at,
            )
        )
    held = (NotificationState.HELD, NotificationState.FAILED)
    for row in s.scalars(
        select(Notification)
        .where(Notification.kind.startswith("alert_"), Notification.state.in_(held))
        .order_by(Notification.created_at.desc(), Notification.id.desc())
        .limit(LIST_LIMIT)
    ):
        params = json.loads(row.params or "{}")
        board.alerts.append(
            AlertLine(
                str(params.get("alert") or row.kind.removeprefix("alert_")),
                str(row.state),
                params.get("reference"),
                row.created_at,
                row.last_error,
            )
        )
    return board


def request_lines(
    s: Session,
    state: RequestState | None,
    *,
    now: datetime,
    hold: str = "",
    zone: tzinfo = UTC,
) -> list[RequestLine]:
    """Requests, newest first (at most :data:`LIST_LIMIT`), optionally in ``state`` and
    held (``hold``: ``held`` any hold, or ``embargo``, ``report``, ``max_wait_passed``,
    ``rule_missing``, ``staff``: :func:`release.holds.held_now`). Each line says its
    hold at ``now`` in ``zone``."""
    q = (
        select(ReleaseRequest)
        .order_by(ReleaseRequest.created_at.desc(), ReleaseRequest.id.desc())
        .options(selectinload(ReleaseRequest.selections))
    )
    if state is not None:
        q = q.where(ReleaseRequest.state == state)
    if hold:
        q = q.where(held_now(now, hold))
    rows = list(s.scalars(q.limit(LIST_LIMIT)))
    why = policy_reasons(s, [r.id for r in rows if r.hold_kind in EXPLAINED])
    return [line(r, len(r.selections), _hold_text(r, now, zone, why)) for r in rows]


def _hold_text(req: ReleaseRequest, now: datetime, zone: tzinfo, why: dict[int, str]) -> str | None:
    """The hold's words for a request not yet packaged (None: nothing holds it); ``why``:
    the policy's lines of the ``max_wait_passed`` and ``rule_missing`` ones
    (:func:`policy_reasons`)."""
    if not req.hold_kind or RequestState(req.state) not in HOLDABLE:
        return None
    return describe(req, zone, now, why.get(req.id, ""))

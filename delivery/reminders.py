"""One reminder before a link expires, to whoever has not downloaded anything with it.

Emailed links that are never used are the most common way a delivery fails: the
patient (or the clinician they shared with) meant to, and forgot. So a link with no
completed download ``delivery.reminder_days_before`` days before it expires (a
clinician's share: ``delivery.share_reminder_days_before``) gets one reminder email in
its recipient's language, carrying the same link (derived again at send time, as the
link email's is: :mod:`delivery.compose`).

Who is reminded (:func:`due` reads the candidates, :func:`remind` claims each):

- a patient's link: its request still ``notified`` (nothing downloaded yet), the link
  neither revoked nor locked, its package not deleted;
- a clinician's share: the same, its request ``notified`` or ``downloaded`` (the
  patient's download says nothing of the clinician's), the patient's link neither
  revoked nor locked (:mod:`release.links`: a share of a locked link is not live);
- only a link that lived longer than the reminder window: a link made 2 days before it
  expires is not "reminded" the moment it is sent.

Once only, whatever the number of nodes and restarts: the claim is a conditional UPDATE
``SET reminded_at = now WHERE reminded_at IS NULL`` (row count 1: this worker won) in
the same transaction as the outbox row and the timeline event, so the reminder exists
if and only if the claim committed; PostgreSQL's row lock (or SQLite's write lock)
makes a second worker's UPDATE see the first one's commit and match nothing. The relay
then sends it like any other email; if the link was used, stopped or extended past the
window by then, the composer drops it (``superseded``) instead of sending stale news.

The outbox row carries no request id: a bounced reminder must not fail a request whose
link email was delivered (the timeline shows the reminder as queued).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Integer, Interval, cast, func, literal, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from delivery.outbox import Outbox
from delivery.settings import DeliverySettings
from release.links import link_live, request_state
from store.catalog import guarded
from store.models import Grant, Package, ReleaseRequest, RequestEvent, RequestState, utcnow

log = logging.getLogger("courier.delivery.reminders")

ACTOR = "delivery"
KIND = "reminder_email"
#: Candidates read per pass (the rest wait for the next pass, minutes later).
BATCH = 500

_PATIENT_STATES = (RequestState.NOTIFIED,)
_SHARE_STATES = (RequestState.NOTIFIED, RequestState.DOWNLOADED)


@dataclass(frozen=True)
class Candidate:
    grant_id: int
    request_id: int
    purpose: str
    created_at: datetime
    expires_at: datetime


def window(settings: DeliverySettings, purpose: str) -> timedelta | None:
    """How long before expiry a link of ``purpose`` is reminded (None: never)."""
    days = (
        settings.share_reminder_days_before
        if purpose == "forward"
        else settings.reminder_days_before
    )
    return timedelta(days=days) if days > 0 else None


def due(s: Session, settings: DeliverySettings, now: datetime) -> list[Candidate]:
    """The links a reminder is due for now (see the module), at most :data:`BATCH`."""
    out: list[Candidate] = []
    for purpose, states in (("patient", _PATIENT_STATES), ("forward", _SHARE_STATES)):
        ahead = window(settings, purpose)
        if ahead is None:
            continue
        rows = s.execute(
            select(Grant.id, Grant.request_id, Grant.created_at, Grant.expires_at)
            .join(ReleaseRequest, ReleaseRequest.id == Grant.request_id)
            .join(Package, Package.id == Grant.package_id)
            .where(
                Grant.purpose == purpose,
                Grant.reminded_at.is_(None),
                Grant.revoked_at.is_(None),
                Grant.locked_at.is_(None),
                Grant.downloads == 0,
                Grant.expires_at > now,
                Grant.expires_at <= now + ahead,
                _lived_longer_than(s, ahead),  # in SQL: skipped rows never fill the batch
                Package.deleted_at.is_(None),
                ReleaseRequest.state.in_(list(states)),
                ~_parent_stopped(),
            )
            .order_by(Grant.expires_at, Grant.id)
            .limit(BATCH)
        )
        out.extend(Candidate(gid, rid, purpose, c, e) for gid, rid, c, e in rows)
    return out


_PARENT = aliased(Grant)


def _parent_stopped() -> ColumnElement[bool]:
    """The grant is a share whose patient's link is revoked or locked (not live:
    :mod:`release.links`)."""
    return (
        select(_PARENT.id)
        .where(
            _PARENT.id == Grant.parent_grant_id,
            or_(_PARENT.revoked_at.is_not(None), _PARENT.locked_at.is_not(None)),
        )
        .exists()
    )


def _lived_longer_than(s: Session, ahead: timedelta) -> ColumnElement[bool]:
    """``expires_at - created_at > ahead``: the link was sent before its reminder window
    opened (one sent inside it is recent news, not reminded). SQLite keeps datetimes as
    text, so it compares whole epoch seconds (at most a second off at the boundary);
    PostgreSQL subtracts timestamps into an interval."""
    if s.get_bind().dialect.name == "sqlite":
        created = cast(func.strftime("%s", Grant.created_at), Integer)
        expires = cast(func.strftime("%s", Grant.expires_at), Integer)
        return expires - created > int(ahead.total_seconds())
    return Grant.expires_at - Grant.created_at > literal(ahead, Interval())


def remind(s: Session, outbox: Outbox, candidate: Candidate, now: datetime) -> bool:
    """Claim ``candidate`` and queue its reminder, in ``s``'s transaction (the caller
    commits). False when nothing was queued: another worker (or an earlier pass)
    claimed it, or the link was used or stopped since it was read."""
    won = s.execute(  # type: ignore[attr-defined]
        update(Grant)
        .where(
            Grant.id == candidate.grant_id,
            Grant.reminded_at.is_(None),
            Grant.revoked_at.is_(None),
            Grant.locked_at.is_(None),
            Grant.downloads == 0,
            ~_parent_stopped(),  # not claimed: a share is reminded once its parent unlocks
        )
        .values(reminded_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not won:
        return False
    grant = s.get(Grant, candidate.grant_id)
    assert grant is not None
    if grant.parent_grant_id is not None:
        parent = s.get(Grant, grant.parent_grant_id)
        if parent is None or parent.revoked_at is not None or parent.locked_at is not None:
            # Stopped or locked after the claim's check (a race): claimed, nothing sent.
            return False
    outbox.enqueue(
        s,
        kind=KIND,
        channel="email",
        recipient=grant.recipient_email,
        language=grant.language,
        params={"expires_at": grant.expires_at.isoformat()},
        grant_id=grant.id,
    )
    state = s.scalar(select(ReleaseRequest.state).where(ReleaseRequest.id == grant.request_id))
    who = "the clinician's shared link" if grant.purpose == "forward" else "the patient's link"
    s.add(
        RequestEvent(
            request_id=grant.request_id,
            at=now,
            actor=ACTOR,
            from_state=state or "",
            to_state=state or "",
            reason=(
                f"reminder queued: nothing downloaded with {who} #{grant.id}, which "
                f"expires {grant.expires_at:%Y-%m-%d %H:%M} UTC"
            ),
        )
    )
    return True


def still_due(s: Session, grant: Grant, queued_expiry: datetime | None, now: datetime) -> bool:
    """Whether the reminder queued for ``grant`` (when it expired at ``queued_expiry``)
    should still be sent at ``now``: nothing downloaded, not extended since, the link
    still live (:func:`release.links.link_live`) and its request in a reminded state."""
    if grant.downloads > 0:
        return False
    if queued_expiry is not None and grant.expires_at > queued_expiry:
        return False  # extended since: no longer about to expire
    states = _SHARE_STATES if grant.purpose == "forward" else _PATIENT_STATES
    return link_live(s, grant, now) and request_state(s, grant) in states


def send_reminders(
    sessions: sessionmaker[Session],
    outbox: Outbox,
    settings: DeliverySettings,
    clock: Callable[[], datetime] = utcnow,
) -> int:
    """The reminder job: queue every reminder due now, one transaction per link.
    Returns how many were queued. Safe to run on every node at once, and again after
    a crash (see the module)."""
    now = clock()
    with guarded(sessions) as s:
        candidates = due(s, settings, now)
    queued = 0
    for candidate in candidates:
        with guarded(sessions) as s, s.begin():
            if remind(s, outbox, candidate, now):
                queued += 1
    if queued:
        log.info("queued %d reminder(s) for links expiring soon", queued)
    return queued


__all__ = [
    "KIND",
    "Candidate",
    "due",
    "remind",
    "send_reminders",
    "still_due",
    "window",
]

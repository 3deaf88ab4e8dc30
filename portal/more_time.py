"""What "Ask for more time" does to a patient's link: extend it once, or tell staff.

Policy (:class:`MoreTime`: ``delivery.patient_extend_days``, default 14, 0 = patients
never extend; ``portal.reopen_expired_days``, default 7; ``delivery.purge_grace_days``):

- a patient's own link (never a clinician's share), not revoked or locked, whose
  request is still in use (``notified`` or ``downloaded``) and whose package is not
  deleted, that the patient has not extended before, gets ``patient_extend_days`` more
  days, from its expiry or from now if it already ran out (at most 365 days from now, as
  staff's own extension). The shares made from it keep their own expiry.
- the same link once its request has **expired** (the housekeeping sweep moves a request
  whose every link ran out to ``expired``, usually within minutes, so an expired link's
  page almost always finds it so): within ``reopen_expired_days`` of the link's expiry
  it is **reopened** once, the one extension: the request goes back to the state it
  expired from (``notified`` or ``downloaded``: :data:`release.states.REOPEN`, the only
  way out of a final state), the link works ``patient_extend_days`` days from now, and
  the move is on the timeline and in the audit trail (``link-reopened``). Not when the
  request expired from elsewhere (an overdue request given up), its package's files are
  deleted or due for deletion within :data:`PURGE_MARGIN` (the purge runs
  ``purge_grace_days`` after the request's last link expired, and must never delete
  files a reopened link points at), its received studies are purged, being purged or
  due within that margin (``store.retention_days`` after the request ended, which may
  come first), or a CD is queued for it (staff chose the disc; they decide). A
  cancelled request is never reopened.
- anything else (the second ask, too late, extension turned off) queues a ``more_time``
  staff alert, at most one per link a day (``grants.extension_asked_at``), and the
  patient is told that the hospital will contact them (or send a new link). The
  timeline says why.

Every ask is on the request's timeline (the actor is the grant, never an address), and
the caller holds the grant's row lock (:func:`portal.grantsession.lock_grant`), so two
presses at once extend once. The routes (:mod:`portal.extend`) also rate-limit per
client address. Every time comes from the caller's clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from delivery.outbox import Outbox
from portal.grantsession import actor, audit
from release.errors import InvalidTransition
from release.purge import purge_due
from release.requests import RequestBook, study_uids
from release.states import REOPEN
from store.audit import record
from store.models import (
    DiscJob,
    Grant,
    Package,
    ReleaseRequest,
    RequestEvent,
    RequestState,
    RequestStudy,
    Study,
    StudyState,
)

#: Staff are alerted at most once a day per link, however often the patient asks.
ALERT_EVERY = timedelta(days=1)
#: The latest a link can be extended to (the staff page's limit too).
MAX_DAYS_AHEAD = 365
#: An expired link is not reopened within this long of its package's purge.
PURGE_MARGIN = timedelta(hours=1)
_IN_USE = (RequestState.NOTIFIED, RequestState.DOWNLOADED)


@dataclass(frozen=True)
class MoreTime:
    """The settings "Ask for more time" follows (see the module): ``days``
    (``delivery.patient_extend_days``), ``reopen_days`` (``portal.reopen_expired_days``),
    ``purge_grace_days`` (``delivery.purge_grace_days``), ``retention_days``
    (``store.retention_days``; None: the received studies' purge is not counted)."""

    days: int
    reopen_days: int = 0
    purge_grace_days: int = 0
    retention_days: int | None = None


@dataclass(frozen=True)
class Answer:
    """``extended`` (until ``until``) or ``asked`` (staff were told, now or earlier)."""

    outcome: str
    until: datetime | None = None


def may_extend(s: Session, grant: Grant, days: int) -> bool:
    """Whether the patient can extend ``grant`` themselves now, its request still in
    use (see the module)."""
    if days <= 0 or grant.purpose == "forward" or grant.extended_at is not None:
        return False
    if grant.revoked_at is not None or grant.locked_at is not None:
        return False
    state = s.scalar(select(ReleaseRequest.state).where(ReleaseRequest.id == grant.request_id))
    if state not in _IN_USE:
        return False
    deleted = s.scalar(select(Package.deleted_at).where(Package.id == grant.package_id))
    return grant.package_id is not None and deleted is None


def reopening(
    s: Session, grant: Grant, rules: MoreTime, now: datetime
) -> tuple[RequestState | None, str]:
    """Whether ``grant``'s expired request may be reopened now: the state it goes back
    to, or None and why not (a line for the timeline; "" when the request is not
    expired at all). See the module."""
    req = s.get(ReleaseRequest, grant.request_id)
    if req is None or req.state != RequestState.EXPIRED:
        return None, ""
    if rules.days <= 0 or grant.purpose == "forward" or grant.extended_at is not None:
        return None, ""  # the reasons ask() names
    if grant.revoked_at is not None or grant.locked_at is not None:
        return None, "the link was stopped"
    if rules.reopen_days <= 0:
        return None, "expired links are not reopened (portal.reopen_expired_days is 0)"
    if now >= grant.expires_at + timedelta(days=rules.reopen_days):
        return None, f"the link expired more than {rules.reopen_days} days ago"
    # Its last real move into expired: an earlier refused ask is a note there too
    # (expired both sides), and would read as "expired from expired".
    came_from = s.scalar(
        select(RequestEvent.from_state)
        .where(
            RequestEvent.request_id == req.id,
            RequestEvent.to_state == RequestState.EXPIRED,
            RequestEvent.from_state != RequestState.EXPIRED,
        )
        .order_by(RequestEvent.id.desc())
        .limit(1)
    )
    back = RequestState(came_from) if came_from in set(REOPEN[RequestState.EXPIRED]) else None
    if back is None:
        return None, "the request expired before its link was in use"
    deleted = s.scalar(select(Package.deleted_at).where(Package.id == grant.package_id))
    if grant.package_id is None or deleted is not None:
        return None, "the package's files were deleted"
    # The purge counts from the request's last link to expire (delivery.batch).
    last = s.scalar(select(func.max(Grant.expires_at)).where(Grant.request_id == req.id))
    assert last is not None
    if now >= last + timedelta(days=rules.purge_grace_days) - PURGE_MARGIN:
        return None, "the package's files are due for deletion (delivery.purge_grace_days)"
    why = _images_gone(s, req.id, rules, now)
    if why:
        return None, why
    disc = s.scalar(
        select(DiscJob.id).where(
            DiscJob.request_id == req.id,
            DiscJob.burned_at.is_(None),
            DiscJob.cancelled_at.is_(None),
        )
    )
    if disc is not None:
        return None, "a CD is queued for this request"
    return back, ""


def ask(
    s: Session, outbox: Outbox, book: RequestBook, grant: Grant, rules: MoreTime, now: datetime
) -> Answer:
    """The patient pressed "Ask for more time" on ``grant`` (locked by the caller, who
    commits): extend it, reopen its expired request, or alert staff (see the module)."""
    days = rules.days
    if may_extend(s, grant, days):
        until = _extend(grant, days, now)
        audit(
            s,
            grant,
            f"the patient extended their link by {days} days, to {until:%Y-%m-%d %H:%M} UTC",
            now,
        )
        return Answer("extended", until)
    back, why_not = reopening(s, grant, rules, now)
    if back is not None:
        return Answer("extended", _reopen(s, book, grant, back, rules, now))
    asked = grant.extension_asked_at
    if asked is not None and now - asked < ALERT_EVERY:
        audit(s, grant, "the patient asked for more time again (staff were alerted today)", now)
        return Answer("asked")
    grant.extension_asked_at = now
    reference = s.scalar(
        select(ReleaseRequest.reference).where(ReleaseRequest.id == grant.request_id)
    )
    outbox.alert(s, "more_time", reference=reference, request_id=grant.request_id)
    why = (
        "already extended once"
        if grant.extended_at is not None
        else "patients cannot extend links (delivery.patient_extend_days is 0)"
        if days <= 0
        else why_not or "the link can no longer be extended"
    )
    audit(s, grant, f"the patient asked for more time ({why}): staff alerted", now)
    return Answer("asked")


def _extend(grant: Grant, days: int, now: datetime) -> datetime:
    until = min(
        max(grant.expires_at, now) + timedelta(days=days),
        now + timedelta(days=MAX_DAYS_AHEAD),
    )
    grant.expires_at = until
    grant.extended_at = now
    return until


def _reopen(
    s: Session,
    book: RequestBook,
    grant: Grant,
    back: RequestState,
    rules: MoreTime,
    now: datetime,
) -> datetime:
    """Move the expired request back to ``back`` and extend the link (the one
    extension), on the timeline and audited, in ``s``; returns the link's new expiry."""
    req = s.get(ReleaseRequest, grant.request_id)
    assert req is not None
    late = now - grant.expires_at
    until = _extend(grant, rules.days, now)
    what = (
        f"the patient asked for more time {_span(late)} after their link expired: request "
        f"reopened, link extended by {rules.days} days, to {until:%Y-%m-%d %H:%M} UTC "
        f"(portal.reopen_expired_days {rules.reopen_days})"
    )
    # Raises InvalidTransition if anyone moved it meanwhile: the caller's transaction
    # then rolls back whole.
    book.move(s, req, RequestState.EXPIRED, back, actor(grant), what, now)
    # Again now the move holds the request's row: a purge of its studies claimed since
    # reopening() read them has committed (release.purge locks the studies' requests
    # before its claim), and one not claimed yet no longer will be (the request is in use).
    if _deleting(s, req.id):
        raise InvalidTransition(
            f"request {req.reference}: its images were being deleted as the patient asked "
            "for more time; nothing was changed, the patient may ask again (staff are "
            "then alerted)"
        )
    record(
        s,
        "link-reopened",
        actor=actor(grant),
        studies=study_uids(s, req.id),
        request=req.reference,
        detail=what,
        at=now,
    )
    return until


def _deleting(s: Session, request_id: int) -> bool:
    """Whether a study of the request is being, or was, purged (:mod:`release.purge`)."""
    found = s.scalar(
        select(Study.id)
        .join(RequestStudy, RequestStudy.study_id == Study.id)
        .where(
            RequestStudy.request_id == request_id,
            Study.state.in_([StudyState.PURGING, StudyState.PURGED]),
        )
        .limit(1)
    )
    return found is not None


def _images_gone(s: Session, request_id: int, rules: MoreTime, now: datetime) -> str:
    """Why the request's received studies rule a reopen out ("" when they do not): one
    is purged or being purged, or its purge (``store.retention_days`` after the request
    ended, which may come before ``reopen_expired_days`` ran out) is within
    :data:`PURGE_MARGIN`."""
    if _deleting(s, request_id):
        return "the request's images were deleted from the node (store.retention_days)"
    if rules.retention_days is None:
        return ""
    due = purge_due(s, request_id, rules.retention_days)
    if due is not None and now >= due - PURGE_MARGIN:
        return "the request's images are due for deletion (store.retention_days)"
    return ""


def _span(delta: timedelta) -> str:
    """``3 days`` / ``5 hours`` / ``12 minutes``: how late, roughly (no seconds)."""
    if delta >= timedelta(days=1):
        return f"{delta.days} day(s)"
    if delta >= timedelta(hours=1):
        return f"{delta.seconds // 3600} hour(s)"
    return f"{max(delta.seconds // 60, 0)} minute(s)"


__all__ = ["ALERT_EVERY", "PURGE_MARGIN", "Answer", "MoreTime", "ask", "may_extend", "reopening"]

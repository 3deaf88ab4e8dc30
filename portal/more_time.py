"""What "Ask for more time" does to a patient's link: extend it once, or tell staff.

Policy (``delivery.patient_extend_days``, default 14; 0 = patients never extend):

- a patient's own link (never a clinician's share), not revoked or locked, whose
  request is still in use (``notified`` or ``downloaded``: an ``expired`` request stays
  expired, its package is on its way to the purge) and whose package is not deleted,
  that the patient has not extended before, gets ``patient_extend_days`` more days,
  from its expiry or from now if it already ran out (at most 365 days from now, as
  staff's own extension). The shares made from it keep their own expiry.
- anything else (the second ask, a link of an expired request, extension turned off)
  queues a ``more_time`` staff alert, at most one per link a day
  (``grants.extension_asked_at``), and the patient is told that the hospital will
  contact them (or send a new link).

Every ask is on the request's timeline (the actor is the grant, never an address), and
the caller holds the grant's row lock (:func:`portal.grantsession.lock_grant`), so two
presses at once extend once. The routes (:mod:`portal.extend`) also rate-limit per
client address.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from delivery.outbox import Outbox
from portal.grantsession import audit
from store.models import Grant, Package, ReleaseRequest, RequestState

#: Staff are alerted at most once a day per link, however often the patient asks.
ALERT_EVERY = timedelta(days=1)
#: The latest a link can be extended to (the staff page's limit too).
MAX_DAYS_AHEAD = 365
_IN_USE = (RequestState.NOTIFIED, RequestState.DOWNLOADED)


@dataclass(frozen=True)
class Answer:
    """``extended`` (until ``until``) or ``asked`` (staff were told, now or earlier)."""

    outcome: str
    until: datetime | None = None


def may_extend(s: Session, grant: Grant, days: int) -> bool:
    """Whether the patient can extend ``grant`` themselves now (see the module)."""
    if days <= 0 or grant.purpose == "forward" or grant.extended_at is not None:
        return False
    if grant.revoked_at is not None or grant.locked_at is not None:
        return False
    state = s.scalar(select(ReleaseRequest.state).where(ReleaseRequest.id == grant.request_id))
    if state not in _IN_USE:
        return False
    deleted = s.scalar(select(Package.deleted_at).where(Package.id == grant.package_id))
    return grant.package_id is not None and deleted is None


def ask(s: Session, outbox: Outbox, grant: Grant, days: int, now: datetime) -> Answer:
    """The patient pressed "Ask for more time" on ``grant`` (locked by the caller, who
    commits): extend it, or alert staff (see the module)."""
    if may_extend(s, grant, days):
        until = min(
            max(grant.expires_at, now) + timedelta(days=days),
            now + timedelta(days=MAX_DAYS_AHEAD),
        )
        grant.expires_at = until
        grant.extended_at = now
        audit(
            s,
            grant,
            f"the patient extended their link by {days} days, to {until:%Y-%m-%d %H:%M} UTC",
            now,
        )
        return Answer("extended", until)
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
        else "the link can no longer be extended"
    )
    audit(s, grant, f"the patient asked for more time ({why}): staff alerted", now)
    return Answer("asked")


__all__ = ["ALERT_EVERY", "Answer", "ask", "may_extend"]

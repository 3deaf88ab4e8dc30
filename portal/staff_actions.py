"""What staff can do to a request, as POST forms on its page (``/staff/requests/{ref}/…``).

Each action is one transaction holding its change, any outbox row it causes, and the
:class:`~store.models.RequestEvent` that records it with ``staff:<username>`` as the
actor (through :meth:`RequestBook.move`, whose conditional UPDATE refuses if someone
moved the request meanwhile). Refusals re-render the page with the reason (409);
success redirects back (303) with a fixed "done" note.

- ``resend``: the link email again, for the newest active patient link (the same
  checks as :meth:`RequestBook.resend`, and the same
  :func:`delivery.outbox.queue_link_again` as the CLI and the API; the email is queued
  in the same transaction as the event, so the resend is not only recorded but sent).
- ``revoke``: the chosen link and the links forwarded from it stop working at once
  (their portal sessions end too).
- ``extend``: the chosen link lives ``days`` more (from its expiry, or from now if it
  already ran out), at most 365 days from now.
- ``reissue`` (a link locked after repeated wrong codes): the locked link is revoked and
  a *new* link made, with the same expiry, and its email queued, as the delivery batch
  does. Clearing the lock instead would re-open a link that someone may be guessing
  codes on; a new token makes the old one worthless. Patient links only (a clinician's
  link is the patient's to share again). A corrected-report email the locked link did
  not get is queued again for the new link, once
  (:func:`delivery.report_reissue.queue_again`). Two staff members (or two nodes on one
  PostgreSQL database) re-issuing the same link at once make one new link: the revoke is
  a conditional UPDATE (still locked, not revoked) and only the transaction whose UPDATE
  changed the row goes on; the other waits for its row lock, matches nothing and is
  refused with :data:`ALREADY_REISSUED`, having queued nothing.
- ``cd``: puts the request in the CD burn queue (a ``staff`` job of
  :mod:`delivery.discs`) with a ``marked for CD`` note; refused while it has an open job.
  Writing the image, marking it burned and cancelling it are :mod:`portal.staff_discs`.
- ``cancel``: ``→ cancelled`` with the reason given; live links are revoked with it, and
  an open CD job is cancelled (its image deleted).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from delivery.discs import DiscRefused, open_job
from delivery.grants import new_grant
from delivery.outbox import queue_link_again
from delivery.report_reissue import queue_again
from portal.context import PortalContext
from portal.forms import Form
from portal.site import context_of
from portal.staff_auth import CheckedForm, SignedIn, Staff
from portal.staff_choices import LIVE
from portal.staff_discs import disc_queue
from portal.staff_requests import detail_page
from portal.staff_story import CD_MARK, grant_state
from release.errors import InvalidTransition, RequestNotFound
from release.states import RESENDABLE, allowed
from store.catalog import guarded
from store.models import DiscWhy, Grant, Package, PortalSession, ReleaseRequest, RequestState

log = logging.getLogger("courier.portal.staff")
router = APIRouter(prefix="/staff")
MAX_EXTEND_DAYS = 365
MAX_REASON = 2000
ALREADY_REISSUED = (
    "This link was already re-issued (or revoked) by someone else; nothing was sent twice. "
    "Look at the links again."
)


class Refused(Exception):
    """The action cannot be done now; the message says why (shown to staff)."""


Action = Callable[[Session, PortalContext, ReleaseRequest, Form, datetime], str]


def _grant(s: Session, req: ReleaseRequest, form: Form) -> Grant:
    raw = form.get("grant").strip()
    grant = s.get(Grant, int(raw)) if raw.isascii() and raw.isdigit() and len(raw) < 10 else None
    if grant is None or grant.request_id != req.id:
        raise Refused("Choose one of this request's links.")
    return grant


def _revoke_tree(s: Session, root: Grant, now: datetime) -> int:
    """Revoke ``root`` and every link forwarded from it; end their sessions. Returns
    how many links were revoked."""
    ids, frontier = [root.id], [root.id]
    while frontier:
        frontier = list(s.scalars(select(Grant.id).where(Grant.parent_grant_id.in_(frontier))))
        ids += frontier
    n = 0
    for g in s.scalars(select(Grant).where(Grant.id.in_(ids), Grant.revoked_at.is_(None))):
        g.revoked_at = now
        n += 1
    s.execute(
        update(PortalSession)
        .where(PortalSession.grant_id.in_(ids), PortalSession.ended_at.is_(None))
        .values(ended_at=now)
    )
    return n


def resend(s: Session, ctx: PortalContext, req: ReleaseRequest, form: Form, now: datetime) -> str:
    if RequestState(req.state) not in RESENDABLE:
        raise Refused("No link has been sent yet; it goes out when the studies are ready.")
    try:
        grant = queue_link_again(s, ctx.outbox, req, now)
    except InvalidTransition as exc:
        raise Refused("The patient's link is not active; extend or re-issue it instead.") from exc
    return f"link email resent (link #{grant.id})"


def revoke(s: Session, ctx: PortalContext, req: ReleaseRequest, form: Form, now: datetime) -> str:
    grant = _grant(s, req, form)
    if grant.revoked_at is not None:
        raise Refused("This link was already revoked.")
    n = _revoke_tree(s, grant, now)
    more = f" and {n - 1} link(s) forwarded from it" if n > 1 else ""
    return f"link #{grant.id}{more} revoked"


def extend(s: Session, ctx: PortalContext, req: ReleaseRequest, form: Form, now: datetime) -> str:
    raw = form.get("days").strip()
    days = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 3 else 0
    if not 1 <= days <= MAX_EXTEND_DAYS:
        raise Refused(f"Give a number of days from 1 to {MAX_EXTEND_DAYS}.")
    grant = _grant(s, req, form)
    if RequestState(req.state) not in LIVE or grant.revoked_at is not None:
        raise Refused(
            "Only a link in use can be extended (not a revoked one, nor one whose "
            "request is no longer notified or downloaded)."
        )
    if s.scalar(select(Package.deleted_at).where(Package.id == grant.package_id)) is not None:
        raise Refused("The package of this link was deleted; create a new request.")
    until = min(
        max(grant.expires_at, now) + timedelta(days=days), now + timedelta(days=MAX_EXTEND_DAYS)
    )
    grant.expires_at = until
    return f"link #{grant.id} extended by {days} days, to {until:%Y-%m-%d %H:%M} UTC"


def reissue(s: Session, ctx: PortalContext, req: ReleaseRequest, form: Form, now: datetime) -> str:
    old = _grant(s, req, form)
    if old.purpose == "patient" and old.locked_at is not None and old.revoked_at is not None:
        raise Refused(ALREADY_REISSUED)
    if grant_state(old, now) != "locked" or old.purpose != "patient":
        raise Refused("Only a locked patient link (not revoked, not expired) is re-issued.")
    if RequestState(req.state) not in LIVE:
        raise Refused("This request's links are no longer in use.")
    # The check above read the row without a lock: a concurrent re-issue may have
    # revoked it since. Row count 1: this transaction won and issues the new link; 0:
    # the other one did (we waited for its row lock, then matched nothing), so nothing
    # is queued here and the transaction rolls back.
    won = s.execute(  # type: ignore[attr-defined]
        update(Grant)
        .where(Grant.id == old.id, Grant.locked_at.is_not(None), Grant.revoked_at.is_(None))
        .values(revoked_at=now)
    ).rowcount
    if won != 1:
        raise Refused(ALREADY_REISSUED)
    _revoke_tree(s, old, now)  # the links forwarded from it, and every session
    fresh = new_grant(s, ctx.keys, req, package_id=old.package_id, link_days=1, now=now)
    fresh.expires_at = old.expires_at
    _link_email(s, ctx, req, fresh)
    again = queue_again(s, old.id, fresh.id, now)
    more = "; the corrected-report email the locked link missed is queued again" if again else ""
    return (
        f"link #{old.id} was locked after repeated wrong codes: revoked and re-issued as "
        f"link #{fresh.id}; new link email queued{more}"
    )


def mark_cd(
    s: Session, ctx: PortalContext, req: ReleaseRequest, staff: Staff, now: datetime
) -> str:
    """A ``staff`` job in the burn queue; the caller records :data:`CD_MARK` as its note."""
    try:
        disc_queue(ctx).queue(s, req, DiscWhy.STAFF, staff.actor, now, note=False)
    except DiscRefused as exc:
        raise Refused(str(exc)) from exc
    return CD_MARK


def _link_email(s: Session, ctx: PortalContext, req: ReleaseRequest, grant: Grant) -> None:
    ctx.outbox.enqueue(
        s,
        kind="link_email",
        channel="email",
        recipient=grant.recipient_email,
        language=grant.language,
        request_id=req.id,
        grant_id=grant.id,
    )


ACTIONS: dict[str, Action] = {
    "resend": resend,
    "revoke": revoke,
    "extend": extend,
    "reissue": reissue,
}


def _run(ctx: PortalContext, ref: str, name: str, form: Form, staff: Staff) -> str:
    """Do action ``name`` on request ``ref``; returns its reference. Raises Refused,
    RequestNotFound."""
    found = ctx.book.get(ref)
    now = ctx.clock()
    try:
        return _run_in(ctx, found.id, name, form, staff, now)
    except IntegrityError as exc:  # the burn queue's one-open-job index: a race lost
        raise Refused("Someone changed this request meanwhile; look at it again.") from exc


def _run_in(
    ctx: PortalContext, request_id: int, name: str, form: Form, staff: Staff, now: datetime
) -> str:
    image = None
    with guarded(ctx.sessions) as s, s.begin():
        req = s.get(ReleaseRequest, request_id)
        assert req is not None
        state = RequestState(req.state)
        if name == "cancel":
            if not allowed(state, RequestState.CANCELLED):
                raise Refused(f"A request that is {state} cannot be cancelled.")
            if open_job(s, req.id) is not None:  # its studies are not to be released
                image = disc_queue(ctx).cancel(s, req, staff.actor, now)
            reason = " ".join(form.get("reason").split())[:MAX_REASON] or "cancelled by staff"
            for g in s.scalars(
                select(Grant).where(Grant.request_id == req.id, Grant.parent_grant_id.is_(None))
            ):
                if g.revoked_at is None:
                    _revoke_tree(s, g, now)
            target, why = RequestState.CANCELLED, reason
        elif name == "cd":
            target, why = state, mark_cd(s, ctx, req, staff, now)
        else:
            target, why = state, ACTIONS[name](s, ctx, req, form, now)
        try:
            ctx.book.move(s, req, state, target, staff.actor, why, now)
        except InvalidTransition as exc:
            raise Refused("Someone changed this request meanwhile; look at it again.") from exc
    disc_queue(ctx).delete_image(image)
    log.info("staff %s: %s on request %s", staff.username, name, req.reference)
    return req.reference


def _action(name: str) -> Callable[..., Response]:
    def handler(ref: str, form: CheckedForm, request: Request, staff: SignedIn) -> Response:
        ctx = context_of(request)
        try:
            reference = _run(ctx, ref[:64], name, form, staff)
        except RequestNotFound:
            return detail_page(request, ctx, staff, ref[:64])
        except Refused as exc:
            return detail_page(request, ctx, staff, ref[:64], error=str(exc), status=409)
        return RedirectResponse(f"/staff/requests/{reference}?done={name}", 303)

    handler.__name__ = f"staff_{name}"
    handler.__doc__ = f"The {name} action (see the module docstring)."
    return handler


for _name in (*ACTIONS, "cd", "cancel"):
    router.add_api_route(f"/requests/{{ref}}/{_name}", _action(_name), methods=["POST"])

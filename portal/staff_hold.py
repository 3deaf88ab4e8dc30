"""Staff and a request's release hold: release it now, or hold it longer (POST forms).

The hold itself (an embargo, the wait for the final report, a staff hold) is the
release policy's (:mod:`release.embargo`); the request page shows it
(:func:`release.embargo.describe`) with these two forms while it is not yet packaged:

- ``release-now``: whatever holds it (urgent or not), with a reason (required);
- ``hold``: until a local date and time in ``delivery.timezone`` (or, left empty, until
  a staff member releases it), with a reason (required).

Both are a line on the request's timeline naming the staff member and an audit event
(``release-hold``). Refusals re-render the page with the reason (409 or 422); success
redirects back (303) with a fixed note.
"""

from __future__ import annotations

import logging
from datetime import datetime
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from portal.context import PortalContext
from portal.site import context_of
from portal.staff_auth import CheckedForm, SignedIn
from portal.staff_requests import detail_page
from release.embargo import ReleaseKeeper
from release.errors import InvalidRequest, InvalidTransition, RequestNotFound

log = logging.getLogger("courier.portal.staff")
router = APIRouter(prefix="/staff")


def keeper(ctx: PortalContext) -> ReleaseKeeper:
    """The release policy's staff side, on the portal's sessions and clock."""
    return ReleaseKeeper(
        ctx.sessions, ctx.book, rules=lambda: None, zone=ctx.delivery.timezone, clock=ctx.clock
    )


def _until(text: str, zone: str) -> datetime | None:
    """A ``datetime-local`` value (``2026-04-02T10:00``) in the site's zone; None if empty."""
    text = text.strip()
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text[:32])
    except ValueError:
        raise InvalidRequest("until: give a date and time, e.g. 2026-04-02 10:00") from None
    return when.replace(tzinfo=ZoneInfo(zone)) if when.tzinfo is None else when


@router.post("/requests/{ref}/release-now")
def release_now(ref: str, form: CheckedForm, request: Request, staff: SignedIn) -> Response:
    """Release the request now, whatever holds it; a reason is required."""
    ctx = context_of(request)
    try:
        req = keeper(ctx).release_now(ref[:64], staff.actor, form.get("reason")[:600])
    except RequestNotFound:
        return detail_page(request, ctx, staff, ref[:64])
    except InvalidRequest as exc:
        return detail_page(request, ctx, staff, ref[:64], error=_said(exc), status=422)
    except InvalidTransition as exc:
        return detail_page(request, ctx, staff, ref[:64], error=str(exc), status=409)
    log.info("staff %s: release-now on request %s", staff.username, req.reference)
    return RedirectResponse(f"/staff/requests/{req.reference}?done=release-now", 303)


@router.post("/requests/{ref}/hold")
def hold(ref: str, form: CheckedForm, request: Request, staff: SignedIn) -> Response:
    """Hold the request until the given local time (empty: until released)."""
    ctx = context_of(request)
    try:
        until = _until(form.get("until"), ctx.delivery.timezone)
        req = keeper(ctx).extend(ref[:64], staff.actor, form.get("reason")[:600], until)
    except RequestNotFound:
        return detail_page(request, ctx, staff, ref[:64])
    except InvalidRequest as exc:
        return detail_page(request, ctx, staff, ref[:64], error=_said(exc), status=422)
    except InvalidTransition as exc:
        return detail_page(request, ctx, staff, ref[:64], error=str(exc), status=409)
    log.info("staff %s: hold on request %s", staff.username, req.reference)
    return RedirectResponse(f"/staff/requests/{req.reference}?done=hold", 303)


def _said(exc: InvalidRequest) -> str:
    field, _sep, message = str(exc).partition(": ")
    names = {"reason": "Reason", "until": "Hold until"}
    return f"{names.get(field, field)}: {message}" if message else str(exc)

"""The staff pages under ``/staff``: sign-in, the dashboard, requests and their actions.

``router`` gathers :mod:`portal.staff_auth` (sign-in, sessions, CSRF-checked forms),
:mod:`portal.staff_requests` (list, new, one request) and :mod:`portal.staff_actions`
(resend, revoke, extend, re-issue, mark for CD, cancel), :mod:`portal.staff_discs`
(the CD burn queue: write the disc image, download it, mark it burned, cancel it),
:mod:`portal.staff_identity` (studies held because their patient identity differs),
:mod:`portal.staff_hold` (release a request its release policy holds now, or hold it longer),
:mod:`portal.staff_reports` (the figures as charts with their numbers),
:mod:`portal.staff_studies_pages` (every study received; attach, rules again or discard
a held one),
plus the dashboard here.
Pages are English only, server-rendered, and need no JavaScript.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from portal import (
    staff_actions,
    staff_auth,
    staff_discs,
    staff_hold,
    staff_identity,
    staff_keys,
    staff_reports,
    staff_requests,
    staff_studies_pages,
)
from portal.site import context_of
from portal.staff_auth import SignedIn
from portal.staff_dashboard import dashboard
from portal.staff_requests import page
from portal.staff_studies_waiting import attention
from store.catalog import guarded
from store.models import IdentityMismatch, MismatchState, ReleaseRequest

router = APIRouter()
home = APIRouter(prefix="/staff")


@home.get("", response_class=HTMLResponse)
def show_dashboard(request: Request, staff: SignedIn) -> Response:
    """What needs attention (requests held for staff to decide, overdue, failed, locked
    links, staff alerts that were held or failed, packaging that takes too long, the CD
    burn queue), how many requests are in each state, and which a release hold keeps
    back."""
    ctx = context_of(request)
    with guarded(ctx.sessions) as s:
        board = dashboard(s, ctx.clock(), ZoneInfo(ctx.delivery.timezone))
        studies = attention(s, ctx.clock(), ctx.portal.held_alert_h)  # held, pulls
        held = list(  # studies held because their patient identity differs
            s.scalars(
                select(ReleaseRequest.reference)
                .join(IdentityMismatch, IdentityMismatch.request_id == ReleaseRequest.id)
                .where(IdentityMismatch.state == MismatchState.OPEN)
                .distinct()
                .order_by(ReleaseRequest.reference)
            )
        )
    return page(
        request,
        ctx,
        staff,
        "staff/dashboard.html.j2",
        board=board,
        identity_off=not ctx.identity_check,
        identity_held=held,
        studies=studies,
        held_alert_h=ctx.portal.held_alert_h,
    )


router.include_router(staff_auth.router)
router.include_router(home)
router.include_router(staff_requests.router)
router.include_router(staff_actions.router)
router.include_router(staff_hold.router)
router.include_router(staff_discs.router)
router.include_router(staff_keys.router)
router.include_router(staff_identity.router)
router.include_router(staff_studies_pages.router)
router.include_router(staff_reports.router)

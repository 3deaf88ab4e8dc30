"""The emailed link and the one-time code: ``/d/{token}``, ``/access``, ``/access/code``,
``/access/verify``.

- ``GET|HEAD /d/{token}`` does the same for every token, valid or not: it reads
  nothing, writes nothing, sends nothing, sets the ``__Host-link`` cookie and answers
  303 to ``/access`` (the token leaves the address bar). Mail scanners that fetch the
  link therefore change nothing.
- ``GET /access`` shows the masked second channel and the "send my code" button; a
  link that cannot be used gets the neutral page (404) whatever the reason.
- ``POST /access/code`` queues a fresh code (at most ``delivery.code_sends_per_hour``
  per link, and ``portal.rate_limit_per_min`` posts per client address: 429 beyond,
  nothing sent).
- ``POST /access/verify``: the right code consumes the code and opens a session; a wrong
  one counts a try (``delivery.code_max_tries`` void the code) and a failure of the
  day (:data:`~portal.grantsession.DAILY_FAILURES_LOCK` lock the link and alert staff,
  in the same transaction).

A code shown to the patient for a clinician (second channel ``shown:``) is a standing
code: valid for the forwarded grant's life, not consumed by a right answer (the
clinician may come back), voided by wrong tries like any other.

Every POST checks its CSRF token before anything else (403, nothing done).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from delivery.codes import send_code
from delivery.grants import GrantError
from portal.context import PortalContext
from portal.forms import csrf_ok, read_form
from portal.grantsession import (
    DAILY_FAILURES_LOCK,
    LINK_COOKIE,
    LINK_MAX_AGE_S,
    SESSION_COOKIE,
    audit,
    client_address,
    forbidden,
    grant_by_token,
    is_live,
    limited,
    lock_grant,
    mask,
    neutral,
    page,
    portal,
    start_session,
)
from store.models import Grant, ReleaseRequest

router = APIRouter()
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_DAY_S = 86_400


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


@router.api_route("/d/{token}", methods=["GET", "HEAD"], include_in_schema=False)
def open_link(token: str) -> Response:
    """Park the token in a short-lived cookie and go to ``/access`` (see the module)."""
    response = _see_other("/access")
    # A token that could not be one still gets a cookie (an inert value): same answer.
    value = token if _TOKEN.match(token) else "-"
    response.set_cookie(
        LINK_COOKIE,
        value,
        max_age=LINK_MAX_AGE_S,
        path="/",
        secure=True,
        httponly=True,
        samesite="lax",
    )
    return response


@dataclass(frozen=True)
class _Link:
    """What the code pages show of a live grant."""

    masked: str
    shown_code: bool
    language: str


def _live_link(ctx: PortalContext, token: str | None) -> _Link | None:
    with ctx.sessions() as s:
        grant = grant_by_token(s, token)
        if grant is None or not is_live(s, grant, ctx.clock()):
            return None
        shown = grant.second_channel.startswith("shown:")
        return _Link(mask(grant.second_channel), shown, grant.language)


@router.get("/access", include_in_schema=False)
async def access(request: Request) -> HTMLResponse:
    """The "send my code" page, or the neutral page."""
    ctx = portal(request)
    link = await run_in_threadpool(_live_link, ctx, request.cookies.get(LINK_COOKIE))
    if link is None:
        return neutral(request)
    return page(
        request,
        "patient/access.html.j2",
        lang=link.language,
        masked=link.masked,
        link=link,
        minutes=ctx.delivery.code_ttl_min,
    )


def _send(ctx: PortalContext, token: str | None) -> str:
    """Queue a fresh code; ``sent``, ``shown`` (nothing to send), ``limit`` or ``dead``."""
    now = ctx.clock()
    with ctx.sessions() as s:
        found = grant_by_token(s, token)
        if found is None:
            return "dead"
        grant = lock_grant(s, found.id)
        if not is_live(s, grant, now):
            s.rollback()
            return "dead"
        if grant.second_channel.startswith("shown:"):
            s.rollback()
            return "shown"
        try:
            row = send_code(
                s,
                ctx.keys,
                ctx.outbox,
                grant,
                now=now,
                ttl_min=ctx.delivery.code_ttl_min,
                sends_per_hour=ctx.delivery.code_sends_per_hour,
            )
        except GrantError:
            s.rollback()
            # Live but refused: the hourly cap (expired/locked were ruled out above).
            return "limit"
        audit(s, grant, f"code sent ({row.channel})", now)
        s.commit()
        return "sent"


@router.post("/access/code", include_in_schema=False)
async def request_code(request: Request) -> Response:
    """Send a fresh code to the second channel, then go to the code form."""
    form = await read_form(request)
    if not csrf_ok(request, form):
        return forbidden(request)
    ctx = portal(request)
    if not ctx.limiter.allow(f"ip:{client_address(request)}", ctx.portal.rate_limit_per_min, 60):
        return limited(request)
    outcome = await run_in_threadpool(_send, ctx, request.cookies.get(LINK_COOKIE))
    if outcome == "dead":
        return neutral(request)
    if outcome == "limit":
        return limited(request)
    return _see_other("/access/verify")


@router.get("/access/verify", include_in_schema=False)
async def verify_form(request: Request) -> HTMLResponse:
    """The form to type the code into."""
    ctx = portal(request)
    link = await run_in_threadpool(_live_link, ctx, request.cookies.get(LINK_COOKIE))
    if link is None:
        return neutral(request)
    return page(request, "patient/verify.html.j2", lang=link.language, link=link, error=None)


@dataclass(frozen=True)
class _Verdict:
    outcome: str  # "ok", "wrong", "dead"
    session_token: str = ""
    language: str = "en"
    link: _Link | None = None


def _check(ctx: PortalContext, token: str | None, code: str) -> _Verdict:
    now = ctx.clock()
    with ctx.sessions() as s:
        found = grant_by_token(s, token)
        if found is None:
            return _Verdict("dead")
        grant = lock_grant(s, found.id)
        if not is_live(s, grant, now):
            s.rollback()
            return _Verdict("dead")
        shown = grant.second_channel.startswith("shown:")
        tries_left = grant.code_tries < ctx.delivery.code_max_tries
        if tries_left and ctx.keys.check_code(grant, code, now):
            session_token = _open(ctx, s, grant, shown)
            s.commit()
            return _Verdict("ok", session_token, grant.language)
        locked = _wrong(ctx, s, grant)
        s.commit()
        if locked:
            return _Verdict("dead")
        link = _Link(mask(grant.second_channel), shown, grant.language)
        return _Verdict("wrong", "", grant.language, link)


def _open(ctx: PortalContext, s: Session, grant: Grant, shown: bool) -> str:
    """The right code: consume it, record the opening, tell the patient if forwarded."""
    now = ctx.clock()
    grant.code_tries = 0
    if not shown:  # a sent code works once; a shown code stands (see the module)
        grant.code_hash = None
        grant.code_expires_at = None
    first = grant.first_opened_at is None
    if first:
        grant.first_opened_at = now
    audit(s, grant, "signed in with the right code" + (" (first opening)" if first else ""), now)
    if grant.parent_grant_id is not None:
        parent = s.get(Grant, grant.parent_grant_id)
        if parent is not None:
            audit(s, grant, f"forwarded link used (shared by grant {parent.id})", now)
            # request_id stays empty: a bounce to the patient must not fail their request.
            ctx.outbox.enqueue(
                s,
                kind="share_used_email",
                channel="email",
                recipient=parent.recipient_email,
                language=parent.language,
                params={"opened_at": now.isoformat()},
                grant_id=parent.id,
            )
    return start_session(s, grant, now)


def _wrong(ctx: PortalContext, s: Session, grant: Grant) -> bool:
    """Count a wrong code; True when this failure locked the link."""
    now = ctx.clock()
    grant.code_tries += 1
    if grant.code_tries >= ctx.delivery.code_max_tries:
        grant.code_hash = None  # void: a new code must be asked for
        grant.code_expires_at = None
    if grant.failures_since is None or (now - grant.failures_since).total_seconds() >= _DAY_S:
        grant.failures_since = now
        grant.failures = 0
    grant.failures += 1
    audit(s, grant, f"wrong code (try {grant.code_tries}, {grant.failures} today)", now)
    if grant.failures >= DAILY_FAILURES_LOCK:
        grant.locked_at = now
        audit(s, grant, f"link locked after {grant.failures} wrong codes in a day", now)
        reference = s.scalar(
            select(ReleaseRequest.reference).where(ReleaseRequest.id == grant.request_id)
        )
        ctx.outbox.alert(s, "locked", reference=reference, request_id=grant.request_id)
        return True
    return False


@router.post("/access/verify", include_in_schema=False)
async def verify(request: Request) -> Response:
    """Check the code: a session and ``/files``, the form again, or the neutral page."""
    form = await read_form(request)
    if not csrf_ok(request, form):
        return forbidden(request)
    ctx = portal(request)
    if not ctx.limiter.allow(f"ip:{client_address(request)}", ctx.portal.rate_limit_per_min, 60):
        return limited(request)
    code = form.get("code", "")[:32]
    verdict = await run_in_threadpool(_check, ctx, request.cookies.get(LINK_COOKIE), code)
    if verdict.outcome == "dead":
        return neutral(request)
    if verdict.outcome == "wrong":
        return page(
            request,
            "patient/verify.html.j2",
            status_code=400,
            lang=verdict.language,
            link=verdict.link,
            error="wrong",
        )
    response = _see_other("/files")
    response.set_cookie(
        SESSION_COOKIE,
        verdict.session_token,
        path="/",
        secure=True,
        httponly=True,
        samesite="strict",
    )
    response.delete_cookie(LINK_COOKIE, path="/", secure=True, httponly=True, samesite="lax")
    return response

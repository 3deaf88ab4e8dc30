""" "Ask for more time": ``POST /files/extend`` (signed in) and ``POST /access/extend``
(the expired-link page). What it does to the link is :mod:`portal.more_time`.

- ``/files/extend``: the patient's own signed-in link (a clinician's session gets 403);
  the files page again, saying until when the link now works, or that the hospital was
  told.
- ``GET /access/more-time``: the form, the same page for everyone (the neutral page links
  to it, and stays byte for byte the same whatever the reason: it holds no CSRF token).
  A GET changes nothing (mail scanners).
- ``POST /access/extend``: the link in the ``__Host-link`` cookie. A patient's link
  that expired and was not revoked or locked gets the answer page (extended, or its
  expired request reopened within ``portal.reopen_expired_days``: a button to sign in
  again; asked: what happens next); anything else (no cookie, an unknown
  token, a revoked or locked link, a link that still works, a clinician's link) gets
  the neutral page again and nothing is done: holding a working link without its code
  must not use up the one extension. A token is 256 random bits: only its holder
  learns that it expired.

Both check the CSRF token first (403, nothing done) and allow ``portal.rate_limit_per_min``
posts per client address (429); staff are alerted at most once a day per link.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from portal.context import PortalContext
from portal.filespage import long_date, render_files
from portal.grantsession import (
    LINK_COOKIE,
    checked_post,
    grant_by_token,
    lock_grant,
    neutral,
    page,
    patient_grant,
    portal,
)
from portal.more_time import Answer, MoreTime, ask
from portal.pages import language
from store.db import writing
from store.models import Grant

router = APIRouter()


def more_time(ctx: PortalContext) -> MoreTime:
    """What "Ask for more time" may give, from node.yaml (:mod:`portal.more_time`)."""
    return MoreTime(
        days=ctx.delivery.patient_extend_days,
        reopen_days=ctx.portal.reopen_expired_days,
        purge_grace_days=ctx.delivery.purge_grace_days,
        retention_days=ctx.retention_days,
    )


@router.post("/files/extend", include_in_schema=False)
async def extend_signed_in(request: Request) -> Response:
    """The files page's "Ask for more time"."""
    _, refused = await checked_post(request)
    if refused is not None:
        return refused
    ctx = portal(request)

    def run() -> Response:
        now = ctx.clock()
        with ctx.sessions() as s:
            grant = patient_grant(s, request, ctx)
            if not isinstance(grant, Grant):
                return grant
            with writing(s):
                locked = lock_grant(s, grant.id)
                answer = ask(s, ctx.outbox, ctx.book, locked, more_time(ctx), now)
                s.commit()
                return render_files(
                    request, ctx, s, locked, more_time=answer.outcome, notice="more_time"
                )

    return await run_in_threadpool(run)


def _ask_by_link(ctx: PortalContext, token: str | None) -> tuple[Answer, str] | None:
    """The answer for the link ``token`` and its language, or None (neutral page)."""
    now = ctx.clock()
    with ctx.sessions() as s:
        found = grant_by_token(s, token)
        if found is None or found.purpose == "forward":
            return None
        with writing(s):
            grant = lock_grant(s, found.id)
            if grant.revoked_at is not None or grant.locked_at is not None:
                return None
            if now < grant.expires_at:  # only an expired link: the code page is the way in
                return None
            answer = ask(s, ctx.outbox, ctx.book, grant, more_time(ctx), now)
            s.commit()
            return answer, grant.language


@router.get("/access/more-time", include_in_schema=False)
async def more_time_form(request: Request) -> Response:
    """The expired-link page's "Ask for more time" form (reads nothing)."""
    return page(request, "patient/extend_ask.html.j2")


@router.post("/access/extend", include_in_schema=False)
async def extend_by_link(request: Request) -> Response:
    """The expired-link page's "Ask for more time"."""
    _, refused = await checked_post(request)
    if refused is not None:
        return refused
    ctx = portal(request)
    found = await run_in_threadpool(_ask_by_link, ctx, request.cookies.get(LINK_COOKIE))
    if found is None:
        return neutral(request)
    answer, lang = found
    shown = language(request, lang)
    until = long_date(answer.until, shown) if answer.until is not None else ""
    return page(
        request,
        "patient/extend_result.html.j2",
        lang=lang,
        outcome=answer.outcome,
        until=until,
    )

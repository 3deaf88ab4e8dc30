"""``POST /files/dicomweb``: "Open in your own viewer" on the files page.

Makes a DICOMweb token (:mod:`portal.dicomweb_token`) for the session's grant and shows
it once on the files page with the base URL and when it ends. A form post like the
others (CSRF first, ``portal.rate_limit_per_min`` per address), audited on the request's
timeline by the token's short name. Offered only where the node serves DICOMweb (a
content store).
"""

from __future__ import annotations

from datetime import UTC

from babel.dates import format_datetime
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from delivery.i18n import locale_name
from portal.context import PortalContext
from portal.dicomweb_token import base_url, issue, short
from portal.filespage import render_files
from portal.grantsession import (
    audit,
    checked_post,
    portal,
    session_grant,
    signed_out,
)
from portal.pages import language

router = APIRouter()


def _issue(ctx: PortalContext, request: Request) -> Response:
    with ctx.sessions() as s:
        grant = session_grant(s, request, ctx)
        if grant is None:
            return signed_out(request)
        if ctx.content is None:
            return Response(status_code=404)
        now = ctx.clock()
        token, ends = issue(ctx.keys, grant, now, ctx.portal.dicomweb_token_h)
        stamp = ends.strftime("%Y-%m-%d %H:%M UTC")
        audit(s, grant, f"DICOMweb token {short(token)} issued (valid until {stamp})", now)
        s.commit()
        lang = language(request, grant.language)
        shown = {
            "base": base_url(ctx),
            "token": token,
            "until": format_datetime(ends, format="short", tzinfo=UTC, locale=locale_name(lang))
            + " UTC",
        }
        return render_files(request, ctx, s, grant, dicomweb=shown)


@router.post("/files/dicomweb", include_in_schema=False)
async def ask(request: Request) -> Response:
    """Make a DICOMweb token for the session's grant and show it with the base URL."""
    _, refused = await checked_post(request)
    if refused is not None:
        return refused
    ctx = portal(request)
    return await run_in_threadpool(_issue, ctx, request)

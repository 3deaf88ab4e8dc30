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
  day (``delivery.code_daily_failures_lock`` lock the link and alert staff, in the same
  transaction). One read, then one short write transaction (see :func:`_check`).

A code shown to the patient for a clinician (second channel ``shown:``) is a standing
code: valid for the forwarded grant's life, not consumed by a right answer (the
clinician may come back), voided by wrong tries like any other.

Every POST checks its CSRF token before anything else (403, nothing done).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import Integer, bindparam, case, func, insert, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningUpdate
from starlette.concurrency import run_in_threadpool

from delivery.codes import send_code
from delivery.grants import GrantError
from portal.context import PortalContext
from portal.grantsession import (
    LINK_COOKIE,
    LINK_MAX_AGE_S,
    SESSION_COOKIE,
    LiveGrant,
    actor,
    audit,
    checked_post,
    event_row,
    grant_by_token,
    limited,
    live_grant,
    lock_grant,
    mask,
    neutral,
    new_session,
    page,
    portal,
    record,
)
from release.links import link_live
from store.audit import Outcome
from store.audit import record as audit_event
from store.db import writing
from store.models import Grant, Notification, NotificationState, PortalSession, UTCDateTime
from telemetry import metrics

router = APIRouter()
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_DAY = timedelta(days=1)  # the window of the daily failures


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
    # The latest code could not be sent while it was valid (delivery.relay): the code
    # page says so and offers a new one instead of leaving the patient waiting.
    code_lost: bool = False


def _code_lost(s: Session, grant_id: int) -> bool:
    """True when the grant's latest code message failed (expired unsent, refused)."""
    last = s.scalars(
        select(Notification.state)
        .where(Notification.grant_id == grant_id, Notification.kind.in_(("code_sms", "code_email")))
        .order_by(Notification.id.desc())
        .limit(1)
    ).first()
    return last == NotificationState.FAILED


def _live_link(ctx: PortalContext, token: str | None) -> _Link | None:
    with ctx.sessions() as s:
        found = live_grant(s, token, ctx.clock())
        lost = found is not None and _code_lost(s, found.grant.id)
    if found is None:
        return None
    grant = found.grant
    shown = grant.second_channel.startswith("shown:")
    return _Link(mask(grant.second_channel), shown, grant.language, lost)


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
        with writing(s):  # every way out but the commit rolls back
            grant = lock_grant(s, found.id)
            if not link_live(s, grant, now):
                return "dead"
            if grant.second_channel.startswith("shown:"):
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
                # Live but refused: the hourly cap (expired/locked were ruled out above).
                return "limit"
            audit(s, grant, f"code sent ({row.channel})", now)
            s.commit()
            return "sent"


@router.post("/access/code", include_in_schema=False)
async def request_code(request: Request) -> Response:
    """Send a fresh code to the second channel, then go to the code form."""
    _, refused = await checked_post(request)
    if refused is not None:
        return refused
    ctx = portal(request)
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
    """Judge ``code`` for link ``token``: one read, then one short write transaction.

    The read takes no lock; the write re-checks what the read decided in the WHERE of
    one conditional UPDATE (the code still unused, unexpired and untried too often; the
    link still unlocked), so two checks of one link never use a code twice or lose a
    try. Everything slow (hashing, the new session's token) happens before it.
    """
    now = ctx.clock()
    with ctx.sessions() as s:
        found = live_grant(s, token, now)
        if found is None:
            return _Verdict("dead")
        grant = found.grant
        shown = grant.second_channel.startswith("shown:")
        right = grant.code_tries < ctx.delivery.code_max_tries and ctx.keys.check_code(
            grant, code, now
        )
        session_token, session = new_session(grant, now)
        with writing(s):
            if right and _open(ctx, s, found, shown, session, now):
                s.commit()
                metrics.code_checked(right=True)
                return _Verdict("ok", session_token, grant.language)
            # Wrong, or used up by another check since the read: a wrong try either way.
            failures = _wrong(ctx, s, found, now)
            if failures is None:  # locked or withdrawn since the read: rolled back
                return _Verdict("dead")
            s.commit()
            metrics.code_checked(right=False)
    if failures >= ctx.delivery.code_daily_failures_lock:
        return _Verdict("dead")
    link = _Link(mask(grant.second_channel), shown, grant.language)
    return _Verdict("wrong", "", grant.language, link)


def _open(
    ctx: PortalContext,
    s: Session,
    found: LiveGrant,
    shown: bool,
    session: dict[str, Any],
    now: datetime,
) -> bool:
    """The right code: consume it, open the session, record it, tell the patient if
    forwarded. False (nothing written) when the code was used or voided since the read."""
    grant = found.grant
    conn = s.connection()
    opened = conn.execute(
        _OPEN_SHOWN if shown else _OPEN_SENT,
        {
            "grant": grant.id,
            "seen_hash": grant.code_hash,
            "now": now,
            "max_tries": ctx.delivery.code_max_tries,
        },
    ).first()
    if opened is None:
        return False
    conn.execute(_SESSION, session)
    first = grant.first_opened_at is None and opened[0] == now
    reason = "signed in with the right code" + (" (first opening)" if first else "")
    events = [event_row(grant, found.state, reason, now)]
    parent = found.parent
    if parent is not None:
        reason = f"forwarded link used (shared by grant {parent.id})"
        events.append(event_row(grant, found.state, reason, now))
    if parent is not None and (grant.notify_every_access or first):
        # The patient chose, per share, every opening or only the first
        # (portal.share_notify). request_id stays empty: a bounce to the patient must not
        # fail their request.
        ctx.outbox.enqueue(
            s,
            kind="share_used_email",
            channel="email",
            recipient=parent.recipient_email,
            language=parent.language,
            params={"opened_at": now.isoformat()},
            grant_id=parent.id,
        )
    record(s, events)
    audit_event(
        s, "login", actor=actor(grant), request=found.reference, detail="right code", at=now
    )
    return True


def _wrong(ctx: PortalContext, s: Session, found: LiveGrant, now: datetime) -> int | None:
    """Count a wrong code; the link's failures today, or None when it was locked or
    withdrawn since the read (nothing written). The failure that reaches
    ``delivery.code_daily_failures_lock`` locks the link and alerts staff."""
    grant = found.grant
    row = (
        s.connection()
        .execute(
            _WRONG,
            {
                "grant": grant.id,
                "now": now,
                "day_ago": now - _DAY,
                "max_tries": ctx.delivery.code_max_tries,
                "lock_at": ctx.delivery.code_daily_failures_lock,
            },
        )
        .first()
    )
    if row is None:
        return None
    tried, failed, locked = row
    events = [event_row(grant, found.state, f"wrong code (try {tried}, {failed} today)", now)]
    if locked is not None:
        reason = f"link locked after {failed} wrong codes in a day"
        events.append(event_row(grant, found.state, reason, now))
        ctx.outbox.alert(s, "locked", reference=found.reference, request_id=grant.request_id)
        metrics.link_locked()
        audit_event(
            s,
            "security-alert",
            actor=actor(grant),
            outcome=Outcome.SERIOUS_FAILURE,
            request=found.reference,
            detail=reason,
            at=now,
        )
    record(s, events)
    audit_event(
        s,
        "login",
        actor=actor(grant),
        outcome=Outcome.MINOR_FAILURE,
        request=found.reference,
        detail=f"wrong code ({failed} today)",
        at=now,
    )
    return int(failed)


# The statements of a code check, built once (bound per check; all times aware UTC).
_GRANTS = Grant.metadata.tables["grants"]
_G = _GRANTS.c
_NOW = bindparam("now", type_=UTCDateTime())
_MAX_TRIES = bindparam("max_tries", type_=Integer())


def _open_statement(shown: bool) -> ReturningUpdate[datetime | None]:
    """Consume the code seen by the read if it is still the grant's, unexpired, not
    tried too often and the link is unlocked; returns ``first_opened_at``."""
    # A sent code works once; a shown code stands (see the module).
    code = {"code_hash": _G.code_hash, "code_expires_at": _G.code_expires_at}
    return (
        update(_GRANTS)
        .where(
            _G.id == bindparam("grant"),
            _G.code_hash == bindparam("seen_hash"),
            _G.code_expires_at > _NOW,
            _G.code_tries < _MAX_TRIES,
            _G.locked_at.is_(None),
            _G.revoked_at.is_(None),
        )
        .values(
            code_tries=0,
            first_opened_at=func.coalesce(_G.first_opened_at, _NOW),
            **(code if shown else {"code_hash": None, "code_expires_at": None}),
        )
        .returning(_G.first_opened_at)
    )


def _wrong_statement() -> ReturningUpdate[int, int, datetime | None]:
    """Count a wrong try and a failure of the day (the day restarts a day after its
    first failure); void the code at ``max_tries``, lock the link at ``lock_at``. Every
    SET reads the row as it was. Returns the new tries, failures and ``locked_at``."""
    tries = _G.code_tries + 1
    void = tries >= _MAX_TRIES
    new_day = or_(
        _G.failures_since.is_(None),
        _G.failures_since <= bindparam("day_ago", type_=UTCDateTime()),
    )
    failures = case((new_day, 1), else_=_G.failures + 1)
    return (
        update(_GRANTS)
        .where(_G.id == bindparam("grant"), _G.locked_at.is_(None), _G.revoked_at.is_(None))
        .values(
            code_tries=tries,
            code_hash=case((void, None), else_=_G.code_hash),
            code_expires_at=case((void, None), else_=_G.code_expires_at),
            failures_since=case((new_day, _NOW), else_=_G.failures_since),
            failures=failures,
            locked_at=case(
                (failures >= bindparam("lock_at", type_=Integer()), _NOW),
                else_=_G.locked_at,
            ),
        )
        .returning(_G.code_tries, _G.failures, _G.locked_at)
    )


_OPEN_SENT = _open_statement(shown=False)
_OPEN_SHOWN = _open_statement(shown=True)
_WRONG = _wrong_statement()
_SESSION = insert(PortalSession.metadata.tables["portal_sessions"])


@router.post("/access/verify", include_in_schema=False)
async def verify(request: Request) -> Response:
    """Check the code: a session and ``/files``, the form again, or the neutral page."""
    form, refused = await checked_post(request)
    if refused is not None:
        return refused
    ctx = portal(request)
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

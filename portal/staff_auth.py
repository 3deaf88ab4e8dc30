"""Staff sign-in: username and password (scrypt, :mod:`portal.passwords`), then a session.

Why a password kept here rather than a trusted reverse-proxy header: a header such as
``X-Remote-User`` is only as safe as the guarantee that nothing but the proxy can reach
the node and that the proxy strips the header from every client request; one mistake in
either (a port left open, a proxy rule order) lets anyone sign in as anyone. A password
checked here works the same behind any proxy or none. Hospitals with single sign-on can
later put the node behind an authenticating proxy and trust its header *only* from
``portal.trusted_proxies``; that is an addition, not a replacement.

``POST /staff/login`` in order: the CSRF token (403), the per-address rate limit
(``portal.rate_limit_per_min``, 429), the per-account delay (429, below), then the
password. An unknown user, a disabled one and a wrong password get the same page, status
and work (a dummy hash for unknown users); the failed attempt is counted on the user's
row with one conditional UPDATE that runs for unknown names too.

Per account, whatever the address (a guesser with many addresses gets no more tries):
after ``portal.staff_login_free_failures`` wrong passwords in a row, the account's
sign-in is refused until ``login_blocked_until``, ``portal.staff_login_delay_s`` seconds
after the failure that reached it, doubled at each further failure, at most
``portal.staff_login_delay_max_s``. During the delay every attempt is refused with the
same page (429, Retry-After) *before* the password is looked at, so the right password
is refused too and the answer says nothing about it; such a refusal costs no hashing and
neither counts a failure nor lengthens the delay (guessing on during the delay gains the
guesser nothing and costs the colleague nothing more). Each is audited like a refused
sign-in. A success resets both.

Success makes a :class:`~store.models.PortalSession`
(kind ``staff``; only the SHA-256 of its random token is stored) and sets the cookie
``__Host-staff`` (Secure, HttpOnly, SameSite=Strict, Path=/, no Domain). A session ends
after ``portal.session_idle_min`` without a request, after :data:`MAX_SESSION`, at
sign-out, or when the user is disabled.

Every other staff route depends on :func:`signed_in` (303 to the sign-in page without a
live session); every POST first on :func:`checked_form` (403 without the CSRF token).
Log lines name staff users, never passwords or tokens.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from portal import passwords
from portal.context import PortalContext
from portal.forms import Form, FormTooLarge, csrf_ok, parse_form
from portal.pages import render
from portal.site import context_of
from store.audit import Outcome, actor_of
from store.audit import record as audit_event
from store.catalog import guarded
from store.models import PortalSession, StaffUser
from telemetry import metrics

log = logging.getLogger("courier.portal.staff")

COOKIE = "__Host-staff"
KIND = "staff"
LOGIN = "/staff/login"
MAX_SESSION = timedelta(hours=12)  # a shift; idle sessions end far sooner
MAX_FORM = 64 * 1024  # a staff form is a few kB
router = APIRouter(prefix="/staff")


# -- forms ------------------------------------------------------------------------------


async def checked_form(request: Request) -> Form:
    """The posted form (:func:`portal.forms.parse_form`: every value kept), after its
    CSRF token matched the browser's cookie (403 if not; 413 past :data:`MAX_FORM`
    bytes). Declared first on every POST route, so it runs before anything else."""
    try:
        form = await parse_form(request, MAX_FORM)
    except FormTooLarge as exc:
        raise HTTPException(413, str(exc)) from exc
    if not csrf_ok(request, form):
        raise HTTPException(
            403, "this form has expired or did not come from this site; reload the page"
        )
    return form


CheckedForm = Annotated[Form, Depends(checked_form)]


# -- sessions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Staff:
    """The signed-in staff member of a request."""

    user_id: int
    username: str
    session_id: int

    @property
    def actor(self) -> str:
        """How their actions are recorded on a request's timeline."""
        return f"staff:{self.username}"


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def _to_login() -> HTTPException:
    return HTTPException(303, "sign in first", headers={"Location": LOGIN})


def current_staff(request: Request, ctx: PortalContext) -> Staff | None:
    """The live staff session of ``request`` (its last-seen time refreshed), or None.
    An idle, too old or disabled user's session is ended on the way."""
    token = request.cookies.get(COOKIE, "")
    if not 20 <= len(token) <= 100:
        return None
    now = ctx.clock()
    idle = timedelta(minutes=ctx.portal.session_idle_min)
    with guarded(ctx.sessions) as s, s.begin():
        row = s.execute(
            select(PortalSession, StaffUser)
            .join(StaffUser, StaffUser.id == PortalSession.staff_user_id)
            .where(
                PortalSession.token_hash == _token_hash(token),
                PortalSession.kind == KIND,
                PortalSession.ended_at.is_(None),
            )
        ).first()
        if row is None:
            return None
        session, user = row
        if (
            user.disabled_at is not None
            or now - session.last_seen_at >= idle
            or now - session.created_at >= MAX_SESSION
        ):
            session.ended_at = now
            return None
        session.last_seen_at = now
        return Staff(user.id, user.username, session.id)


def signed_in(request: Request) -> Staff:
    """Dependency: the signed-in staff member, or a 303 to the sign-in page."""
    staff = current_staff(request, context_of(request))
    if staff is None:
        raise _to_login()
    return staff


SignedIn = Annotated[Staff, Depends(signed_in)]


def _start_session(ctx: PortalContext, user_id: int, now: datetime) -> str:
    token = secrets.token_urlsafe(32)
    with guarded(ctx.sessions) as s, s.begin():
        s.add(
            PortalSession(
                token_hash=_token_hash(token),
                kind=KIND,
                staff_user_id=user_id,
                created_at=now,
                last_seen_at=now,
            )
        )
    return token


def end_sessions(ctx: PortalContext, *, token: str = "", user_id: int | None = None) -> None:
    """End the staff session holding ``token``, or every session of ``user_id``."""
    q = update(PortalSession).where(PortalSession.kind == KIND, PortalSession.ended_at.is_(None))
    if user_id is not None:
        q = q.where(PortalSession.staff_user_id == user_id)
    elif token:
        q = q.where(PortalSession.token_hash == _token_hash(token))
    else:
        return
    with guarded(ctx.sessions) as s, s.begin():
        s.execute(q.values(ended_at=ctx.clock()))


# -- routes -----------------------------------------------------------------------------


def _login_page(
    request: Request, ctx: PortalContext, *, error: str = "", status: int = 200, username: str = ""
) -> HTMLResponse:
    response = render(
        request,
        "staff/login.html.j2",
        status_code=status,
        lang="en",
        hospital=ctx.hospital,
        error=error,
        username=username,
        staff=None,
    )
    if status == 429:
        response.headers["Retry-After"] = "60"
    return response


@router.get(LOGIN.removeprefix("/staff"), response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    """The sign-in form (straight to the dashboard when already signed in)."""
    ctx = context_of(request)
    if current_staff(request, ctx) is not None:
        return RedirectResponse("/staff", 303)
    return _login_page(request, ctx)


BAD_SIGN_IN = "Wrong username or password."


@router.post(LOGIN.removeprefix("/staff"), response_class=HTMLResponse)
def login(form: CheckedForm, request: Request) -> Response:
    """Check the password; a session and 303 to ``/staff`` when right."""
    ctx = context_of(request)
    address = request.client.host if request.client else "unknown"
    if not ctx.limiter.allow(f"staff-login:{address}", ctx.portal.rate_limit_per_min, 60.0):
        log.warning("staff sign-in: rate limit reached for an address")
        metrics.staff_login("rate_limited")
        return _login_page(
            request, ctx, error="Too many sign-in attempts; wait a minute.", status=429
        )
    username = normalize_username(form.get("username"))
    password = form.get("password")
    with guarded(ctx.sessions) as s:
        user = s.scalars(select(StaffUser).where(StaffUser.username == username)).first()
    blocked = user.login_blocked_until if user is not None else None
    if user is not None and blocked is not None and ctx.clock() < blocked:
        return _delayed(request, ctx, user.username, address, blocked)
    stored = user.password_hash if user is not None else None
    good = passwords.verify_or_dummy(password, stored)
    if not good or user is None or user.disabled_at is not None:
        with guarded(ctx.sessions) as s, s.begin():
            s.execute(
                update(StaffUser)
                .where(StaffUser.username == username)
                .values(failed_logins=StaffUser.failed_logins + 1)
            )
            if user is not None:
                _delay_after_failure(s, ctx, user.id, user.username)
            who = user.username if user is not None else "unknown"
            audit_event(
                s,
                "login",
                actor=actor_of("staff", who),
                outcome=Outcome.MINOR_FAILURE,
                host=address,
                detail="staff sign-in refused",
                at=ctx.clock(),
            )
        log.info("staff sign-in refused")
        metrics.staff_login("refused")
        return _login_page(request, ctx, error=BAD_SIGN_IN, username=username)
    now = ctx.clock()
    with guarded(ctx.sessions) as s, s.begin():
        values: dict[str, object] = {"failed_logins": 0, "login_blocked_until": None}
        if passwords.needs_rehash(user.password_hash):
            values["password_hash"] = passwords.hash_password(password)
        s.execute(update(StaffUser).where(StaffUser.id == user.id).values(**values))
        audit_event(
            s,
            "login",
            actor=actor_of("staff", user.username),
            host=address,
            detail="staff signed in",
            at=now,
        )
    old = request.cookies.get(COOKIE, "")
    if old:
        end_sessions(ctx, token=old)  # a fresh token every sign-in: no session fixation
    token = _start_session(ctx, user.id, now)
    log.info("staff %s signed in", user.username)
    metrics.staff_login("ok")
    response = RedirectResponse("/staff", 303)
    response.set_cookie(COOKIE, token, secure=True, httponly=True, samesite="strict", path="/")
    return response


def _delay_after_failure(s: Session, ctx: PortalContext, user_id: int, username: str) -> None:
    """After the failure just counted (the row is locked by that UPDATE), block the
    account's sign-in for the delay its failure count has reached, if any."""
    failed = s.scalar(select(StaffUser.failed_logins).where(StaffUser.id == user_id)) or 0
    p = ctx.portal
    over = failed - p.staff_login_free_failures
    if over < 0:
        return
    delay = min(p.staff_login_delay_s * 2 ** min(over, 30), p.staff_login_delay_max_s)
    s.execute(
        update(StaffUser)
        .where(StaffUser.id == user_id)
        .values(login_blocked_until=ctx.clock() + timedelta(seconds=delay))
    )
    log.warning(
        "staff sign-in: account %s paused for %d s after %d failures", username, delay, failed
    )


DELAYED = (
    "Too many wrong passwords for this account: sign-in is paused for it. Try again "
    "later, or ask an administrator if it was not you."
)


def _delayed(
    request: Request, ctx: PortalContext, username: str, address: str, until: datetime
) -> HTMLResponse:
    """The account's sign-in is paused: refused whatever the password, audited."""
    now = ctx.clock()
    with guarded(ctx.sessions) as s, s.begin():
        audit_event(
            s,
            "login",
            actor=actor_of("staff", username),
            outcome=Outcome.MINOR_FAILURE,
            host=address,
            detail="staff sign-in refused: account paused after repeated failures",
            at=now,
        )
    log.info("staff sign-in refused: account %s paused", username)
    metrics.staff_login("rate_limited")
    response = _login_page(request, ctx, error=DELAYED, status=429, username=username)
    response.headers["Retry-After"] = str(max(1, math.ceil((until - now).total_seconds())))
    return response


@router.post("/logout")
def logout(form: CheckedForm, request: Request) -> Response:
    """End this browser's session; back to the sign-in page."""
    ctx = context_of(request)
    staff = current_staff(request, ctx)
    end_sessions(ctx, token=request.cookies.get(COOKIE, ""))
    if staff is not None:
        with guarded(ctx.sessions) as s, s.begin():
            audit_event(
                s,
                "logout",
                actor=actor_of("staff", staff.username),
                detail="staff signed out",
                at=ctx.clock(),
            )
        log.info("staff %s signed out", staff.username)
    response = RedirectResponse(LOGIN, 303)
    response.delete_cookie(COOKIE, secure=True, httponly=True, samesite="strict", path="/")
    return response


# -- usernames --------------------------------------------------------------------------

USERNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-@")
MAX_USERNAME = 64


def normalize_username(text: str) -> str:
    """A typed username as stored: trimmed, lower case (no validation; see
    :func:`check_username`)."""
    return text.strip().lower()[: MAX_USERNAME + 1]


def check_username(text: str) -> str:
    """The normalized username; raises ValueError unless it is 1-64 of ``a-z 0-9 . _ - @``
    (it appears as ``staff:<name>`` on timelines and as ``requested_by``)."""
    name = normalize_username(text)
    if not name or len(name) > MAX_USERNAME:
        raise ValueError(f"a username has 1 to {MAX_USERNAME} characters")
    bad = sorted(set(name) - USERNAME_CHARS)
    if bad:
        raise ValueError(f"character {bad[0]!r} is not allowed; use letters, digits and . _ - @")
    return name

"""What every patient and clinician page shares: the link cookie, live grants, sessions,
the audit trail, and the pages every route may answer with.

- The link cookie ``__Host-link`` holds the emailed token for an hour (it left the
  address bar at ``/d/``); the database is searched by its SHA-256 only.
- A grant is *live* by the one rule of :mod:`release.links` (not revoked, expired or
  locked, its package files kept, its request not in a final state, and for a
  forwarded grant the patient's grant it came from neither revoked nor locked), which
  delivery's messages about a link follow too. Anything else gets the one neutral page.
- A session (``__Host-session``) is a random token whose SHA-256 is a
  :class:`~store.models.PortalSession` row; it ends after ``portal.session_idle_min``
  minutes without a request, ``portal.patient_session_max_h`` hours after it was opened
  however active (a stolen cookie does not live for ever), at sign-out, or when its
  grant stops being live.
- Every event is a :class:`~store.models.RequestEvent` on the grant's request with the
  state unchanged and an actor naming the grant (``patient:grant-12``,
  ``clinician:grant-13``): never an address, a token or a code.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.elements import ColumnElement

from portal.context import PortalContext
from portal.forms import csrf_ok, read_form
from portal.pages import render
from portal.site import context_of
from release.links import judge, link_live
from store.models import (
    Grant,
    Package,
    PortalSession,
    ReleaseRequest,
    RequestEvent,
)

LINK_COOKIE = "__Host-link"
SESSION_COOKIE = "__Host-session"
LINK_MAX_AGE_S = 3600
# last_seen_at is written at most this often (a download page makes many requests).
_TOUCH_EVERY = timedelta(seconds=30)


def portal(request: Request) -> PortalContext:
    return context_of(request)


def client_address(request: Request) -> str:
    """The client's address (uvicorn applies trusted proxies' X-Forwarded-For)."""
    return request.client.host if request.client else "unknown"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def actor(grant: Grant) -> str:
    """Who acted, for the audit trail: the grant, never the person's address."""
    who = "clinician" if grant.purpose == "forward" else "patient"
    return f"{who}:grant-{grant.id}"


def audit(s: Session, grant: Grant, reason: str, now: datetime, who: str | None = None) -> None:
    """Record ``reason`` on the grant's request (state unchanged), in ``s``."""
    state = s.scalar(select(ReleaseRequest.state).where(ReleaseRequest.id == grant.request_id))
    s.add(RequestEvent(**event_row(grant, state, reason, now, who)))


def event_row(
    grant: Grant, state: str | None, reason: str, now: datetime, who: str | None = None
) -> dict[str, Any]:
    """The values of an audit event on the grant's request, whose ``state`` the caller
    read (it stays unchanged); :func:`record` inserts a batch of them."""
    return {
        "request_id": grant.request_id,
        "at": now,
        "actor": who or actor(grant),
        "from_state": state or "",
        "to_state": state or "",
        "reason": reason,
    }


def record(s: Session, events: list[dict[str, Any]]) -> None:
    """Insert the :func:`event_row` values ``events`` in ``s`` (one statement)."""
    s.connection().execute(_EVENT, events)


_EVENT = insert(RequestEvent.metadata.tables["request_events"])


def mask(second_channel: str) -> str:
    """The second channel as the page shows it: ``+44 •••• ••56``, ``j•••@example.org``."""
    kind, _, address = second_channel.partition(":")
    if kind == "sms":
        import phonenumbers

        try:
            cc = f"+{phonenumbers.parse(address).country_code}"
        except phonenumbers.NumberParseException:
            cc = "+"
        return f"{cc} •••• ••{address[-2:]}"
    if kind == "email":
        local, _, domain = address.partition("@")
        return f"{local[:1]}•••@{domain}"
    return ""


def grant_by_token(s: Session, token: str | None) -> Grant | None:
    """The grant whose link token is ``token`` (hash look-up), live or not."""
    if not token:
        return None
    return s.scalars(select(Grant).where(Grant.token_hash == digest(token))).first()


@dataclass(frozen=True)
class LiveGrant:
    """A live grant as one query reads it, with what the code pages need besides."""

    grant: Grant
    state: str  # the request's (for the audit trail)
    reference: str  # the request's (for a staff alert)
    parent: Grant | None  # the patient's grant a forwarded grant was made from


_PARENT = aliased(Grant)
# Built once (a code check is hot): the grant of a token hash, its request's state and
# reference, the grant it was forwarded from and its package (a grant without one has
# no row); release.links.judge decides on them.
_LIVE = (
    select(Grant, ReleaseRequest.state, ReleaseRequest.reference, _PARENT, Package)
    .join(ReleaseRequest, ReleaseRequest.id == Grant.request_id)
    .join(Package, Package.id == Grant.package_id)
    .outerjoin(_PARENT, _PARENT.id == Grant.parent_grant_id)
    .where(Grant.token_hash == bindparam("token_hash"))
)


def live_grant(s: Session, token: str | None, now: datetime) -> LiveGrant | None:
    """The live grant of link ``token`` (one query, no lock), or None: the same
    judgement as :func:`release.links.link_live`, whose reads it joins."""
    if not token:
        return None
    row = s.execute(_LIVE, {"token_hash": digest(token)}).first()
    if row is None:
        return None
    grant, state, reference, up, package = row
    if not judge(grant, state=state, package=package, parent=up, now=now):
        return None
    return LiveGrant(grant, state, reference, up)


def lock_grant(s: Session, grant_id: int) -> Grant:
    """Take the grant's row lock in ``s`` and return it fresh.

    A no-op UPDATE comes first: PostgreSQL locks the row, SQLite takes its write lock
    (Python's sqlite3 begins the transaction at the first write, so the reads that
    follow see the latest commit). Concurrent code checks are thus serialized per grant:
    no lost try, no code used twice.
    """
    s.execute(
        update(Grant)
        .where(Grant.id == grant_id)
        .values(failures=Grant.failures)
        .execution_options(synchronize_session=False)
    )
    grant = s.get(Grant, grant_id, populate_existing=True)
    assert grant is not None
    return grant


def start_session(s: Session, grant: Grant, now: datetime) -> str:
    """A new session for ``grant`` in ``s``; returns the cookie's token."""
    token, values = new_session(grant, now)
    s.add(PortalSession(**values))
    return token


def new_session(grant: Grant, now: datetime) -> tuple[str, dict[str, Any]]:
    """A new session for ``grant``: the cookie's token, and the values of its
    :class:`~store.models.PortalSession` row for the caller to insert."""
    token = secrets.token_urlsafe(32)
    values = {
        "token_hash": digest(token),
        "kind": "grant",
        "grant_id": grant.id,
        "created_at": now,
        "last_seen_at": now,
    }
    return token, values


def session_grant(s: Session, request: Request, ctx: PortalContext) -> Grant | None:
    """The live grant of the request's session (its idle clock reset), or None."""
    found = session_and_grant(s, request, ctx)
    return found[1] if found is not None else None


def patient_grant(s: Session, request: Request, ctx: PortalContext) -> Grant | HTMLResponse:
    """The session's grant if it is the patient's own, else the answer: 401
    (:func:`signed_out`) without a live session, 403 (:func:`forbidden`) for a
    clinician's share (purpose ``forward``), which may not share, extend or choose."""
    grant = session_grant(s, request, ctx)
    if grant is None:
        return signed_out(request)
    if grant.purpose == "forward":
        return forbidden(request)
    return grant


def own_share(s: Session, patient: Grant, share_id: int, *also: ColumnElement[bool]) -> int | None:
    """``share_id`` if it is a share made from ``patient`` (and meets ``also``), else
    None (the caller answers 404: another grant's share, or none)."""
    return s.scalar(
        select(Grant.id).where(Grant.id == share_id, Grant.parent_grant_id == patient.id, *also)
    )


def session_and_grant(s: Session, request: Request, ctx: PortalContext) -> tuple[int, Grant] | None:
    """The request's session id and its live grant (idle clock reset), or None: see
    :func:`session_grant`."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    now = ctx.clock()
    row = s.scalars(
        select(PortalSession).where(
            PortalSession.token_hash == digest(token), PortalSession.kind == "grant"
        )
    ).first()
    if row is None or row.ended_at is not None or row.grant_id is None:
        return None
    if now - row.last_seen_at > timedelta(minutes=ctx.portal.session_idle_min):
        return None
    if now - row.created_at >= timedelta(hours=ctx.portal.patient_session_max_h):
        return None
    grant = s.get(Grant, row.grant_id)
    if grant is None or not link_live(s, grant, now):
        return None
    session_id = row.id
    if now - row.last_seen_at >= _TOUCH_EVERY:
        s.execute(
            update(PortalSession).where(PortalSession.id == session_id).values(last_seen_at=now)
        )
    s.commit()  # ends the read (or the touch): the caller may write in a fresh transaction
    return session_id, grant


def end_session(s: Session, request: Request, now: datetime) -> None:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        s.execute(
            update(PortalSession)
            .where(PortalSession.token_hash == digest(token), PortalSession.ended_at.is_(None))
            .values(ended_at=now)
        )


# -- pages ---------------------------------------------------------------------------


def page(
    request: Request,
    template: str,
    *,
    status_code: int = 200,
    lang: str | None = None,
    **context: Any,
) -> HTMLResponse:
    """Render a patient page with the hospital's name and contact."""
    ctx = portal(request)
    return render(
        request,
        template,
        status_code=status_code,
        lang=lang,
        hospital=ctx.hospital,
        contact=ctx.contact,
        **context,
    )


def neutral(request: Request) -> HTMLResponse:
    """The one answer for every link that cannot be used (unknown, expired, revoked,
    locked, or no link cookie at all): same status, same body."""
    return page(request, "neutral.html.j2", status_code=404)


def forbidden(request: Request) -> HTMLResponse:
    """A form without a valid CSRF token, or a clinician's session where only the
    patient may act: nothing was done."""
    return page(request, "patient/forbidden.html.j2", status_code=403)


def limited(request: Request, lang: str | None = None) -> HTMLResponse:
    """Too many requests (per address, or codes per link): nothing was done."""
    response = page(request, "patient/limited.html.j2", status_code=429, lang=lang)
    response.headers["Retry-After"] = "60"
    return response


async def checked_post(request: Request) -> tuple[dict[str, str], HTMLResponse | None]:
    """A patient form post's fields, and the refusal to answer with before anything
    else (or None to go on): 403 without a valid CSRF token, 429 past
    ``portal.rate_limit_per_min`` posts per client address."""
    form = await read_form(request)
    if not csrf_ok(request, form):
        return form, forbidden(request)
    ctx = portal(request)
    if not ctx.limiter.allow(f"ip:{client_address(request)}", ctx.portal.rate_limit_per_min, 60):
        return form, limited(request)
    return form, None


def signed_out(request: Request) -> HTMLResponse:
    """No session (never signed in, idle too long, signed out, or the link stopped)."""
    return page(request, "patient/signed_out.html.j2", status_code=401)

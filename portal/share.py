"""Sharing with a clinician: ``POST /files/share`` and ``POST /files/share/{id}/revoke``.

A share is a grant of its own (purpose ``forward``, ``parent_grant_id`` = the patient's
grant, the same package): its own link, code, attempt limits and expiry (the node's
``delivery.link_days``, never past the patient's own link). The clinician's link email
is queued in the same transaction. The second factor is either the clinician's mobile
(codes by SMS, as for the patient) or a code shown once to the patient to pass on:

- second channel ``shown:``; the 6 digits are drawn at random at share time and kept
  only as a keyed hash (no salt is stored, so not even the node can show them again);
- it stands for the grant's life (the clinician may come back) but wrong tries void it
  and the daily failure lock applies, as for any code.

Only the patient's own grant can share (a clinician cannot forward further), and only
the patient who made a share can revoke it. Outbox rows for shares carry no request id:
a clinician's address bouncing must not fail the patient's request (the page shows it).

Limits, so a signed-in link cannot be used to mail or text the world through the
hospital (every refusal is a message on the page, 429 for a limit and 400 for a number,
and nothing is queued):

- ``portal.max_shares_per_link`` shares per patient grant not stopped or expired (a
  locked one counts: the patient can renew its code; stop one to add one);
- ``portal.max_shares_per_day`` shares per request in any 24 hours, stopped ones too;
- the clinician's mobile passes :class:`release.phonepolicy.PhonePolicy` (a mobile
  type, never premium-rate and the like; ``sms.allowed_countries``).

Both counts come from the grants table, read and inserted in one write transaction
(:func:`store.db.writing`: SQLite's write lock; PostgreSQL: the patient grant's row
lock), so neither parallel posts nor several portal processes get past a limit.

A shown code voided by someone's wrong tries (or a share locked by them) can be replaced
by the patient: ``POST /files/share/{id}/code`` shows a new code once, the old one stops
working, and the request's timeline records it. The day's failures are kept, so a share
that was locked locks again at the next wrong try that day.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from delivery.grants import new_grant
from portal.context import PortalContext
from portal.filespage import render_files
from portal.forms import csrf_ok, read_form
from portal.grantsession import (
    audit,
    checked_post,
    forbidden,
    lock_grant,
    own_share,
    patient_grant,
    portal,
    session_grant,
    signed_out,
)
from release.phonepolicy import PhonePolicy, PhoneRefused
from store.db import writing
from store.models import Grant, ReleaseRequest

router = APIRouter()


def _email(value: str) -> str | None:
    try:
        return validate_email(value.strip(), check_deliverability=False).normalized
    except EmailNotValidError:
        return None


def _mobile(value: str, phones: PhonePolicy) -> tuple[str | None, str]:
    """(the number in E.164, "") or (None, the error key: ``mobile``, ``mobile_type``
    or ``mobile_country``)."""
    try:
        number = phonenumbers.parse(value.strip().replace(" ", ""))
        return phones.check(number), ""
    except phonenumbers.NumberParseException:
        return None, "mobile"
    except PhoneRefused as exc:
        return None, {"type": "mobile_type", "country": "mobile_country"}.get(exc.rule, "mobile")


def _problems(
    form: dict[str, str], phones: PhonePolicy
) -> tuple[list[str], str | None, str | None]:
    """(error keys, clinician email, second channel)."""
    errors: list[str] = []
    email = _email(form.get("email", ""))
    if email is None:
        errors.append("email")
    show = form.get("show_code", "") not in ("", "0", "off")
    mobile_text = form.get("mobile", "").strip()
    second: str | None = None
    if show and mobile_text:
        errors.append("both")
    elif show:
        second = "shown:"
    elif mobile_text:
        mobile, problem = _mobile(mobile_text, phones)
        if mobile is None:
            errors.append(problem)
        else:
            second = f"sms:{mobile}"
    else:
        errors.append("neither")
    return errors, email, second


@router.post("/files/share", include_in_schema=False)
async def share(request: Request) -> Response:
    """Create a clinician's grant and queue their link email."""
    form, refused = await checked_post(request)
    if refused is not None:
        return refused
    ctx = portal(request)
    return await run_in_threadpool(_share, ctx, request, form)


def _over_limit(ctx: PortalContext, s: Session, patient: Grant, now: datetime) -> str | None:
    """``limit`` or ``daily`` when one more share would pass a limit (see the module)."""
    active = s.scalar(
        select(func.count())
        .select_from(Grant)
        .where(
            Grant.parent_grant_id == patient.id,
            Grant.revoked_at.is_(None),
            Grant.expires_at > now,  # locked ones count: a new code reopens them
        )
    )
    if (active or 0) >= ctx.portal.max_shares_per_link:
        return "limit"
    today = s.scalar(
        select(func.count())
        .select_from(Grant)
        .where(
            Grant.request_id == patient.request_id,
            Grant.purpose == "forward",
            Grant.created_at > now - timedelta(days=1),
        )
    )
    if (today or 0) >= ctx.portal.max_shares_per_day:
        return "daily"
    return None


def _share(ctx: PortalContext, request: Request, form: dict[str, str]) -> Response:
    now = ctx.clock()
    with ctx.sessions() as s:
        grant = patient_grant(s, request, ctx)
        if not isinstance(grant, Grant):
            return grant
        kept = {"email": form.get("email", "")[:254], "mobile": form.get("mobile", "")[:40]}
        errors, email, second = _problems(form, ctx.phones)
        if errors or email is None or second is None:
            return render_files(
                request, ctx, s, grant, status_code=400, share_errors=errors, share_form=kept
            )
        with writing(s):  # the limits' counts and the new share: one write transaction
            return _create(ctx, request, s, grant.id, email, second, kept, now)


def _create(
    ctx: PortalContext,
    request: Request,
    s: Session,
    grant_id: int,
    email: str,
    second: str,
    kept: dict[str, str],
    now: datetime,
) -> Response:
    """Check the limits and add the share, under the patient grant's lock (in
    :func:`store.db.writing`: every way out but the commit rolls back)."""
    patient = lock_grant(s, grant_id)
    over = _over_limit(ctx, s, patient, now)
    if over is not None:
        audit(s, patient, f"share refused: {over} reached", now)
        s.commit()
        return render_files(
            request, ctx, s, patient, status_code=429, share_errors=[over], share_form=kept
        )
    req = s.get(ReleaseRequest, patient.request_id)
    assert req is not None
    child = new_grant(
        s,
        ctx.keys,
        req,
        package_id=patient.package_id,
        link_days=ctx.delivery.link_days,
        now=now,
        purpose="forward",
    )
    child.recipient_email = email
    child.second_channel = second
    child.backup_email = None
    child.language = patient.language
    child.parent_grant_id = patient.id
    child.expires_at = min(child.expires_at, patient.expires_at)
    shown_code = None
    if second == "shown:":
        shown_code = f"{secrets.randbelow(1_000_000):06d}"
        child.code_salt = None
        child.code_hash = ctx.keys.code_hash(child.id, shown_code)
        child.code_expires_at = child.expires_at
    how = "a code shown to the patient" if shown_code else "codes by SMS to the clinician"
    audit(s, patient, f"shared with a clinician as grant {child.id} ({how})", now)
    ctx.outbox.enqueue(
        s,
        kind="forward_link_email",
        channel="email",
        recipient=email,
        language=child.language,
        grant_id=child.id,
    )
    s.commit()
    if shown_code is None:
        return RedirectResponse("/files?shared=1", status_code=303)
    # Shown once, in this answer only (it is stored as a keyed hash, never in clear).
    return render_files(request, ctx, s, patient, shown_code=shown_code, notice="shared")


@router.post("/files/share/{grant_id}/revoke", include_in_schema=False)
async def revoke(request: Request, grant_id: int) -> Response:
    """Stop a share at once (its sessions end with it: they check the grant)."""
    form = await read_form(request)
    if not csrf_ok(request, form):
        return forbidden(request)
    ctx = portal(request)

    def run() -> Response:
        now = ctx.clock()
        with ctx.sessions() as s:
            grant = session_grant(s, request, ctx)
            if grant is None:
                return signed_out(request)
            child_id = own_share(s, grant, grant_id)
            if child_id is None:
                return Response(status_code=404)
            child = lock_grant(s, child_id)
            if child.revoked_at is None:
                child.revoked_at = now
                audit(s, grant, f"revoked the share grant {child.id}", now)
            s.commit()
        return RedirectResponse("/files?revoked=1", status_code=303)

    return await run_in_threadpool(run)


@router.post("/files/share/{grant_id}/code", include_in_schema=False)
async def new_code(request: Request, grant_id: int) -> Response:
    """Show a new code for a shown-code share (the old one stops working): for a code
    voided by wrong tries, a share locked by them, or a code the patient lost."""
    _, refused = await checked_post(request)
    if refused is not None:
        return refused
    ctx = portal(request)

    def run() -> Response:
        now = ctx.clock()
        with ctx.sessions() as s:
            grant = session_grant(s, request, ctx)
            if grant is None:
                return signed_out(request)
            child_id = own_share(s, grant, grant_id, Grant.second_channel == "shown:")
            if child_id is None:
                return Response(status_code=404)
            with writing(s):
                child = lock_grant(s, child_id)
                if child.revoked_at is not None or now >= child.expires_at:
                    return Response(status_code=404)  # stopped or expired: nothing to renew
                shown_code = f"{secrets.randbelow(1_000_000):06d}"
                child.code_salt = None
                child.code_hash = ctx.keys.code_hash(child.id, shown_code)
                child.code_expires_at = child.expires_at
                child.code_tries = 0
                # The day's failures stay: a share that was locked locks again at the
                # next wrong try today (staff were told of the first lock).
                unlocked = child.locked_at is not None
                child.locked_at = None
                why = " (the share was locked)" if unlocked else ""
                audit(s, grant, f"new shown code for the share grant {child.id}{why}", now)
                s.commit()
                return render_files(
                    request, ctx, s, grant, shown_code=shown_code, notice="new_code"
                )

    return await run_in_threadpool(run)

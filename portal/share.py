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
"""

from __future__ import annotations

import secrets

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from delivery.grants import new_grant
from portal.context import PortalContext
from portal.filespage import render_files
from portal.forms import csrf_ok, read_form
from portal.grantsession import (
    audit,
    client_address,
    forbidden,
    limited,
    lock_grant,
    portal,
    session_grant,
    signed_out,
)
from store.models import Grant, ReleaseRequest

router = APIRouter()


def _email(value: str) -> str | None:
    try:
        return validate_email(value.strip(), check_deliverability=False).normalized
    except EmailNotValidError:
        return None


def _mobile(value: str) -> str | None:
    try:
        number = phonenumbers.parse(value.strip().replace(" ", ""))
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _problems(form: dict[str, str]) -> tuple[list[str], str | None, str | None]:
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
        mobile = _mobile(mobile_text)
        if mobile is None:
            errors.append("mobile")
        else:
            second = f"sms:{mobile}"
    else:
        errors.append("neither")
    return errors, email, second


@router.post("/files/share", include_in_schema=False)
async def share(request: Request) -> Response:
    """Create a clinician's grant and queue their link email."""
    form = await read_form(request)
    if not csrf_ok(request, form):
        return forbidden(request)
    ctx = portal(request)
    if not ctx.limiter.allow(f"ip:{client_address(request)}", ctx.portal.rate_limit_per_min, 60):
        return limited(request)
    return await run_in_threadpool(_share, ctx, request, form)


def _share(ctx: PortalContext, request: Request, form: dict[str, str]) -> Response:
    now = ctx.clock()
    with ctx.sessions() as s:
        grant = session_grant(s, request, ctx)
        if grant is None:
            return signed_out(request)
        if grant.purpose == "forward":
            return forbidden(request)
        errors, email, second = _problems(form)
        if errors or email is None or second is None:
            kept = {"email": form.get("email", "")[:254], "mobile": form.get("mobile", "")[:40]}
            return render_files(
                request, ctx, s, grant, status_code=400, share_errors=errors, share_form=kept
            )
        patient = lock_grant(s, grant.id)
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
            child_id = s.scalar(
                select(Grant.id).where(Grant.id == grant_id, Grant.parent_grant_id == grant.id)
            )
            if child_id is None:
                return Response(status_code=404)
            child = lock_grant(s, child_id)
            if child.revoked_at is None:
                child.revoked_at = now
                audit(s, grant, f"revoked the share grant {child.id}", now)
            s.commit()
        return RedirectResponse("/files?revoked=1", status_code=303)

    return await run_in_threadpool(run)

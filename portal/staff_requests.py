"""Staff pages for requests: the list (``?state=``, ``?hold=``), a new request, one request's story.

A new request is validated by :class:`release.validation.RequestDraft`, exactly as the
CLI and the REST API do; problems are shown next to their fields and nothing is
written. Studies are picked from those received for the patient ("find studies" by
Patient ID lists the :class:`~store.models.Study` rows; a ticked study is selected by
its Study Instance UID), or typed as accession numbers / UIDs for studies still to
come, or left to arrive tagged with the request's reference. Each form carries a fresh
idempotency key, so a double click or a re-post stores one request.

With a PACS (``PortalContext.pacs_find``), "find here and on the PACS" also lists the
patient's studies on the PACS; a ticked one is pulled, as ``courier request create
--pull`` does: at submit the PACS is asked again (C-FIND for the form's Patient ID), a
ticked UID it does not hold for that patient is refused, and the others are selected
by Study UID with the PACS's instance counts as ``expected_instances``; once the
request is stored, their pulls are queued (``PortalContext.queue_pulls``). Asking
again rather than trusting the posted list keeps the check and the counts fresh and
needs no signed state in the form. A PACS that cannot be asked is shown on the page
with what to fix (503, nothing written), never a 500.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from delivery.outbox import link_status
from portal.context import PortalContext
from portal.forms import Form
from portal.pages import render
from portal.site import context_of
from portal.staff_auth import CheckedForm, SignedIn, Staff
from portal.staff_choices import choices
from portal.staff_dashboard import LIST_LIMIT, request_lines
from portal.staff_request_reports import request_reports
from portal.staff_story import story
from portal.staff_studies import (
    PacsLookupFailed,
    PacsStudy,
    patient_of,
    studies_of_patient,
    studies_on_pacs,
)
from portal.staff_studies_waiting import why_waiting
from release.embargo import EXPLAINED, HOLDABLE, describe, local_time, policy_reasons
from release.errors import InvalidRequest, RequestConflict, RequestNotFound
from release.mismatch import mismatches
from release.validation import SUPPORTED_LANGUAGES, RequestDraft, validation_errors
from store.catalog import guarded
from store.models import ReleaseRequest, RequestState, Urgency

router = APIRouter(prefix="/staff")

# Draft fields → the id of the form control their errors sit beside.
FIELD_IDS = {
    "patient_id": "patient-id",
    "patient_name": "patient-name",
    "patient_birth_date": "birth-date",
    "patient_issuer": "issuer",
    "recipient_email": "email",
    "second_channel": "second-value",
    "backup_email": "backup-email",
    "selection": "studies",
    "by_reference": "studies",
    "language": "language",
    "urgency": "urgency",
    "link_days": "link-days",
    "note": "note",
}
# What the success redirect (?done=...) says; fixed texts, never echoed input.
DONE = {
    "created": "Request created.",
    "resend": "The link email will be sent again.",
    "revoke": "The link was revoked; it no longer works.",
    "extend": "The link's expiry was extended.",
    "reissue": "A new link was made and its email queued; the locked link no longer works.",
    "cd": "Marked for CD: the request is in the burn queue.",
    "disc-image": "The disc image was written; download it and burn it.",
    "disc-burned": "The disc was marked burned; the request left the burn queue.",
    "disc-cancel": "The CD was cancelled; its disc image was deleted.",
    "cancel": "The request was cancelled; its links no longer work.",
    "identity-attach": "The study was attached despite the identity mismatch (audited).",
    "identity-dismiss": "The study stays held; it will not be attached to this request.",
    "study-attach": "The held study was attached to this request (audited).",
    "release-now": "The request was released (audited): it goes with the next delivery.",
    "hold": "The request is held as you asked (audited).",
}
STATES = [str(s) for s in RequestState]


def page(
    request: Request,
    ctx: PortalContext,
    staff: Staff,
    template: str,
    status: int = 200,
    **values: Any,
) -> HTMLResponse:
    """Render a staff page (English, the staff layout)."""
    return render(
        request,
        template,
        status_code=status,
        lang="en",
        hospital=ctx.hospital,
        staff=staff,
        # The nav offers API keys only to those who may manage them (portal.staff_admins).
        staff_admin=staff.username in ctx.portal.staff_admins,
        now=ctx.clock(),
        # Times as staff read them: delivery.timezone's local time with its abbreviation
        # (the "when" macro of staff/_macros.html.j2).
        local=local_clock(ctx.delivery.timezone),
        staff_zone=ctx.delivery.timezone,
        **values,
    )


def local_clock(zone: str) -> Callable[[datetime], str]:
    """``at`` (aware, or naive meaning UTC) as :func:`release.embargo.local_time` says
    it in ``zone``: ``2026-03-30 10:00 BST``."""
    tz = ZoneInfo(zone)

    def local(at: datetime) -> str:
        return local_time(at if at.tzinfo is not None else at.replace(tzinfo=UTC), tz)

    return local


def not_found(request: Request, ctx: PortalContext, staff: Staff, message: str) -> HTMLResponse:
    return page(
        request, ctx, staff, "staff/message.html.j2", 404, title="Not found", message=message
    )


# -- list -------------------------------------------------------------------------------


# The list's ``?hold=`` filter: value → what the page calls it (release.holds.held_now).
HOLDS = {
    "held": "held (any hold)",
    "embargo": "embargoed",
    "report": "waiting for the report",
    "max_wait_passed": "held for staff: the report did not come in time",
    "rule_missing": "held for staff: a study's rule no longer exists",
    "staff": "held by staff",
}


@router.get("/requests", response_class=HTMLResponse)
def list_requests(request: Request, staff: SignedIn) -> Response:
    """Requests, newest first; ``?state=`` shows one state only, ``?hold=`` only those a
    release hold keeps back now (``held``: any; ``embargo``, ``report``,
    ``max_wait_passed``, ``staff``)."""
    ctx = context_of(request)
    wanted = request.query_params.get("state", "")
    wanted_hold = request.query_params.get("hold", "")
    error = hold_error = ""
    state = None
    if wanted in STATES:
        state = RequestState(wanted)
    elif wanted:
        error = f"Unknown state; choose one of {', '.join(STATES)}."
    hold = wanted_hold if wanted_hold in HOLDS else ""
    if wanted_hold and not hold:
        hold_error = f"Unknown hold; choose one of {', '.join(HOLDS)}."
    with guarded(ctx.sessions) as s:
        rows = request_lines(
            s, state, now=ctx.clock(), hold=hold, zone=ZoneInfo(ctx.delivery.timezone)
        )
    return page(
        request,
        ctx,
        staff,
        "staff/requests.html.j2",
        422 if error or hold_error else 200,
        rows=rows,
        states=STATES,
        state=str(state or ""),
        error=error,
        holds=HOLDS,
        hold=hold,
        hold_error=hold_error,
        limit=LIST_LIMIT,
    )


# -- new --------------------------------------------------------------------------------


def _sane_patient_id(text: str) -> str:
    """A Patient ID worth looking up (bounded, printable), else ''."""
    text = text.strip()
    return text if 0 < len(text) <= 64 and text.isprintable() else ""


@dataclass(frozen=True)
class PacsListing:
    """What the PACS answered for one Patient ID: its studies, or why it could not."""

    studies: list[PacsStudy]
    error: str = ""


def _pacs_listing(ctx: PortalContext, patient_id: str) -> PacsListing:
    assert ctx.pacs_find is not None
    try:
        return PacsListing(studies_on_pacs(ctx.pacs_find, patient_id, ctx.pacs_timeout_s))
    except PacsLookupFailed as exc:
        return PacsListing([], str(exc))


def _form_page(
    request: Request,
    ctx: PortalContext,
    staff: Staff,
    values: dict[str, Any],
    errors: dict[str, list[str]],
    general: list[str],
    status: int = 200,
    pacs: PacsListing | None = None,
) -> HTMLResponse:
    found = _sane_patient_id(str(values.get("find") or values.get("patient_id") or ""))
    studies = []
    if pacs is None and found and ctx.pacs_find is not None and values.get("pacs_listed"):
        pacs = _pacs_listing(ctx, found)
    if found:
        with guarded(ctx.sessions) as s:
            studies = studies_of_patient(s, found)
            if not values.get("patient_name") and not values.get("patient_birth_date"):
                name, born = patient_of(s, found)
                values = {**values, "patient_name": name, "patient_birth_date": born}
    return page(
        request,
        ctx,
        staff,
        "staff/new.html.j2",
        status,
        values=values,
        errors=errors,
        general=general,
        studies=studies,
        searched=found,
        pacs_offered=ctx.pacs_find is not None,
        pacs=pacs if found else None,
        languages_supported=SUPPORTED_LANGUAGES,
        urgencies=[str(u) for u in Urgency],
        field_ids=FIELD_IDS,
    )


@router.get("/requests/new", response_class=HTMLResponse)
def new_request(request: Request, staff: SignedIn) -> Response:
    """The new-request form; ``?patient_id=`` lists that patient's received studies,
    and with ``&pacs=1`` also those on the PACS."""
    ctx = context_of(request)
    find = request.query_params.get("patient_id", "")
    values: dict[str, Any] = {
        "find": find,
        "patient_id": _sane_patient_id(find),
        "second_kind": "sms",
        "language": "en",
        "urgency": str(Urgency.OVERNIGHT),
        "link_days": str(ctx.delivery.link_days),
        "form_key": _form_key(),
        "study": [],
        "pacs_study": [],
        "pacs_listed": "1" if request.query_params.get("pacs") == "1" else "",
    }
    return _form_page(request, ctx, staff, values, {}, [])


def _form_key() -> str:
    return f"staff-form:{secrets.token_urlsafe(18)}"


def _lines(text: str) -> list[str]:
    return [x.strip() for x in text.splitlines() if x.strip()]


def draft_data(
    form: Form, staff: Staff, counts: dict[str, int | None] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The draft as the form gives it, and what each selection entry came from.

    ``counts``: the instance counts the PACS gave for the ticked studies to pull (their
    ``expected_instances``); None before the PACS was asked.
    """
    selection: list[dict[str, Any]] = []
    sources: list[str] = []
    for uid in form.getlist("study"):
        selection.append({"kind": "study_uid", "value": uid})
        sources.append("ticked study")
    for uid in _pulled(form):
        entry: dict[str, Any] = {"kind": "study_uid", "value": uid}
        if counts is not None:
            entry["expected_instances"] = counts.get(uid)
        selection.append(entry)
        sources.append("study on the PACS")
    for acc in _lines(form.get("accessions")):
        selection.append({"kind": "accession", "value": acc})
        sources.append("accession number")
    for uid in _lines(form.get("study_uids")):
        selection.append({"kind": "study_uid", "value": uid})
        sources.append("study UID")
    data: dict[str, Any] = {
        "patient_id": form.get("patient_id"),
        "patient_name": form.get("patient_name"),
        "patient_birth_date": form.get("patient_birth_date"),
        "patient_issuer": form.get("patient_issuer"),
        "recipient_email": form.get("recipient_email"),
        "second_channel": f"{form.get('second_kind')}:{form.get('second_value')}",
        "backup_email": form.get("backup_email") or None,
        "selection": selection,
        "by_reference": form.get("by_reference") == "on",
        "language": form.get("language") or "en",
        "urgency": form.get("urgency") or str(Urgency.OVERNIGHT),
        "link_days": form.get("link_days") or "30",
        "tell_patient_when": form.get("tell_patient_when") == "on",
        "note": form.get("note"),
        "requested_by": staff.username,
    }
    key = form.get("form_key")
    if key:
        data["idempotency_key"] = key[:200]
    return data, sources


def _pulled(form: Form) -> list[str]:
    """The ticked studies on the PACS, each once, in order."""
    return list(dict.fromkeys(form.getlist("pacs_study")))


# Draft fields → the form field that holds what was typed for them.
_TYPED = {"second_channel": "second_value"}


def place_errors(
    problems: list[dict[str, str]],
    sources: list[str],
    selection: list[dict[str, Any]],
    form: Form,
) -> tuple[dict[str, list[str]], list[str]]:
    """Problems by form control id, and those that belong to no one field. A field left
    empty says "required" (not "at least 5 characters", which is what ``sms:`` gets)."""
    errors: dict[str, list[str]] = {}
    general: list[str] = []
    for p in problems:
        parts = p["field"].split(".")
        message = p["message"]
        if len(parts) == 1 and not form.get(_TYPED.get(parts[0], parts[0]), "x").strip():
            message = "required"
        if parts[0] == "selection" and len(parts) > 1 and parts[1].isdigit():
            i = int(parts[1])
            if i < len(sources):
                message = f"{sources[i]} {selection[i]['value'][:64]!r}: {message}"
        target = FIELD_IDS.get(parts[0])
        if target is None:
            general.append(message)
        else:
            errors.setdefault(target, []).append(message)
    return errors, general


_KEPT = (
    "patient_id",
    "patient_name",
    "patient_birth_date",
    "patient_issuer",
    "recipient_email",
    "second_kind",
    "second_value",
    "backup_email",
    "accessions",
    "study_uids",
    "by_reference",
    "language",
    "urgency",
    "link_days",
    "tell_patient_when",
    "note",
    "form_key",
    "pacs_listed",
)


@router.post("/requests/new", response_class=HTMLResponse)
def create_request(form: CheckedForm, request: Request, staff: SignedIn) -> Response:
    """Validate and store; 303 to the new request, or the form again with its errors
    (422, nothing written; 503 when the PACS could not be asked about the studies to
    pull). Studies to pull have their pulls queued once the request is stored."""
    ctx = context_of(request)
    data, sources = draft_data(form, staff)
    values: dict[str, Any] = {k: form.get(k) for k in _KEPT}
    values["study"] = form.getlist("study")
    values["pacs_study"] = pulled = _pulled(form)
    values["form_key"] = values["form_key"] or _form_key()
    if pulled:
        values["pacs_listed"] = "1"
    try:
        draft = RequestDraft.model_validate(data)
    except ValidationError as exc:
        errors, general = place_errors(validation_errors(exc), sources, data["selection"], form)
        return _form_page(request, ctx, staff, values, errors, general, 422)
    wanted: list[tuple[str, int | None]] = []
    if pulled:
        if ctx.pacs_find is None or ctx.queue_pulls is None:
            problem = "This node has no PACS to pull from; name the studies to wait for instead."
            return _form_page(request, ctx, staff, values, {"studies": [problem]}, [], 422)
        pacs = _pacs_listing(ctx, draft.patient_id)
        if pacs.error:
            problem = "The PACS could not be asked about the studies to pull (see below)."
            return _form_page(request, ctx, staff, values, {"studies": [problem]}, [], 503, pacs)
        counts = {h.study_uid: h.instances or None for h in pacs.studies}
        missing = [uid for uid in pulled if uid not in counts]
        if missing:
            problems = [
                f"study on the PACS {uid[:64]!r}: the PACS holds no such study for Patient "
                f"ID {draft.patient_id}; find the patient's studies again"
                for uid in missing
            ]
            return _form_page(request, ctx, staff, values, {"studies": problems}, [], 422, pacs)
        data, sources = draft_data(form, staff, counts)
        try:
            draft = RequestDraft.model_validate(data)
        except ValidationError as exc:
            errors, general = place_errors(validation_errors(exc), sources, data["selection"], form)
            return _form_page(request, ctx, staff, values, errors, general, 422, pacs)
        wanted = [(uid, counts[uid]) for uid in pulled]
    try:
        req, _created = ctx.book.submit(draft, staff.actor)
    except RequestConflict:
        general = ["This form was already used for another request; start a new one."]
        values["form_key"] = _form_key()
        return _form_page(request, ctx, staff, values, {}, general, 409)
    except InvalidRequest as exc:
        # The node's SMS number policy (sms.allowed_countries), named at its field.
        field, _sep, message = str(exc).partition(": ")
        refused = [{"field": field, "message": message}]
        errors, general = place_errors(refused, sources, data["selection"], form)
        return _form_page(request, ctx, staff, values, errors, general, 422)
    if wanted and ctx.queue_pulls is not None:
        # After the request's own transaction, as the CLI does: the same form posted
        # again (same idempotency key) queues whatever a crash in between left out.
        ctx.queue_pulls(req.id, wanted)
    return RedirectResponse(f"/staff/requests/{req.reference}?done=created", 303)


# -- one request ------------------------------------------------------------------------


def detail_page(
    request: Request,
    ctx: PortalContext,
    staff: Staff,
    ref: str,
    *,
    error: str = "",
    status: int = 200,
) -> HTMLResponse:
    """One request: details, milestones, timeline, messages, links, packages, actions."""
    try:
        req = ctx.book.get(ref)
    except RequestNotFound:
        return not_found(request, ctx, staff, "No request has this reference.")
    with guarded(ctx.sessions) as s:
        fresh = s.get(ReleaseRequest, req.id)
        assert fresh is not None
        told = story(s, fresh, ctx.clock())
        held = mismatches(s, fresh.id)  # studies held: patient identity differs
        waiting = why_waiting(s, fresh)  # no study yet, held, incomplete, mismatch
        radiology = request_reports(s, fresh.id)  # portal.staff_request_reports
        # Held because the report did not come by max_wait, or a study's rule is gone:
        # the policy's line says why.
        why = policy_reasons(s, [fresh.id]) if fresh.hold_kind in EXPLAINED else {}
    done = DONE.get(request.query_params.get("done", ""), "")
    return page(
        request,
        ctx,
        staff,
        "staff/request.html.j2",
        status,
        req=req,
        story=told,
        can=choices(req, told),
        done=done,
        error=error,
        default_days=min(ctx.delivery.link_days, 30),
        mismatches=held,
        waiting=waiting,
        link=link_status(ctx.sessions, [req.id]).get(req.id),  # queued is not accepted
        # The release policy's hold (an embargo, the wait for the report): portal.staff_hold.
        hold=describe(req, ZoneInfo(ctx.delivery.timezone), ctx.clock(), why.get(req.id, "")),
        hold_actions=RequestState(req.state) in HOLDABLE,
        zone=ctx.delivery.timezone,
        radiology=radiology,
    )


@router.get("/requests/{ref}", response_class=HTMLResponse)
def show_request(ref: str, request: Request, staff: SignedIn) -> Response:
    """The request page."""
    return detail_page(request, context_of(request), staff, ref[:64])

"""The staff Studies pages: ``/staff/studies`` (every study, searched, held first) and
``/staff/studies/{uid}`` (one study: its events, every decision with the rules' trace,
the requests it joined, identity mismatches, and the actions on a held study).

The list is a GET form (works without JavaScript), paged and bounded
(:mod:`portal.staff_studies_list`). The actions are POST forms, CSRF-checked like every
staff form, each carrying the id of the latest decision the page showed (``seen``):

- ``/staff/studies/{uid}/attach`` (``request``, ``reason``): attach to a request;
- ``/staff/studies/{uid}/rules``: send it to the release rules again;
- ``/staff/studies/{uid}/discard`` (``reason``): discard it.

They are :mod:`portal.staff_studies_actions`, one write transaction each; a refusal
(including the loser of two staff acting at once) re-renders the study page with the
reason (409) and writes nothing; success redirects (303) with a fixed note, to the
request's page after an attach (``back=request``, from a request's "why it is waiting")
or to the study's page.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.exc import IntegrityError

from portal.context import PortalContext
from portal.site import context_of
from portal.staff_auth import CheckedForm, SignedIn, Staff
from portal.staff_requests import detail_page, page
from portal.staff_studies_actions import RACE, StudyRefused, Who, attach, discard, rules_again
from portal.staff_studies_list import PAGE_SIZE, STATUSES, StudyQuery, search, study_detail
from release.identity import IdentitySettings
from store.audit import actor_of
from store.catalog import guarded
from store.db import writing

log = logging.getLogger("courier.portal.staff")
router = APIRouter(prefix="/staff")

# What the success redirect (?done=...) says; fixed texts, never echoed input.
DONE = {
    "attach": "The study was attached to the request (audited).",
    "rules": "The study was sent to the release rules again: the node decides it within "
    "a few seconds (reload this page).",
    "discard": "The study was discarded; its files are deleted after the retention for "
    "unmatched studies.",
}
ACTIONS = ("attach", "rules", "discard")
MAX_UID = 64


@router.get("/studies", response_class=HTMLResponse)
def list_studies(request: Request, staff: SignedIn) -> Response:
    """Studies matching the search form, held first; a bad field is named (422)."""
    ctx = context_of(request)
    query, problems = StudyQuery.parse(request.query_params)
    with guarded(ctx.sessions) as s:
        found = search(s, query)
    return page(
        request,
        ctx,
        staff,
        "staff/studies.html.j2",
        422 if problems else 200,
        found=found,
        query=query,
        problems=problems,
        statuses=STATUSES,
        page_size=PAGE_SIZE,
        prev_params=query.params(page=query.page - 1) if query.page > 1 else None,
        next_params=query.params(page=query.page + 1) if found.more else None,
    )


def study_page(
    request: Request,
    ctx: PortalContext,
    staff: Staff,
    uid: str,
    *,
    error: str = "",
    status: int = 200,
) -> HTMLResponse:
    """One study's page (see the module docstring); 404 for an unknown UID."""
    with guarded(ctx.sessions) as s:
        detail = study_detail(s, uid[:MAX_UID])
    if detail is None:
        return page(
            request,
            ctx,
            staff,
            "staff/message.html.j2",
            404,
            title="Not found",
            message="No study has this Study Instance UID.",
        )
    return page(
        request,
        ctx,
        staff,
        "staff/study.html.j2",
        status,
        d=detail,
        st=detail.row,
        done=DONE.get(request.query_params.get("done", ""), ""),
        error=error,
    )


@router.get("/studies/{uid}", response_class=HTMLResponse)
def show_study(uid: str, request: Request, staff: SignedIn) -> Response:
    """The study page."""
    return study_page(request, context_of(request), staff, uid)


def _seen(raw: str) -> int | None:
    raw = raw.strip()
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 12 else None


@router.post("/studies/{uid}/{action}", response_class=HTMLResponse)
def act(uid: str, action: str, form: CheckedForm, request: Request, staff: SignedIn) -> Response:
    """``attach``, ``rules`` or ``discard`` on a held study (see the module docstring)."""
    ctx = context_of(request)
    uid = uid[:MAX_UID]
    if action not in ACTIONS:
        return study_page(request, ctx, staff, uid, error="Unknown action.", status=404)
    who = Who(staff.actor, actor_of("staff", staff.username))
    seen = _seen(form.get("seen"))
    reference = form.get("request").strip()[:64]
    now = ctx.clock()
    try:
        try:
            with guarded(ctx.sessions) as s, writing(s):
                if action == "attach":
                    attach(
                        s,
                        ctx.book,
                        uid,
                        seen,
                        reference,
                        who=who,
                        reason=form.get("reason"),
                        identity=IdentitySettings(check=ctx.identity_check),
                        now=now,
                    )
                elif action == "rules":
                    rules_again(s, uid, seen, who=who, now=now)
                else:
                    discard(s, uid, seen, who=who, reason=form.get("reason"), now=now)
                s.commit()
        except IntegrityError as exc:  # the matcher attached it meanwhile: a race lost
            raise StudyRefused(RACE) from exc
    except StudyRefused as exc:
        if form.get("back") == "request" and reference:
            return detail_page(request, ctx, staff, reference, error=str(exc), status=409)
        return study_page(request, ctx, staff, uid, error=str(exc), status=409)
    log.info("staff %s: %s on held study %s", staff.username, action, uid)
    if action == "attach" and form.get("back") == "request":
        return RedirectResponse(f"/staff/requests/{reference}?done=study-attach", 303)
    return RedirectResponse(f"/staff/studies/{uid}?done={action}", 303)

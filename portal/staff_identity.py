"""Identity mismatches on a request's staff page (``/staff/requests/{ref}/identity/…``).

A study a rule joined to a request but whose patient identity disagrees with the
request's is held (:mod:`release.matching`, :mod:`release.identity`); the request page
lists it with the fields that disagree and both sides' values (signed-in staff are
authorised to see them; the template escapes and bidi-isolates them). Two POST forms
(CSRF-checked like every staff form, no JavaScript needed), each requiring a reason:

- ``attach``: attach the study anyway (:func:`release.mismatch.attach_anyway`): the
  request moves on as matching would; timeline and ``identity-override`` audit event
  name the staff member.
- ``dismiss``: keep it held, never attached to this request nor alerted again
  (:func:`release.mismatch.dismiss`).

Refusals (no reason, already resolved, a request that takes no more studies)
re-render the page with the reason (409); nothing is written then.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from portal.site import context_of
from portal.staff_auth import CheckedForm, SignedIn
from portal.staff_requests import detail_page
from release.errors import InvalidRequest, InvalidTransition, RequestNotFound
from release.mismatch import attach_anyway, dismiss
from store.audit import actor_of
from store.catalog import guarded

log = logging.getLogger("courier.portal.staff")
router = APIRouter(prefix="/staff")


@router.post("/requests/{ref}/identity/{mismatch_id}/{action}")
def resolve(
    ref: str,
    mismatch_id: int,
    action: str,
    form: CheckedForm,
    request: Request,
    staff: SignedIn,
) -> Response:
    """``attach`` or ``dismiss`` one held study (see the module docstring)."""
    ctx = context_of(request)
    ref = ref[:64]
    if action not in ("attach", "dismiss"):
        return detail_page(request, ctx, staff, ref, error="Unknown action.", status=404)
    try:
        found = ctx.book.get(ref)
        with guarded(ctx.sessions) as s, s.begin():
            common = {
                "actor": staff.actor,
                "audit_actor": actor_of("staff", staff.username),
                "reason": form.get("reason"),
                "now": ctx.clock(),
            }
            if action == "attach":
                attach_anyway(s, ctx.book, found.id, mismatch_id, **common)  # type: ignore[arg-type]
            else:
                dismiss(s, found.id, mismatch_id, **common)  # type: ignore[arg-type]
    except RequestNotFound:
        return detail_page(request, ctx, staff, ref)
    except (InvalidRequest, InvalidTransition) as exc:
        return detail_page(request, ctx, staff, ref, error=str(exc), status=409)
    log.info(
        "staff %s: identity %s (mismatch %d) on request %s",
        staff.username,
        action,
        mismatch_id,
        found.reference,
    )
    return RedirectResponse(f"/staff/requests/{found.reference}?done=identity-{action}", 303)

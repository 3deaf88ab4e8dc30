"""The staff Keys page (``/staff/keys``): staff/RIS API keys for administrators.

Administrators are the staff usernames in ``portal.staff_admins`` (node.yaml): there is
no role column, so who may hand out API access is decided where the node's other
security settings are, reviewed with them, and changed by the node's operator. Other
staff get 403 here; ``courier apikey`` does the same from the console.

- ``GET``: every key (id, label, digest prefix, made by and when, last used, revoked),
  from the ``api_keys`` table; never a key itself.
- ``POST /staff/keys`` (``label``): makes a key and shows it on the answer, once, with
  ``Cache-Control: no-store``; only its digest is kept (:func:`portal.apikeys.create_key`).
- ``POST /staff/keys/{id}/revoke``: refused from the next API call on, in every process
  (:func:`portal.apikeys.revoke_key`, a conditional UPDATE: two admins revoking together
  record one revocation).

Both are CSRF-checked forms that work without JavaScript, audited as ``api-key`` with
``staff:<username>``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, Response

from portal.apikeys import LABEL_MAX, create_key, list_keys, revoke_key
from portal.context import PortalContext
from portal.site import context_of
from portal.staff_auth import CheckedForm, SignedIn, Staff
from portal.staff_requests import page
from store.catalog import guarded
from store.models import ApiKey

router = APIRouter(prefix="/staff")


def _forbidden(request: Request, ctx: PortalContext, staff: Staff) -> HTMLResponse:
    return page(
        request,
        ctx,
        staff,
        "staff/message.html.j2",
        403,
        title="API keys: administrators only",
        message="Only the staff named in portal.staff_admins (node.yaml) can manage API "
        "keys here; the node's operator can also use `courier apikey`.",
    )


def _keys_page(
    request: Request,
    ctx: PortalContext,
    staff: Staff,
    status: int = 200,
    **values: object,
) -> HTMLResponse:
    with guarded(ctx.sessions) as s:
        keys = list_keys(s)
    values = {"error": "", "notice": "", "made": None, **values}
    rsp = page(
        request, ctx, staff, "staff/keys.html.j2", status, keys=keys, label_max=LABEL_MAX, **values
    )
    rsp.headers["Cache-Control"] = "no-store"  # it may show a new key, once
    return rsp


def _admin(ctx: PortalContext, staff: Staff) -> bool:
    return staff.username in ctx.portal.staff_admins


@router.get("/keys", response_class=HTMLResponse)
def show_keys(request: Request, staff: SignedIn) -> Response:
    """Every API key, and the forms to make and revoke one (administrators)."""
    ctx = context_of(request)
    if not _admin(ctx, staff):
        return _forbidden(request, ctx, staff)
    return _keys_page(request, ctx, staff)


@router.post("/keys", response_class=HTMLResponse)
def make_key(form: CheckedForm, request: Request, staff: SignedIn) -> Response:
    """Make a key; the answer shows it once."""
    ctx = context_of(request)
    if not _admin(ctx, staff):
        return _forbidden(request, ctx, staff)
    label = form.get("label")
    if not label.strip():
        return _keys_page(
            request, ctx, staff, 422, error="Say who or what will use the key (a label)."
        )
    with guarded(ctx.sessions) as s, s.begin():
        key, row = create_key(s, label, staff.actor, ctx.clock())
        made = {"key": key, "id": row.id, "label": row.label}
    return _keys_page(request, ctx, staff, made=made)


@router.post("/keys/{key_id}/revoke", response_class=HTMLResponse)
def revoke(
    form: CheckedForm,
    request: Request,
    key_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    staff: SignedIn,
) -> Response:
    """Revoke one key; it is refused from the next API call on."""
    ctx = context_of(request)
    if not _admin(ctx, staff):
        return _forbidden(request, ctx, staff)
    with guarded(ctx.sessions) as s, s.begin():
        row = s.get(ApiKey, key_id)
        done = None if row is None else revoke_key(s, row, staff.actor, ctx.clock())
    if done is None:
        return _keys_page(request, ctx, staff, 404, error=f"There is no API key #{key_id}.")
    if not done:
        return _keys_page(request, ctx, staff, 409, error=f"API key #{key_id} was already revoked.")
    return _keys_page(
        request, ctx, staff, notice=f"API key #{key_id} revoked: refused from now on."
    )

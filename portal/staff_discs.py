"""The CD burn queue on a request's staff page (``/staff/requests/{ref}/disc-…``).

The queue itself is :mod:`delivery.discs`; "Mark for CD" (a ``staff`` job) is with the
other request actions in :mod:`portal.staff_actions`. Here, as POST forms (CSRF-checked
like every staff form) on the request page:

- ``disc-image``: writes ``<data_dir>/discs/<REF>.iso`` (:mod:`delivery.disc_images`).
  The handler is a plain ``def``, so FastAPI runs it in a worker thread: the image takes
  seconds to minutes and the server keeps answering meanwhile. Refused with a clear
  message (nothing written) when the request has no stored instance, a file is
  missing, or another writer holds the job.
- ``disc-burned``: the disc was burned: ``disc burned`` on the timeline and an
  ``export`` audit event (``staff:<username>``); the job leaves the queue.
- ``disc-cancel``: the job leaves the queue unburned; its image is deleted.

and ``GET disc.iso`` hands the written image to staff (``Cache-Control: no-store``:
it is a copy of patient data), audited as an ``export``. Every action is recorded on
the timeline as ``staff:<username>``; refusals re-render the page with the reason (409).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from delivery.disc_images import image_of, write_job_image
from delivery.discs import DiscQueue, DiscRefused
from portal.context import PortalContext
from portal.site import context_of
from portal.staff_auth import CheckedForm, SignedIn, Staff
from portal.staff_requests import detail_page, not_found
from release.errors import InvalidTransition, RequestNotFound
from release.requests import study_uids
from store.audit import actor_of, record
from store.catalog import guarded
from store.models import ReleaseRequest

log = logging.getLogger("courier.portal.staff")
router = APIRouter(prefix="/staff")


def disc_queue(ctx: PortalContext) -> DiscQueue:
    """The burn queue on the portal's sessions, outbox and clock."""
    return DiscQueue(
        ctx.sessions,
        ctx.outbox,
        cd_after_h=ctx.delivery.cd_after_h,
        data_dir=ctx.content.root if ctx.content is not None else None,
        clock=ctx.clock,
    )


def _write(ctx: PortalContext, request_id: int, staff: Staff) -> None:
    if ctx.content is None:
        raise DiscRefused("This node serves no stored instances here; use courier export-iso.")
    write_job_image(
        ctx.sessions,
        ctx.content,
        request_id,
        actor=staff.actor,
        audit_actor=actor_of("staff", staff.username),
        contact=ctx.contact,
        clock=ctx.clock,
        viewer=ctx.delivery.offline_viewer_options(),
    )


def _burned(ctx: PortalContext, request_id: int, staff: Staff) -> None:
    with guarded(ctx.sessions) as s, s.begin():
        req = s.get(ReleaseRequest, request_id)
        assert req is not None
        disc_queue(ctx).burned(
            s, req, staff.actor, ctx.clock(), audit_actor=actor_of("staff", staff.username)
        )


def _cancel(ctx: PortalContext, request_id: int, staff: Staff) -> None:
    queue = disc_queue(ctx)
    with guarded(ctx.sessions) as s, s.begin():
        req = s.get(ReleaseRequest, request_id)
        assert req is not None
        image = queue.cancel(s, req, staff.actor, ctx.clock())
    queue.delete_image(image)


DISC_ACTIONS: dict[str, Callable[[PortalContext, int, Staff], None]] = {
    "disc-image": _write,
    "disc-burned": _burned,
    "disc-cancel": _cancel,
}


def _action(name: str) -> Callable[..., Response]:
    def handler(ref: str, form: CheckedForm, request: Request, staff: SignedIn) -> Response:
        ctx = context_of(request)
        ref = ref[:64]
        try:
            found = ctx.book.get(ref)
            DISC_ACTIONS[name](ctx, found.id, staff)
        except RequestNotFound:
            return detail_page(request, ctx, staff, ref)
        except DiscRefused as exc:
            return detail_page(request, ctx, staff, ref, error=str(exc), status=409)
        except InvalidTransition:
            error = "Someone changed this request meanwhile; look at it again."
            return detail_page(request, ctx, staff, ref, error=error, status=409)
        log.info("staff %s: %s on request %s", staff.username, name, found.reference)
        return RedirectResponse(f"/staff/requests/{found.reference}?done={name}", 303)

    handler.__name__ = "staff_" + name.replace("-", "_")
    handler.__doc__ = f"The {name} action (see the module docstring)."
    return handler


for _name in DISC_ACTIONS:
    router.add_api_route(f"/requests/{{ref}}/{_name}", _action(_name), methods=["POST"])


@router.get("/requests/{ref}/disc.iso")
def download_image(ref: str, request: Request, staff: SignedIn) -> Response:
    """The open job's disc image, to burn (404 when none is written)."""
    ctx = context_of(request)
    path: Path | None = None
    try:
        found = ctx.book.get(ref[:64])
    except RequestNotFound:
        return not_found(request, ctx, staff, "No request has this reference.")
    if ctx.content is not None:
        with guarded(ctx.sessions) as s, s.begin():
            path = image_of(s, ctx.content, found.id)
            if path is not None:
                record(
                    s,
                    "export",
                    actor=actor_of("staff", staff.username),
                    studies=study_uids(s, found.id),
                    request=found.reference,
                    detail="disc image downloaded",
                    at=ctx.clock(),
                )
    if path is None:
        return not_found(request, ctx, staff, "No disc image is written for this request.")
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{found.reference}.iso",
        headers={"Cache-Control": "no-store"},
    )

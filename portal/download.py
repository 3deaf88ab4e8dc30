"""The signed-in pages: ``/files`` (what there is), its thumbnails and manifests, the
package download, and ``/signout``.

Downloads stream the ZIP part from disk in 1 MiB reads (memory stays flat whatever the
size or the number of downloads) with ``Range`` support, so a broken download resumes.
A download *completes* when the part's last byte has been handed to the connection
(a whole-file answer, or a range reaching the end); each completion is audited and
counts on ``Grant.downloads``, and the patient's first one moves the request
``notified → downloaded`` (opening the link and typing the code is not "downloaded":
that is recorded as ``first_opened_at`` and an event). A clinician's downloads are
audited but leave the request's state alone.
"""

from __future__ import annotations

import contextlib
import zipfile

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from portal.context import PortalContext
from portal.filespage import part_path, previews, render_files
from portal.forms import csrf_ok, read_form
from portal.grantsession import (
    SESSION_COOKIE,
    audit,
    end_session,
    forbidden,
    lock_grant,
    page,
    portal,
    session_grant,
    signed_out,
)
from portal.partfile import PartResponse
from release.errors import InvalidTransition
from store.models import Grant, Package, ReleaseRequest, RequestState

router = APIRouter()
CHUNK = 1024 * 1024


def _grant_and_package(ctx: PortalContext, request: Request) -> tuple[Grant, Package] | None:
    with ctx.sessions() as s:
        grant = session_grant(s, request, ctx)
        if grant is None:
            return None
        package = s.get(Package, grant.package_id)
        if package is None:
            return None
        s.expunge_all()
        return grant, package


@router.get("/files", include_in_schema=False)
async def files(request: Request) -> HTMLResponse:
    """The download page."""
    ctx = portal(request)

    def build() -> HTMLResponse:
        with ctx.sessions() as s:
            grant = session_grant(s, request, ctx)
            if grant is None:
                return signed_out(request)
            q = request.query_params
            notice = "shared" if q.get("shared") else "revoked" if q.get("revoked") else None
            return render_files(request, ctx, s, grant, notice=notice)

    return await run_in_threadpool(build)


@router.get("/files/preview/{n}", include_in_schema=False)
async def preview(request: Request, n: int) -> Response:
    """Thumbnail ``n`` (a JPEG read from the package's ``PREVIEW/``)."""
    ctx = portal(request)
    found = await run_in_threadpool(_grant_and_package, ctx, request)
    if found is None:
        return signed_out(request)
    _grant, package = found

    def read() -> bytes | None:
        refs = previews(ctx, package)
        if not 0 <= n < len(refs):
            return None
        path = part_path(ctx, package, refs[n].part)
        if path is None:
            return None
        with zipfile.ZipFile(path) as zf:
            return zf.read(refs[n].entry)

    data = await run_in_threadpool(read)
    if data is None:
        return Response(status_code=404)
    return Response(data, media_type="image/jpeg")


@router.get("/files/manifest/{part_name}", include_in_schema=False)
async def manifest_file(request: Request, part_name: str) -> Response:
    """A part's MANIFEST.json (every file's size and SHA-256), as a download."""
    ctx = portal(request)
    found = await run_in_threadpool(_grant_and_package, ctx, request)
    if found is None:
        return signed_out(request)
    path = part_path(ctx, found[1], part_name)
    if path is None or not path.is_file():
        return Response(status_code=404)

    def read() -> bytes:
        with zipfile.ZipFile(path) as zf:
            return zf.read("MANIFEST.json")

    data = await run_in_threadpool(read)
    name = part_name.removesuffix(".zip") + "-MANIFEST.json"
    return Response(
        data,
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def _completed(ctx: PortalContext, grant_id: int, part_name: str) -> None:
    """Record a completed download (see the module docstring)."""
    now = ctx.clock()
    with ctx.sessions() as s:
        grant = lock_grant(s, grant_id)
        grant.downloads += 1
        audit(s, grant, f"downloaded {part_name} (download {grant.downloads})", now)
        req = s.get(ReleaseRequest, grant.request_id)
        if grant.purpose != "forward" and req is not None and req.state == RequestState.NOTIFIED:
            with contextlib.suppress(InvalidTransition):  # another download won the move
                ctx.book.move(
                    s,
                    req,
                    RequestState.NOTIFIED,
                    RequestState.DOWNLOADED,
                    f"patient:grant-{grant.id}",
                    "the patient's first download completed",
                    now,
                )
        s.commit()


@router.api_route("/files/package/{part_name}", methods=["GET", "HEAD"], include_in_schema=False)
async def package(request: Request, part_name: str) -> Response:
    """Stream a ZIP part (``Range`` honoured; ``Cache-Control: no-store``)."""
    ctx = portal(request)
    found = await run_in_threadpool(_grant_and_package, ctx, request)
    if found is None:
        return signed_out(request)
    grant, pkg = found
    path = part_path(ctx, pkg, part_name)
    if path is None or not path.is_file():
        return Response(status_code=404)
    return PartResponse(
        path,
        media_type="application/zip",
        filename=part_name,
        headers={"Cache-Control": "no-store"},
        on_complete=lambda: _completed(ctx, grant.id, part_name),
    )


@router.post("/signout", include_in_schema=False)
async def signout(request: Request) -> Response:
    """End the session (the link still works: the code is asked again)."""
    form = await read_form(request)
    if not csrf_ok(request, form):
        return forbidden(request)
    ctx = portal(request)

    def end() -> None:
        with ctx.sessions() as s:
            end_session(s, request, ctx.clock())
            s.commit()

    await run_in_threadpool(end)
    response = page(request, "patient/signed_out.html.j2", by_choice=True)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response

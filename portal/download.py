"""The signed-in pages: ``/files`` (what there is), its thumbnails and manifests, the
package download, the per-study downloads, and ``/signout``.

Downloads stream the ZIP part from disk in 1 MiB reads (memory stays flat whatever the
size or the number of downloads) with ``Range`` support, so a broken download resumes.
A download *completes* when every byte of the file has been handed to the connections
of one session, in one answer or across ranges (:mod:`portal.coverage`; a range that
only touches the end is not a download); each completion is audited and
counts on ``Grant.downloads``, and the patient's first one moves the request
``notified → downloaded`` (opening the link and typing the code is not "downloaded":
that is recorded as ``first_opened_at`` and an event). A clinician's downloads are
audited but leave the request's state alone.

A request of several studies also offers each study alone, ``/files/study/{n}`` (``n``
its 1-based position on the page, never a UID or path), built on first request (see
:mod:`portal.studyzip`) and served like a part; its completion counts the same. When the
study's instances are gone from the store, the page says so (503) and the log names the
request id, the study UID and the reason only.
"""

from __future__ import annotations

import contextlib
import logging
import re
import zipfile

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from delivery.packaging.package import PackageError
from portal.context import PortalContext
from portal.coverage import add_sent
from portal.filespage import part_path, previews, render_files
from portal.forms import csrf_ok, read_form
from portal.grantsession import (
    SESSION_COOKIE,
    actor,
    audit,
    end_session,
    forbidden,
    lock_grant,
    page,
    portal,
    session_and_grant,
    session_grant,
    signed_out,
)
from portal.partfile import PartResponse, Spans
from portal.studyzip import StudyZip, ensure, study_zip
from release.errors import InvalidTransition
from store.audit import record as audit_event
from store.models import Grant, Package, ReleaseRequest, RequestState

log = logging.getLogger("courier.portal.download")
router = APIRouter()
CHUNK = 1024 * 1024
# A study's position as the page writes it: no sign, no leading zero, no space.
_POSITION = re.compile(r"[1-9][0-9]{0,5}")


def _grant_and_package(ctx: PortalContext, request: Request) -> tuple[Grant, Package] | None:
    found = _session_grant_package(ctx, request)
    return (found[1], found[2]) if found is not None else None


def _session_grant_package(
    ctx: PortalContext, request: Request
) -> tuple[int, Grant, Package] | None:
    """The session id, its live grant and the grant's package, or None."""
    with ctx.sessions() as s:
        found = session_and_grant(s, request, ctx)
        if found is None:
            return None
        session_id, grant = found
        package = s.get(Package, grant.package_id)
        if package is None:
            return None
        s.expunge_all()
        return session_id, grant, package


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


def _sent(
    ctx: PortalContext, session_id: int, grant_id: int, what: str, spans: Spans, size: int
) -> None:
    """Add ``spans`` of ``what`` (a part's name, or "study k (name)") to what session
    ``session_id`` has received; a completed download when that is now the whole file
    (see the module docstring)."""
    now = ctx.clock()
    with ctx.sessions() as s:
        grant = lock_grant(s, grant_id)  # serializes the coverage rows of the grant too
        if not add_sent(s, session_id, what[:300], spans, size, now):
            s.commit()
            return
        grant.downloads += 1
        audit(s, grant, f"downloaded {what} (download {grant.downloads})", now)
        req = s.get(ReleaseRequest, grant.request_id)
        audit_event(
            s,
            "export",
            actor=actor(grant),
            request=req.reference if req is not None else "",
            detail=f"downloaded {what}",
            at=now,
        )
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
    found = await run_in_threadpool(_session_grant_package, ctx, request)
    if found is None:
        return signed_out(request)
    session_id, grant, pkg = found
    path = part_path(ctx, pkg, part_name)
    if path is None or not path.is_file():
        return Response(status_code=404)
    return PartResponse(
        path,
        media_type="application/zip",
        filename=part_name,
        headers={"Cache-Control": "no-store"},
        on_sent=lambda spans, size: _sent(ctx, session_id, grant.id, part_name, spans, size),
    )


@router.api_route("/files/study/{n}", methods=["GET", "HEAD"], include_in_schema=False)
async def study(request: Request, n: str) -> Response:
    """Stream study ``n`` alone as a ZIP, built on first request (``Range`` honoured;
    ``Cache-Control: no-store``). A bad ``n`` gets the answer of any unknown file (404)."""
    ctx = portal(request)
    found = await run_in_threadpool(_session_grant_package, ctx, request)
    if found is None:
        return signed_out(request)
    session_id, grant, pkg = found
    if not _POSITION.fullmatch(n):
        return Response(status_code=404)

    def find() -> StudyZip | None:
        with ctx.sessions() as s:
            return study_zip(ctx, s, pkg, int(n))

    target = await run_in_threadpool(find)
    if target is None:
        return Response(status_code=404)
    try:
        path = await run_in_threadpool(ensure, ctx, pkg.folder, target)
    except PackageError as exc:
        # Staff act on the store; the patient is told to use the whole package.
        log.error(
            "request %d: study %s could not be packaged alone: %s (%s)",
            target.request_id,
            target.study_uid,
            type(exc).__name__,
            exc,
        )
        return await run_in_threadpool(_unavailable, ctx, request)
    what = f"study {target.number} ({target.name})"
    return PartResponse(
        path,
        media_type="application/zip",
        filename=target.name,
        headers={"Cache-Control": "no-store"},
        on_sent=lambda spans, size: _sent(ctx, session_id, grant.id, what, spans, size),
    )


def _unavailable(ctx: PortalContext, request: Request) -> Response:
    """The download page, saying the study cannot be downloaded alone (503)."""
    with ctx.sessions() as s:
        grant = session_grant(s, request, ctx)
        if grant is None:
            return signed_out(request)
        return render_files(request, ctx, s, grant, status_code=503, notice="study_unavailable")


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

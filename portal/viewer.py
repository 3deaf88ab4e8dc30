"""The portal's image viewer: ``/files/view/{k}/{j}/{n}`` and its pictures.

A quick look at the images in the browser, with nothing to install: one image at a time,
rendered on the server (:mod:`portal.viewer_render`) at screen size, with links to the
previous and next image and to each window preset, so it works without JavaScript; with
it, ``/static/viewer.js`` adds the keyboard, wheel, swipe, slider, drag windowing, zoom
and pan (one same-origin script and stylesheet: the portal's CSP unchanged).

Addresses hold positions only (study ``k``, series ``j``, image ``n``, 1-based, see
:mod:`portal.viewer_data`) and a preset name (``w``) or a window (``c``, ``ww``): never a
UID or anything about the patient.

Access is the downloads': the session's live grant (expiry, revocation, lockout), or the
signed-out page. A position that does not exist is the 404 page; an image that cannot be
drawn is a placeholder picture (and the page says so), never a server error. Opening
the viewer on a study is audited once per session and study: an event on the request and
a PS3.15 ``export`` event (DICOM Instances Accessed... as a download is), not one per image
(its pictures and thumbnails fetched alone count too; a per-process memo spares a query each).

Routes:
- ``GET /files/view/{k}/{j}/{n}``: the page (``?w=<preset>`` or ``?c=&ww=``).
- ``GET /files/view/{k}/{j}/{n}/image``: its picture (JPEG; same query).
- ``GET /files/view/{k}/{j}/thumb``: the series' thumbnail (its middle image).
- ``GET /files/view/{k}/{j}/doc/{d}``: document ``d`` of the series (a PDF as a file,
  a structured report as a readable page).

When the package carries radiology reports (``REPORT/``, ``delivery.reports:
with_images``), every viewer page lists them with links to the files page's
``/files/report/{n}`` (:mod:`portal.reports_page`: HTML sandboxed, PDF as received).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pydicom
from fastapi import APIRouter, Request, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from imaging import Window, find_preset, presets
from portal.context import PortalContext
from portal.grantsession import (
    actor,
    audit,
    lock_grant,
    page,
    portal,
    session_and_grant,
    signed_out,
)
from portal.pages import language
from portal.reports_page import report_section
from portal.site import error_page
from portal.viewer_data import (
    SeriesIndex,
    StudyRow,
    series_index,
    viewer_folder,
    viewer_studies,
)
from portal.viewer_render import (
    BUSY_RETRY_AFTER_S,
    THUMB_SIDE,
    VIEW_SIDE,
    Busy,
    Voi,
    picture,
    warm,
)
from portal.viewer_sr import sr_lines
from store.audit import record as audit_event
from store.models import Grant, Package, ReleaseRequest, RequestEvent

router = APIRouter()
_POSITION = re.compile(r"[1-9][0-9]{0,5}")
_INT = re.compile(r"-?[0-9]{1,6}")
_JPEG_HEADERS = {"Cache-Control": "private, no-store"}
_VIEWED_MAX = 10_000  # PortalContext.viewed is cleared beyond this
#: Documents larger than this on disk are not read into memory: the page says they cannot
#: be shown here (the DICOM files in the download have them). An encapsulated PDF...
MAX_PDF_BYTES = 64 * 1024 * 1024
#: ...and a structured report (its text only; read without any pixel data).
MAX_SR_BYTES = 16 * 1024 * 1024


@dataclass
class Target:
    """What one request addresses, once found and allowed."""

    session_id: int
    grant: Grant
    package: Package
    studies: list[StudyRow]
    study: StudyRow
    series_number: int
    index: SeriesIndex


def _pos(value: str) -> int | None:
    return int(value) if _POSITION.fullmatch(value) else None


def _find(ctx: PortalContext, request: Request, k: str, j: str) -> Target | Response:
    """The session's target (blocking): signed-out page, 404 page, or the target."""
    with ctx.sessions() as s:
        found = session_and_grant(s, request, ctx)
        if found is None:
            return signed_out(request)
        session_id, grant = found
        package = s.get(Package, grant.package_id)
        if package is None:
            return signed_out(request)
        study_n, series_n = _pos(k), _pos(j)
        if ctx.content is None or study_n is None or series_n is None:
            return error_page(request, 404)
        withheld = ctx.withheld(s, grant.request_id)  # the report policy's
        studies = viewer_studies(s, grant.request_id, withheld)
        if study_n > len(studies) or series_n > len(studies[study_n - 1].series):
            return error_page(request, 404)
        study = studies[study_n - 1]
        row = study.series[series_n - 1]
        index = series_index(ctx, s, package, row.series_id, withheld)
        s.expunge_all()
        return Target(session_id, grant, package, studies, study, series_n, index)


def _voi(request: Request, choices: list[Window]) -> tuple[Voi, str, Window | None]:
    """The window the query asks for: (Voi, its query string, the preset or None)."""
    q = request.query_params
    c, ww = q.get("c", ""), q.get("ww", "")
    if _INT.fullmatch(c) and _INT.fullmatch(ww) and choices and 1 <= int(ww) <= 200_000:
        return Voi(float(c), float(ww)), urlencode({"c": c, "ww": ww}), None
    chosen = find_preset(choices, q.get("w", "")) if choices else None
    if chosen is None or chosen.id == "auto":
        return Voi(), "", choices[0] if choices else None
    if chosen.width == 0:
        return Voi(minmax=True), urlencode({"w": chosen.id}), chosen
    return Voi(chosen.centre, chosen.width), urlencode({"w": chosen.id}), chosen


def _choices(index: SeriesIndex) -> list[Window]:
    return presets(index.modality, tuple(index.windows), index.colour)


def _audit_view(ctx: PortalContext, target: Target) -> None:
    """Once per session and study (see the module docstring)."""
    grant, k = target.grant, target.study.number
    reason = f"viewed study {k} in the viewer (session {target.session_id})"
    key = (grant.request_id, reason)
    if key in ctx.viewed:  # recorded already (by this process): no query per image
        return
    if len(ctx.viewed) >= _VIEWED_MAX:
        ctx.viewed.clear()
    seen = select(RequestEvent.id).where(
        RequestEvent.request_id == grant.request_id, RequestEvent.reason == reason
    )
    with ctx.sessions() as s:
        if s.scalar(seen.limit(1)) is not None:
            ctx.viewed.add(key)
            return
        locked = lock_grant(s, grant.id)  # two first views at once record one
        if s.scalar(seen.limit(1)) is not None:
            s.commit()
            ctx.viewed.add(key)
            return
        now = ctx.clock()
        audit(s, locked, reason, now)
        req = s.get(ReleaseRequest, grant.request_id)
        audit_event(
            s,
            "export",
            actor=actor(locked),
            studies=[target.study.study_uid],
            request=req.reference if req is not None else "",
            detail=f"viewed study {k} in the portal viewer",
            at=now,
        )
        s.commit()
    ctx.viewed.add(key)


def _frame_picture(
    ctx: PortalContext, target: Target, n: int, side: int, voi: Voi
) -> tuple[bytes, bool]:
    assert ctx.content is not None
    frame = target.index.frames[n - 1]
    return picture(
        ctx,
        viewer_folder(ctx, target.package),
        ctx.package_dir / target.package.folder,
        instance_id=frame.instance_id,
        path=ctx.content.path(frame.path),
        frame=frame.frame,
        side=side,
        voi=voi,
    )


def _base(target: Target) -> str:
    return f"/files/view/{target.study.number}/{target.series_number}"


def _position_text(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


@router.get("/files/view/{k}/{j}/thumb", include_in_schema=False)
async def view_thumb(request: Request, k: str, j: str) -> Response:
    """The series' thumbnail: its middle image, as stored (a series of documents: 404).
    Registered before the page's route, whose ``{n}`` would take "thumb"."""
    ctx = portal(request)
    found = await run_in_threadpool(_find, ctx, request, k, j)
    if isinstance(found, Response):
        return found
    count = len(found.index.frames)
    if count == 0:
        return error_page(request, 404)
    await run_in_threadpool(_audit_view, ctx, found)
    try:
        data, _drawn = await run_in_threadpool(
            _frame_picture, ctx, found, count // 2 + 1, THUMB_SIDE, Voi()
        )
    except Busy:
        return _busy()
    return Response(data, media_type="image/jpeg", headers=_JPEG_HEADERS)


def _busy() -> Response:
    """Every renderer stayed busy: 503 with Retry-After (the browser asks again)."""
    headers = {**_JPEG_HEADERS, "Retry-After": str(BUSY_RETRY_AFTER_S)}
    return Response("busy, try again shortly", status_code=503, headers=headers)


@router.get("/files/view/{k}/{j}/{n}", include_in_schema=False)
async def view_page(request: Request, k: str, j: str, n: str) -> Response:
    """The viewer page of image ``n`` of series ``j`` of study ``k``."""
    ctx = portal(request)
    found = await run_in_threadpool(_find, ctx, request, k, j)
    if isinstance(found, Response):
        return found
    warm(ctx)  # usually running already: the files page started it
    target = found
    count = len(target.index.frames)
    number = _pos(n)
    if number is None or number > max(count, 1) or (count == 0 and not target.index.documents):
        return error_page(request, 404)
    await run_in_threadpool(_audit_view, ctx, target)
    reports = await run_in_threadpool(report_section, ctx, target.package)
    choices = _choices(target.index)
    voi, query, chosen = _voi(request, choices)
    drawn = True
    if count:
        # Busy: not known yet; the image's own request answers 503 and is retried.
        with contextlib.suppress(Busy):
            _data, drawn = await run_in_threadpool(
                _frame_picture, ctx, target, number, VIEW_SIDE, voi
            )
    base = _base(target)
    suffix = f"?{query}" if query else ""
    lang = language(request, target.grant.language)
    context: dict[str, Any] = {
        "study": target.study,
        "series": target.study.series,
        "series_number": target.series_number,
        "count": count,
        "n": number,
        "base": base,
        "suffix": suffix,
        "image": f"{base}/{number}/image{suffix}",
        "prev": f"{base}/{number - 1}{suffix}" if number > 1 else None,
        "next": f"{base}/{number + 1}{suffix}" if number < count else None,
        "presets": [
            {
                "id": w.id,
                "label": w.label,
                "href": f"{base}/{number}" + ("" if w.id == "auto" else f"?w={w.id}"),
                "centre": "" if w.centre is None else f"{w.centre:g}",
                "width": "" if w.width is None else f"{w.width:g}",
                "current": chosen is not None and w.id == chosen.id,
            }
            for w in choices
        ],
        "window": _current_window(target.index, voi),
        "auto_window": _current_window(target.index, Voi()),
        "position": _position_text(target.index.frames[number - 1].position) if count else "",
        "positions": ",".join(_position_text(f.position) for f in target.index.frames),
        "drawn": drawn,
        "documents": [
            {"kind": d.kind, "href": f"{base}/doc/{i}"}
            for i, d in enumerate(target.index.documents, start=1)
        ],
        "studies": target.studies,
        **reports,  # the package's REPORT/ files, the files page's /files/report/{n}
    }
    return page(request, "patient/viewer.html.j2", lang=lang, **context)


def _current_window(index: SeriesIndex, voi: Voi) -> tuple[str, str]:
    """The window drawn, for drag windowing to start from ("" when not known)."""
    if voi.window is not None:
        return f"{voi.window[0]:g}", f"{voi.window[1]:g}"
    if not voi.minmax and index.windows and not index.colour:
        c, w = index.windows[0]
        return f"{c:g}", f"{w:g}"
    return "", ""


@router.get("/files/view/{k}/{j}/{n}/image", include_in_schema=False)
async def view_image(request: Request, k: str, j: str, n: str) -> Response:
    """The picture of image ``n`` (JPEG; a placeholder when it cannot be drawn)."""
    ctx = portal(request)
    found = await run_in_threadpool(_find, ctx, request, k, j)
    if isinstance(found, Response):
        return found
    number = _pos(n)
    if number is None or number > len(found.index.frames):
        return error_page(request, 404)
    await run_in_threadpool(_audit_view, ctx, found)
    voi, _query, _chosen = _voi(request, _choices(found.index))
    try:
        data, _drawn = await run_in_threadpool(_frame_picture, ctx, found, number, VIEW_SIDE, voi)
    except Busy:
        return _busy()
    return Response(data, media_type="image/jpeg", headers=_JPEG_HEADERS)


def _read_document(path: Path, kind: str) -> pydicom.Dataset | None:
    """Document ``path`` of ``kind`` ("pdf" or "sr"); None when unreadable or larger than
    :data:`MAX_PDF_BYTES` / :data:`MAX_SR_BYTES` (the page says it cannot be shown)."""
    try:
        if path.stat().st_size > (MAX_PDF_BYTES if kind == "pdf" else MAX_SR_BYTES):
            return None
        return pydicom.dcmread(path, stop_before_pixels=kind != "pdf")
    except Exception:  # an unreadable document: the page says it cannot be shown
        return None


@router.get("/files/view/{k}/{j}/doc/{d}", include_in_schema=False)
async def view_document(request: Request, k: str, j: str, d: str) -> Response:
    """Document ``d``: an encapsulated PDF as a file, a structured report as text."""
    ctx = portal(request)
    found = await run_in_threadpool(_find, ctx, request, k, j)
    if isinstance(found, Response):
        return found
    number = _pos(d)
    if number is None or number > len(found.index.documents) or ctx.content is None:
        return error_page(request, 404)
    await run_in_threadpool(_audit_view, ctx, found)
    doc = found.index.documents[number - 1]
    ds = await run_in_threadpool(_read_document, ctx.content.path(doc.path), doc.kind)
    lang = language(request, found.grant.language)
    back = f"{_base(found)}/1"
    if ds is not None and doc.kind == "pdf":
        data = ds.get("EncapsulatedDocument")
        if isinstance(data, bytes) and data.startswith(b"%PDF"):
            name = f"document-{found.study.number}-{found.series_number}-{number}.pdf"
            return Response(
                data.rstrip(b"\0") if data.endswith(b"\0") else data,
                media_type="application/pdf",
                headers={"Content-Disposition": f'attachment; filename="{name}"'},
            )
    lines = sr_lines(ds) if ds is not None and doc.kind == "sr" else None
    return page(
        request,
        "patient/viewer_document.html.j2",
        lang=lang,
        lines=lines,
        back=back,
        study=found.study,
    )

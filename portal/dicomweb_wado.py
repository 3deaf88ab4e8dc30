"""WADO-RS (PS3.18 10.4): retrieving a grant's instances, metadata, frames, renderings.

- ``GET /dicomweb/studies/{study}``, ``…/series/{series}``, ``…/instances/{sop}``:
  ``multipart/related; type="application/dicom"``, each part a stored file (never
  transcoded) without the sender in its meta group (:class:`store.filemeta.OutgoingFile`),
  every other byte as stored, streamed from the content store in 1 MiB reads.
- ``…/metadata`` at each level: ``application/dicom+json``, every header attribute
  (pixel data left out; other binary values over 64 KiB as a ``BulkDataURI`` to the
  instance), plus ``AvailableTransferSyntaxUID``; each instance's JSON is made once and
  kept beside the viewer's pictures (:mod:`portal.dicomweb_metadata`).
- ``…/instances/{sop}/frames/{list}``: the frames (1-based, comma-separated) as stored:
  uncompressed frames as ``application/octet-stream`` (Explicit VR Little Endian bytes),
  compressed ones in their own encoding (``image/jpeg``, ``image/jls``, ``image/jp2``,
  ``image/jphc``, ``image/dicom-rle``) with the ``transfer-syntax`` parameter. Only the
  asked frames are read from the file, found by its offset tables or fragment headers
  (:mod:`portal.dicomweb_frames`), never the whole pixel data (but for the rare Deflated
  and Big Endian files, read whole).
- ``…/instances/{sop}/rendered`` and ``…/frames/{n}/rendered``: a JPEG (or PNG when
  only ``image/png`` is accepted) drawn by :mod:`imaging` in its limited child process
  (``delivery.preview_*`` limits), at most ``viewport`` (``w,h``) or 1024 pixels on its
  longer side. An image that cannot be drawn is 422, a render out of time 503.

Anything outside the grant is 404 (:mod:`portal.dicomweb_scope`); the first retrieval of
a study by a token is audited once. Logs name no UID.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from imaging import ImagingError, RenderLimits, RenderTimeout, render_frame
from portal.context import PortalContext
from portal.dicomweb_frames import FrameSource, NoFrame, frame_source
from portal.dicomweb_metadata import metadata
from portal.dicomweb_qido import DICOM_JSON
from portal.dicomweb_scope import (
    CORS_HEADERS,
    Scope,
    Stored,
    audit_once,
    authorize,
    instances,
    refusal,
)
from portal.site import context_of
from store.filemeta import MalformedMeta, OutgoingFile

log = logging.getLogger("courier.portal.dicomweb")
router = APIRouter()
CHUNK = 1024 * 1024
_MAX_FRAMES = 1000
_FRAMES = re.compile(r"^[1-9][0-9]{0,8}(,[1-9][0-9]{0,8})*$")

# -- who and what ----------------------------------------------------------------------


async def _targets(
    request: Request, study: str, series: str | None = None, sop: str | None = None
) -> tuple[PortalContext, Scope, list[Stored]] | Response:
    """The caller's scope and the instances asked for (one trip to a worker thread:
    token, grant, look-up and the audit), or the refusal to send."""
    ctx = context_of(request)

    def find() -> tuple[PortalContext, Scope, list[Stored]] | Response:
        scope = authorize(ctx, request)
        if not isinstance(scope, Scope):
            return scope
        with ctx.sessions() as s:
            found = instances(s, scope, study, series, sop)
        if not found:
            return refusal(404, "no such study, series or instance here")
        audit_once(ctx, request, scope, study)
        return ctx, scope, found

    return await run_in_threadpool(find)


def _path(ctx: PortalContext, x: Stored) -> Path:
    assert ctx.content is not None  # authorize refused otherwise
    return ctx.content.path(x.relpath)


# -- instances -------------------------------------------------------------------------


def _multipart(ctx: PortalContext, found: list[Stored], boundary: str) -> Iterator[bytes]:
    for x in found:
        try:
            # Without the sender in its meta group; closed below, between yields.
            fh = OutgoingFile(_path(ctx, x))
        except (OSError, MalformedMeta) as exc:
            # Gone since the index said otherwise, or a malformed meta group (checked
            # before the part starts): the part is left out, the log says so.
            log.error("DICOMweb: a stored instance could not be read (%s)", type(exc).__name__)
            continue
        try:
            yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            while chunk := fh.read(CHUNK):
                yield chunk
            yield b"\r\n"
        finally:
            fh.close()
    yield f"--{boundary}--\r\n".encode()


async def _retrieve(
    request: Request, study: str, series: str | None = None, sop: str | None = None
) -> Response:
    got = await _targets(request, study, series, sop)
    if isinstance(got, Response):
        return got
    ctx, _scope, found = got
    boundary = secrets.token_hex(16)
    return StreamingResponse(
        _multipart(ctx, found, boundary),
        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
        headers=CORS_HEADERS,
    )


@router.get("/dicomweb/studies/{study}", include_in_schema=False)
async def retrieve_study(request: Request, study: str) -> Response:
    return await _retrieve(request, study)


@router.get("/dicomweb/studies/{study}/series/{series}", include_in_schema=False)
async def retrieve_series(request: Request, study: str, series: str) -> Response:
    return await _retrieve(request, study, series)


@router.get("/dicomweb/studies/{study}/series/{series}/instances/{sop}", include_in_schema=False)
async def retrieve_instance(request: Request, study: str, series: str, sop: str) -> Response:
    return await _retrieve(request, study, series, sop)


# -- metadata --------------------------------------------------------------------------


async def _metadata_of(
    request: Request, study: str, series: str | None = None, sop: str | None = None
) -> Response:
    got = await _targets(request, study, series, sop)
    if isinstance(got, Response):
        return got
    ctx, scope, found = got
    body = await run_in_threadpool(metadata, ctx, scope, found)
    return Response(body, media_type=DICOM_JSON, headers=CORS_HEADERS)


@router.get("/dicomweb/studies/{study}/metadata", include_in_schema=False)
async def study_metadata(request: Request, study: str) -> Response:
    return await _metadata_of(request, study)


@router.get("/dicomweb/studies/{study}/series/{series}/metadata", include_in_schema=False)
async def series_metadata(request: Request, study: str, series: str) -> Response:
    return await _metadata_of(request, study, series)


@router.get(
    "/dicomweb/studies/{study}/series/{series}/instances/{sop}/metadata",
    include_in_schema=False,
)
async def instance_metadata(request: Request, study: str, series: str, sop: str) -> Response:
    return await _metadata_of(request, study, series, sop)


# -- frames ----------------------------------------------------------------------------


def _frame_parts(source: FrameSource, numbers: list[int], boundary: str) -> Iterator[bytes]:
    """One chunk per frame (its part header, the frame, the CRLF), then the closing
    delimiter; the file is opened once."""
    head = (
        f"--{boundary}\r\nContent-Type: {source.media}; "
        f"transfer-syntax={source.transfer_syntax}\r\n\r\n"
    ).encode()
    with open(source.path, "rb", buffering=0) as fh:  # every read is one frame's bytes
        for number in numbers:
            yield b"".join((head, source.read(fh, number), b"\r\n"))
    yield f"--{boundary}--\r\n".encode()


@router.get(
    "/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/{frames}",
    include_in_schema=False,
)
async def frames(request: Request, study: str, series: str, sop: str, frames: str) -> Response:
    if not _FRAMES.match(frames) or frames.count(",") >= _MAX_FRAMES:
        return refusal(400, f"frames: 1-based numbers separated by commas, at most {_MAX_FRAMES}")
    got = await _targets(request, study, series, sop)
    if isinstance(got, Response):
        return got
    ctx, _scope, found = got
    numbers = [int(n) for n in frames.split(",")]
    boundary = secrets.token_hex(16)
    try:
        # The first frame is read before answering: a bad file is refused, not cut short.
        source, parts, first = await run_in_threadpool(
            _first_frame, _path(ctx, found[0]), numbers, boundary
        )
    except NoFrame:
        return refusal(404, "no such frame")
    except Exception as exc:  # a corrupt file: nothing to send
        log.warning("DICOMweb: frames could not be read (%s)", type(exc).__name__)
        return refusal(422, "the frames of this instance cannot be read")
    media, ts = source.media, source.transfer_syntax
    kind = f'multipart/related; type="{media}"; transfer-syntax={ts}; boundary={boundary}'
    if len(numbers) == 1:  # the usual call of a viewer: one frame, one answer
        return Response(first + next(parts), media_type=kind, headers=CORS_HEADERS)
    return StreamingResponse(_chain([first], parts), media_type=kind, headers=CORS_HEADERS)


def _first_frame(
    path: Path, numbers: list[int], boundary: str
) -> tuple[FrameSource, Iterator[bytes], bytes]:
    source = frame_source(path)
    if any(n > source.count for n in numbers):
        raise NoFrame("no such frame")
    parts = _frame_parts(source, numbers, boundary)
    return source, parts, next(parts)


def _chain(first: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    yield from first
    yield from rest


# -- rendered --------------------------------------------------------------------------


def _size(request: Request) -> int:
    viewport = request.query_params.get("viewport", "")
    try:
        sides = [int(v) for v in viewport.split(",")[:2] if v.strip()]
    except ValueError:
        sides = []
    wanted = max(sides) if sides else 1024
    return max(16, min(wanted, 2048))


def _format(request: Request) -> str:
    accept = request.headers.get("accept", "").lower()
    if "image/png" in accept and "image/jpeg" not in accept and "*/*" not in accept:
        return "png"
    return "jpeg"


async def _rendered(request: Request, study: str, series: str, sop: str, frame: int) -> Response:
    got = await _targets(request, study, series, sop)
    if isinstance(got, Response):
        return got
    ctx, _scope, found = got
    fmt = _format(request)
    limits = RenderLimits(
        ctx.delivery.preview_max_pixels,
        ctx.delivery.preview_memory_mb,
        ctx.delivery.preview_timeout_s,
    )
    path = _path(ctx, found[0])
    try:
        data = await run_in_threadpool(
            render_frame, path, frame, _size(request), limits, "png" if fmt == "png" else "jpeg"
        )
    except RenderTimeout:
        return refusal(503, "drawing this image took too long; try again", {"Retry-After": "5"})
    except ImagingError:
        return refusal(422, "this image cannot be drawn here (the instance itself can be)")
    except OSError as exc:
        log.warning("DICOMweb: an image could not be drawn (%s)", type(exc).__name__)
        return refusal(422, "this image cannot be drawn here (the instance itself can be)")
    return Response(data, media_type=f"image/{fmt}", headers=CORS_HEADERS)


@router.get(
    "/dicomweb/studies/{study}/series/{series}/instances/{sop}/rendered",
    include_in_schema=False,
)
async def rendered(request: Request, study: str, series: str, sop: str) -> Response:
    return await _rendered(request, study, series, sop, 0)


@router.get(
    "/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/rendered",
    include_in_schema=False,
)
async def frame_rendered(
    request: Request, study: str, series: str, sop: str, frame: str
) -> Response:
    if not re.fullmatch(r"[1-9][0-9]{0,8}", frame):
        return refusal(400, "frame: one 1-based number")
    return await _rendered(request, study, series, sop, int(frame) - 1)

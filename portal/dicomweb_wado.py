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
a study by a token is audited once. Logs name no UID, but for an instance whose stored
file cannot be read (its SOP Instance UID: staff need it to find the file).

A file that cannot be read (gone, damaged, not the size the index holds) is found before
an answer starts (:mod:`portal.dicomweb_partial`): a study or series retrieve, or its
metadata, answers 206 with a ``Warning`` and the readable instances (404 when none is);
frames and renderings of such an instance are 404 (file gone) or 422 (damaged); each
is logged and noted on the study's timeline for staff.
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
from portal.dicomweb_partial import (
    check,
    flagged_missing,
    headers,
    path_of,
    split,
    tell_staff,
    unreadable,
)
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


_path = path_of


# -- instances -------------------------------------------------------------------------


class CutShort(Exception):
    """An instance checked readable could not be read once its turn came; the answer is
    ended without its closing delimiter (its status is out already)."""


def _multipart(ctx: PortalContext, found: list[Stored], boundary: str) -> Iterator[bytes]:
    """Each of ``found`` (checked readable by :func:`portal.dicomweb_partial.split`) as a
    part, then the closing delimiter. A file gone or damaged since the check raises
    :class:`CutShort` before its part starts, one failing mid-read re-raises: either
    way the body ends without its closing delimiter, so it never looks complete."""
    for x in found:
        try:
            # Without the sender in its meta group; closed below, between yields.
            fh = OutgoingFile(_path(ctx, x))
        except (OSError, MalformedMeta) as exc:
            unreadable(x, exc)
            raise CutShort("an instance became unreadable while the answer was sent") from exc
        try:
            yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            while chunk := fh.read(CHUNK):
                yield chunk
            yield b"\r\n"
        except OSError as exc:
            unreadable(x, exc)
            raise
        finally:
            fh.close()
    yield f"--{boundary}--\r\n".encode()


def _checked(
    ctx: PortalContext,
    scope: Scope,
    found: list[Stored],
    study: str,
    series: str | None,
    sop: str | None,
) -> tuple[list[Stored], int]:
    """The readable ones of ``found`` and how many asked for are not (unreadable now, or
    flagged missing already); staff are told of any. Blocking."""
    good, bad = split(ctx, found)
    missing = len(bad) + flagged_missing(ctx, scope, study, series, sop)
    if missing:
        tell_staff(ctx, scope, study, missing, len(found) + missing - len(bad))
    return good, missing


async def _retrieve(
    request: Request, study: str, series: str | None = None, sop: str | None = None
) -> Response:
    got = await _targets(request, study, series, sop)
    if isinstance(got, Response):
        return got
    ctx, scope, found = got
    good, missing = await run_in_threadpool(_checked, ctx, scope, found, study, series, sop)
    if not good:  # PS3.18: none of the content asked for can be returned
        return refusal(404, "the stored files of what was asked for cannot be read")
    boundary = secrets.token_hex(16)
    return StreamingResponse(
        _multipart(ctx, good, boundary),
        status_code=206 if missing else 200,
        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
        headers=headers(missing, len(good) + missing),
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

    def answer() -> tuple[bytes, int, int]:
        # Only instances a retrieve would return are listed (a kept JSON is not proof
        # that the file is still there); a header that does not parse is left out too.
        good, missing = _checked(ctx, scope, found, study, series, sop)
        body, left_out = metadata(ctx, scope, good)
        return body, len(good) - len(left_out), missing + len(left_out)

    body, listed, missing = await run_in_threadpool(answer)
    if not listed:
        return refusal(404, "the stored files of what was asked for cannot be read")
    return Response(
        body,
        status_code=206 if missing else 200,
        media_type=DICOM_JSON,
        headers=headers(missing, listed + missing),
    )


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
    ctx, scope, found = got
    numbers = [int(n) for n in frames.split(",")]
    boundary = secrets.token_hex(16)
    try:
        # The first frame is read before answering: a bad file is refused, not cut short.
        source, parts, first = await run_in_threadpool(
            _first_frame, _path(ctx, found[0]), found[0].size_bytes, numbers, boundary
        )
    except NoFrame:
        return refusal(404, "no such frame")
    except Exception as exc:  # gone, or a corrupt file: nothing to send
        return await _broken(ctx, scope, found[0], exc, "frames")
    media, ts = source.media, source.transfer_syntax
    kind = f'multipart/related; type="{media}"; transfer-syntax={ts}; boundary={boundary}'
    if len(numbers) == 1:  # the usual call of a viewer: one frame, one answer
        return Response(first + next(parts), media_type=kind, headers=CORS_HEADERS)
    return StreamingResponse(_chain([first], parts), media_type=kind, headers=CORS_HEADERS)


def _first_frame(
    path: Path, size_bytes: int, numbers: list[int], boundary: str
) -> tuple[FrameSource, Iterator[bytes], bytes]:
    check(path, size_bytes)  # gone or changed: refused as such, not as a bad frame
    source = frame_source(path)
    if any(n > source.count for n in numbers):
        raise NoFrame("no such frame")
    parts = _frame_parts(source, numbers, boundary)
    return source, parts, next(parts)


async def _broken(
    ctx: PortalContext, scope: Scope, x: Stored, exc: BaseException, what: str
) -> Response:
    """The refusal for an instance whose file cannot be read (logged with its SOP
    Instance UID, noted on the study's timeline for staff): 404 when the file is gone
    (there is nothing to return), 422 when it is there but cannot be read."""
    unreadable(x, exc)
    await run_in_threadpool(tell_staff, ctx, scope, x.study_uid, 1, 1)
    if isinstance(exc, FileNotFoundError):
        return refusal(404, "the stored file of this instance is missing; staff have been told")
    return refusal(422, f"the {what} of this instance cannot be read; staff have been told")


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
    ctx, scope, found = got
    fmt = _format(request)
    limits = RenderLimits(
        ctx.delivery.preview_max_pixels,
        ctx.delivery.preview_memory_mb,
        ctx.delivery.preview_timeout_s,
    )
    path = _path(ctx, found[0])
    try:
        await run_in_threadpool(check, path, found[0].size_bytes)
    except (OSError, MalformedMeta) as exc:
        return await _broken(ctx, scope, found[0], exc, "image")
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

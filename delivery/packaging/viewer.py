"""The offline viewer: ``VIEWER/`` in every package part and on every disc.

A patient without a DICOM viewer double-clicks ``VIEWER/index.html`` in the unzipped
folder (or on the mounted disc, where ``INDEX.HTM`` at the root leads there) and sees
their images in any current browser, with no server and no network:

- ``index.html``: the page, in the request's language (the ``readme`` catalog), listing
  every series of the part with a plain link to each image, so it works without
  JavaScript; with JavaScript, ``viewer.js`` turns that list into a one-image-at-a-time
  viewer (next/previous, arrow keys, wheel, slider, series picker). The script reads the
  list from the page itself: nothing is fetched (browsers block fetch/XHR of ``file://``);
- ``viewer.js`` and ``viewer.css``: static, the same for every package (no inline script
  or style, no other origin);
- ``S<series>/<n>.jpg``: every instance pre-rendered (every frame of a multi-frame
  instance, such as an ultrasound cine or an enhanced CT, up to :data:`MAX_FRAMES`
  evenly spaced) as a JPEG at
  display size (``max_side``, 1024 px on the long side by default) with the header's VOI
  window, by one limited child process per package (an :class:`imaging.Renderer`; plain
  greyscale slices go through :func:`imaging.render.render_file`'s lookup table).

Header text shown on the page (series description, modality) is untrusted: escaped by
the template, control and bidi characters made visible (:func:`shown`), and isolated in
``<bdi>``. No patient name or ID is shown: the page names the series, not the patient.

Rendering runs in a thread (:class:`ImageSpool`) ahead of the package's writer, into a
hidden ``.partial`` spool folder beside the package (swept like any partial file), so the
images cost the packaging process no memory and the instances are copied meanwhile. An
image that cannot be rendered is left out with a note on the page and in the manifest;
the package is built anyway. Image names are ISO 9660 level 1 safe (``S001/00001.jpg``:
8.3, one case) so a disc can carry them unchanged.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import threading
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom

from delivery.i18n import SOURCE_LANGUAGE, environment
from imaging import ImagingError, Renderer, RenderLimits, declared_size
from imaging.info import spread
from store.content import DIR_MODE, FILE_MODE
from telemetry import text

if TYPE_CHECKING:
    from delivery.packaging.package import PackageInfo, PackageItem

#: The folder inside a part (and on a disc) that holds the viewer.
FOLDER = "VIEWER"
#: The page a patient opens.
INDEX = f"{FOLDER}/index.html"
ASSETS = Path(__file__).with_name("viewer_assets")
#: Static files copied as they are (name inside VIEWER/).
STATIC = ("viewer.js", "viewer.css")
#: The JPEG quality the renderer's child uses itself; other qualities are re-encoded.
NATIVE_QUALITY = 85
DOMAIN = "readme"
#: Frames shown of one multi-frame instance at most (evenly spaced; a note says so).
MAX_FRAMES = 300
#: Storage classes that hold one frame: no header read to count their frames.
_SINGLE_FRAME = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1",  # CR
        "1.2.840.10008.5.1.4.1.1.1.1",  # DX
        "1.2.840.10008.5.1.4.1.1.1.1.1",
        "1.2.840.10008.5.1.4.1.1.1.2",  # MG
        "1.2.840.10008.5.1.4.1.1.1.2.1",
        "1.2.840.10008.5.1.4.1.1.2",  # CT
        "1.2.840.10008.5.1.4.1.1.4",  # MR
        "1.2.840.10008.5.1.4.1.1.6.1",  # US (single frame)
        "1.2.840.10008.5.1.4.1.1.128",  # PET
    }
)
_TEXT_MAX = 120
_UNSAFE = text.pattern(text.CONTROLS | text.BIDI_CONTROLS)


@dataclass(frozen=True)
class ViewerOptions:
    """How the viewer's images are made (``delivery.offline_viewer_*`` fill these).

    ``max_side``: pixels of the longer side (smaller images are not enlarged);
    ``quality``: JPEG quality 1-95; ``limits``: the decoding child's limits (the
    ``delivery.preview_*`` settings).
    """

    max_side: int = 1024
    quality: int = NATIVE_QUALITY
    limits: RenderLimits | None = None


@dataclass(frozen=True)
class Rendered:
    """One image in the spool: its file and size in bytes."""

    path: Path
    size: int


@dataclass(frozen=True)
class ViewerFile:
    """A file of the viewer: its name inside the part, and bytes or a spool file."""

    name: str
    size: int
    data: bytes | None = None
    path: Path | None = None


@dataclass
class _Series:
    index: int
    modality: str
    number: str
    description: str
    images: list[tuple[str, int]] = field(default_factory=list)  # (name in VIEWER/, number)
    missing: int = 0


def shown(value: object, limit: int = _TEXT_MAX) -> str:
    """Header text fit for the page: control and bidi characters written as visible
    escapes (``\\x1b``, ``\\u202e``), cut to ``limit`` characters. The template escapes
    HTML and isolates the result in ``<bdi>``."""
    if value is None:
        return ""
    value = str(value).strip()
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return _UNSAFE.sub(lambda m: text.escape(m.group(0)), value)


def estimate(size: int, options: ViewerOptions) -> int:
    """A generous bound on the viewer's bytes for one instance of ``size`` bytes (its
    image and its line on the page), for planning parts before anything is rendered."""
    return min(size // 3, options.max_side * options.max_side * 3 // 2) + 512


def _frames(item: PackageItem) -> tuple[list[int | None], int]:
    """The frames to render of ``item``: ``[None]`` (its only, or middle, frame) or
    every frame of a multi-frame instance, at most :data:`MAX_FRAMES` evenly spaced; and
    how many it has."""
    if item.sop_class_uid in _SINGLE_FRAME:
        return [None], 1
    try:
        header = pydicom.dcmread(
            item.path, stop_before_pixels=True, specific_tags=["NumberOfFrames"]
        )
        frames = declared_size(header).frames
    except Exception:  # unreadable or odd: the renderer will say why, for one frame
        return [None], 1
    if frames <= 1:
        return [None], 1
    picks: list[int | None] = [*spread(frames, MAX_FRAMES)]  # never range(frames)
    return picks, frames


def _reencode(data: bytes, quality: int) -> bytes:
    """The renderer's PNG (our own, at most max_side square) as a JPEG of ``quality``."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()


def _description(path: Path) -> str:
    """The series description from one instance's header ("" when unreadable)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # odd character sets warn; text is best effort
            header = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["SeriesDescription"]
            )
            return str(header.get("SeriesDescription", "") or "")
    except Exception:  # untrusted header: no description, never an error
        return ""


class ImageSpool:
    """Renders every instance of a package into a spool folder, in a thread of its own.

    Start with :meth:`start`; :meth:`result` waits for one instance (images come in
    package order, the order the writer asks for them); :meth:`close` stops the thread,
    ends the child and removes the folder. Unexpected errors in the thread (the spool's
    disk full) are raised by :meth:`result`.
    """

    def __init__(
        self,
        groups: Sequence[Sequence[PackageItem]],
        folder: Path,
        options: ViewerOptions,
    ) -> None:
        self._groups = [list(g) for g in groups]
        self.folder = folder
        self.options = options
        self._results: dict[str, list[Rendered | str]] = {}
        #: Instance UID -> (frames it has, frames shown), for multi-frame ones cut short.
        self.capped: dict[str, tuple[int, int]] = {}
        self._wake = threading.Condition()
        self._stop = False
        self._done = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._preview_side = 0
        self._previews: dict[str, bytes | str] | None = None

    @classmethod
    def beside(
        cls, groups: Sequence[Sequence[PackageItem]], dest: Path, name: str, options: ViewerOptions
    ) -> ImageSpool:
        """A spool in ``dest`` named ``.<name>.viewer.<random>.partial`` (swept like a
        partial part if the process dies)."""
        folder = dest / f".{name}.viewer.{secrets.token_hex(6)}.partial"
        return cls(groups, folder, options)

    def start(self, previews: int = 0) -> ImageSpool:
        """Start rendering; with ``previews`` (a size), each series' middle instance is
        rendered at that size first, for :meth:`previews` (one child for both)."""
        self._preview_side = previews
        self.folder.mkdir(mode=DIR_MODE)
        self._thread = threading.Thread(target=self._run, name="viewer-render", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> ImageSpool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        try:
            fmt = "jpeg" if self.options.quality == NATIVE_QUALITY else "png"
            with Renderer(self.options.limits) as renderer:
                if self._preview_side:  # the series thumbnails first: planning waits for them
                    previews: dict[str, bytes | str] = {}
                    for group in self._groups:
                        middle = group[len(group) // 2]
                        try:
                            previews[middle.series_uid] = renderer.render(
                                middle.path, max_side=self._preview_side
                            )
                        except ImagingError as exc:
                            previews[middle.series_uid] = str(exc)
                    with self._wake:
                        self._previews = previews
                        self._wake.notify_all()
                number = 0
                for group in self._groups:
                    for item in group:
                        results: list[Rendered | str] = []
                        frames, total = _frames(item)
                        if len(frames) < total:
                            self.capped[item.sop_instance_uid] = (total, len(frames))
                        for frame in frames:
                            if self._stop:
                                return
                            number += 1
                            results.append(self._render(renderer, item, frame, number, fmt))
                        with self._wake:
                            self._results[item.sop_instance_uid] = results
                            self._wake.notify_all()
        except BaseException as exc:  # handed to the writer by result()
            with self._wake:
                self._error = exc
        finally:
            with self._wake:
                self._done = True
                self._wake.notify_all()

    def _render(
        self, renderer: Renderer, item: PackageItem, frame: int | None, number: int, fmt: str
    ) -> Rendered | str:
        try:
            data = renderer.render(
                item.path,
                frame=frame,
                max_side=self.options.max_side,
                fmt="png" if fmt == "png" else "jpeg",
            )
            if fmt == "png":
                data = _reencode(data, self.options.quality)
        except ImagingError as exc:
            return str(exc)
        except (OSError, ValueError) as exc:  # Pillow on a garbled answer
            return f"the picture could not be converted ({type(exc).__name__})"
        path = self.folder / f"{number:07d}.jpg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return Rendered(path, len(data))

    def previews(self) -> dict[str, bytes | str]:
        """Series UID -> thumbnail, or why there is none (as
        :func:`delivery.packaging.preview.series_previews` gives them); needs
        ``start(previews=...)``."""
        assert self._preview_side, "start(previews=...) first"
        with self._wake:
            while self._previews is None:
                if self._error is not None:
                    raise self._error
                if self._done:
                    raise RuntimeError("the renderer stopped before the previews")
                self._wake.wait()
            return self._previews

    def result(self, uid: str) -> list[Rendered | str]:
        """The images of instance ``uid`` once rendered (one per frame shown), each or
        why there is none."""
        with self._wake:
            while uid not in self._results:
                if self._error is not None:
                    raise self._error
                if self._done:
                    return ["not rendered"]
                self._wake.wait()
            return self._results[uid]

    def close(self) -> None:
        """Stop rendering, wait for the thread (it ends its child) and remove the spool."""
        with self._wake:
            self._stop = True
        if self._thread is not None:
            self._thread.join()
        shutil.rmtree(self.folder, ignore_errors=True)


def _series_label(item: PackageItem) -> tuple[str, str]:
    modality = shown(item.modality or "", 16)
    number = "" if item.series_number is None else shown(item.series_number, 16)
    return modality, number


def viewer_files(
    items: Iterable[PackageItem],
    spool: ImageSpool,
    *,
    info: PackageInfo,
    series_index: dict[str, int],
    medium: str = "zip",
) -> tuple[list[ViewerFile], list[str]]:
    """The files of ``VIEWER/`` for a part holding ``items`` (package order), and the
    notes for the manifest (images that could not be rendered; UIDs and reasons only).

    Images come first (from the spool, in order), then ``index.html``, ``viewer.js`` and
    ``viewer.css``. ``series_index`` numbers the series as in the whole package.
    """
    files: list[ViewerFile] = []
    notes: list[str] = []
    series: list[_Series] = []
    reasons: dict[str, str] = {}
    current: _Series | None = None
    current_uid = ""
    for item in items:
        if current is None or item.series_uid != current_uid:
            modality, number = _series_label(item)
            current_uid = item.series_uid
            # Read here, in the writer's thread (warnings filters are not thread-safe).
            description = shown(_description(item.path))
            current = _Series(series_index[item.series_uid], modality, number, description)
            series.append(current)
        for result in spool.result(item.sop_instance_uid):
            if isinstance(result, Rendered):
                name = f"S{current.index:03d}/{len(current.images) + 1:05d}.jpg"
                current.images.append((name, len(current.images) + 1))
                files.append(ViewerFile(f"{FOLDER}/{name}", result.size, path=result.path))
            else:
                current.missing += 1
                reasons.setdefault(item.series_uid, result)
        if item.sop_instance_uid in spool.capped:
            total, kept = spool.capped[item.sop_instance_uid]
            notes.append(
                f"instance {item.sop_instance_uid}: offline viewer: {kept} of its {total} "
                "frames shown (evenly spaced)"
            )
    for uid, reason in reasons.items():
        notes.append(f"series {uid}: offline viewer: some images could not be rendered: {reason}")
    page = render_index(info, series, medium=medium)
    files.append(ViewerFile(INDEX, len(page), data=page))
    for name in STATIC:
        data = (ASSETS / name).read_bytes()
        files.append(ViewerFile(f"{FOLDER}/{name}", len(data), data=data))
    return files, notes


def render_index(info: PackageInfo, series: Sequence[_Series], *, medium: str = "zip") -> bytes:
    """``VIEWER/index.html`` in the request's language."""
    tag = info.language or SOURCE_LANGUAGE
    env = environment(tag, DOMAIN, ASSETS)
    page = env.get_template("index.html.j2").render(
        reference=info.reference, series=series, disc=medium == "disc"
    )
    return page.encode("utf-8")


def disc_index(info: PackageInfo) -> bytes:
    """``INDEX.HTM`` at a disc's root (the IHE PDI web content), in the request's
    language: opens the viewer."""
    env = environment(info.language or SOURCE_LANGUAGE, DOMAIN, ASSETS)
    page = env.get_template("disc_index.html.j2").render(reference=info.reference)
    return page.encode("utf-8")


def level1(name: str) -> str:
    """A viewer file's ISO 9660 level 1 name (``VIEWER/index.html`` → ``VIEWER/INDEX.HTM``)."""
    head, _, last = name.rpartition("/")
    stem, _, ext = last.rpartition(".")
    upper = f"{stem[:8]}.{ext[:3]}".upper()
    return f"{head.upper()}/{upper}" if head else upper

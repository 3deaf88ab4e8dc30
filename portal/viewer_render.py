"""The viewer's pictures: rendered away from the server process, kept on disk, bounded.

- Rendering runs in :class:`imaging.Renderer` children (memory, CPU and time limits from
  ``delivery.preview_*``), a small pool of :data:`POOL_SIZE` shared by every request of the
  process: one child is started (warmed) when a viewer page is first asked for, so the
  first image does not wait for an interpreter to start. A child that fails is replaced
  by the renderer itself on its next use. One frame at a time: never a whole series in
  memory.
- Each picture is written once into the package's viewer folder
  (``<package_dir>/<package folder>/viewer/<package id>/``, :func:`viewer_folder`), named
  by instance row id, frame, size and window (no UID, no patient data), and served from
  there afterwards. The folder is bounded by ``portal.viewer_cache_mb``: past it, the
  oldest pictures go first (DICOMweb's kept metadata, :mod:`portal.dicomweb_metadata`,
  shares the folder and the budget: :data:`CACHE_SUFFIXES`, :func:`kept`). It lives
  inside the package's folder, so it is deleted with the package; nothing is written
  when that folder is gone.
- An instance that cannot be drawn (corrupt, undecodable, over the pixel budget, a child
  that ran out of time) gets :func:`placeholder`: a picture saying it cannot be shown
  here and that the download still has it. Never an error status.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import logging
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from imaging import ImagingError, Renderer, RenderLimits
from portal.context import PortalContext

log = logging.getLogger("courier.portal.viewer")
POOL_SIZE = 2  # the machine's cores are the server's too; more children would only queue
VIEW_SIDE = 1024  # the longer side of a viewer image (a phone's screen at 3x, a laptop's)
THUMB_SIDE = 128
#: The longest a request waits for an idle renderer: it holds a shared threadpool thread
#: meanwhile, so past this it answers 503 with Retry-After (:class:`Busy`) instead.
BUSY_WAIT_S = 2.0
BUSY_RETRY_AFTER_S = 2


class Busy(Exception):
    """Every renderer stayed busy for :data:`BUSY_WAIT_S`: try again shortly (not a
    picture that cannot be drawn, so no placeholder)."""


@dataclass(frozen=True)
class Voi:
    """How grey values map to the screen: the header's window (``auto``), the image's
    own range (``minmax``), or an explicit centre and width."""

    centre: float | None = None
    width: float | None = None
    minmax: bool = False

    @property
    def tag(self) -> str:
        if self.minmax:
            return "m"
        if self.centre is None or self.width is None:
            return "h"
        return f"{self.centre:g}_{self.width:g}"

    @property
    def window(self) -> tuple[float, float] | None:
        if self.minmax or self.centre is None or self.width is None:
            return None
        return (self.centre, self.width)


class _Pool:
    """Up to :data:`POOL_SIZE` renderers for one set of limits, lent one at a time."""

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self._idle: queue.LifoQueue[Renderer] = queue.LifoQueue()
        self._made = 0
        self._lock = threading.Lock()
        self._all: list[Renderer] = []

    def _take(self) -> Renderer:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._made < POOL_SIZE:
                self._made += 1
                renderer = Renderer(self.limits)
                self._all.append(renderer)
                return renderer
        return self._idle.get(timeout=BUSY_WAIT_S)

    def warm(self) -> None:
        """Start one child now if none is running (its libraries load meanwhile)."""
        try:
            renderer = self._take()
        except queue.Empty:
            return
        try:
            if renderer.pid is None:
                renderer.warm()
        except OSError as exc:
            log.warning("viewer: the rendering child did not start (%s)", type(exc).__name__)
        finally:
            self._idle.put(renderer)

    def render(self, path: Path, frame: int, side: int, voi: Voi) -> bytes:
        try:
            renderer = self._take()
        except queue.Empty:
            raise Busy from None
        try:
            return renderer.render(
                path, frame=frame, max_side=side, window=voi.window, minmax=voi.minmax
            )
        finally:
            self._idle.put(renderer)

    def close(self) -> None:
        for renderer in self._all:
            renderer.close()


_pools: dict[RenderLimits, _Pool] = {}
_pools_lock = threading.Lock()


def pool(ctx: PortalContext) -> _Pool:
    """The process's renderer pool for the node's preview limits."""
    d = ctx.delivery
    limits = RenderLimits(d.preview_max_pixels, d.preview_memory_mb, d.preview_timeout_s)
    with _pools_lock:
        found = _pools.get(limits)
        if found is None:
            found = _pools[limits] = _Pool(limits)
        return found


@atexit.register
def _close_pools() -> None:
    with _pools_lock:
        for p in _pools.values():
            p.close()
        _pools.clear()


def warm(ctx: PortalContext) -> None:
    """Start a child in the background if none runs (a viewer page is being opened)."""
    threading.Thread(target=pool(ctx).warm, name="viewer-warm", daemon=True).start()


@functools.lru_cache(maxsize=4)
def placeholder(side: int) -> bytes:
    """The picture for an image that cannot be shown here (JPEG, square, ``side`` px)."""
    size = max(96, min(side, 512))
    image = Image.new("L", (size, size), 48)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(10, size // 18))
    lines = ["This image cannot", "be shown here.", "The download", "still has it."]
    step = size // 10
    top = size // 2 - step * 2
    for i, line in enumerate(lines):
        draw.text((size // 2, top + i * step), line, fill=230, font=font, anchor="mm")
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return out.getvalue()


# -- the disk cache ------------------------------------------------------------------


def private_dir(folder: Path) -> None:
    """``folder`` and its parent made if missing, the node account's alone (0700, as
    everything under the data folder), whatever the umask."""
    for path in (folder.parent, folder):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file ``path`` readable by the node account only (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


# The files the budget counts and trims: pictures, and DICOMweb's kept metadata.
CACHE_SUFFIXES = (".jpg", ".meta")


class _Sizes:
    """Bytes each viewer folder holds, counted once by a scan, then kept up to date."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes: dict[Path, int] = {}

    def add(self, folder: Path, n: int, limit: int) -> None:
        with self._lock:
            if folder not in self._bytes:
                self._bytes[folder] = sum(size for _, size, _ in _pictures(folder))
            else:
                self._bytes[folder] += n
            if self._bytes[folder] <= limit:
                return
            self._bytes[folder] = _trim(folder, limit * 8 // 10)


_sizes = _Sizes()


def kept(folder: Path, n: int, limit: int) -> None:
    """Count ``n`` more bytes kept in viewer folder ``folder``; past ``limit`` the oldest
    of its cached files go until it holds 80% of it."""
    _sizes.add(folder, n, limit)


def _pictures(folder: Path) -> list[tuple[float, int, Path]]:
    out = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.endswith(CACHE_SUFFIXES) and entry.is_file():
                    st = entry.stat()
                    out.append((st.st_mtime, st.st_size, Path(entry.path)))
    except OSError:
        pass
    return out


def _trim(folder: Path, target: int) -> int:
    """Delete the oldest cached files of ``folder`` until it holds at most ``target`` bytes;
    returns what it holds then."""
    pictures = sorted(_pictures(folder))
    total = sum(size for _, size, _ in pictures)
    for _mtime, size, path in pictures:
        if total <= target:
            break
        try:
            path.unlink()
            total -= size
        except FileNotFoundError:
            total -= size
        except OSError:
            continue
    return total


def picture(
    ctx: PortalContext,
    folder: Path,
    package_folder: Path,
    *,
    instance_id: int,
    path: Path,
    frame: int,
    side: int,
    voi: Voi,
) -> tuple[bytes, bool]:
    """The picture of one frame (blocking: call from a worker thread): from the cache,
    or rendered and kept there. Returns (JPEG bytes, drawn); ``drawn`` is False for the
    :func:`placeholder`. Raises :class:`Busy` when no renderer became idle in time."""
    name = f"{instance_id}-{frame}-{side}-{voi.tag}.jpg"
    cached = folder / name
    try:
        return cached.read_bytes(), True
    except OSError:
        pass
    try:
        data = pool(ctx).render(path, frame, side, voi)
    except ImagingError as exc:
        log.info("viewer: instance row %d frame %d not drawn: %s", instance_id, frame, exc)
        return placeholder(side), False
    except OSError as exc:  # the child could not start, the file vanished
        log.warning("viewer: instance row %d not drawn (%s)", instance_id, type(exc).__name__)
        return placeholder(side), False
    if package_folder.is_dir():
        try:
            private_dir(folder)
            tmp = folder / f".{name}.{threading.get_ident()}.tmp"
            write_private(tmp, data)
            tmp.replace(cached)
            _sizes.add(folder, len(data), ctx.portal.viewer_cache_mb * 1_000_000)
        except OSError as exc:
            log.warning("viewer: picture not kept (%s)", type(exc).__name__)
    return data, True

"""Delivery packages: a ZIP (or several parts) a patient downloads instead of getting a CD.

Public surface: :class:`PackageItem`, :class:`PackageInfo`, :func:`build_package` →
:class:`PackageResult`, :func:`sweep_partial`, and the errors re-exported from
:mod:`delivery.packaging.errors` (:class:`PackageError` and its subclasses).

Each part is self-contained and holds:

- ``DICOMDIR`` (FileSet's layout, see :mod:`delivery.packaging.dicomdir`) and the instances,
  byte-identical to the stored files, at the PS3.10 file IDs it names;
- ``README.txt`` and ``README.html`` in the request's language (:mod:`delivery.packaging.readme`);
- ``PREVIEW/`` with one JPEG per series (:mod:`delivery.packaging.preview`, decoded in a limited
  child process); a series whose pixels cannot be decoded within the limits gets none,
  and a note in the manifest;
- ``VIEWER/`` when asked (``viewer=``): the offline viewer, ``VIEWER/index.html`` and every
  image pre-rendered (:mod:`delivery.packaging.viewer`); an image that cannot be rendered
  gets a note on the page and in the manifest, never a failed package;
- ``MANIFEST.json`` (:mod:`delivery.packaging.manifest`): counts, part k of N, size and SHA-256 of
  every other file.

Guarantees: every instance file is checked before anything is written, and any error
removes what this build wrote, so there is never a final-named ZIP missing an instance.
Instances are streamed in 1 MiB chunks and headers are read without pixel data, so memory
stays flat whatever the study's size. Parts are written as ``.<name>.<random>.partial``
files in ``dest``, fsynced, then renamed; the directory is fsynced. See
:func:`build_package` for the one window a crash can leave (between renames of parts).
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from delivery.packaging.builder import PackageFacts, write_part
from delivery.packaging.errors import (
    MissingInstanceError,
    PackageError,
    PackageWriteError,
    UnreadableInstanceError,
)
from delivery.packaging.manifest import Counts
from delivery.packaging.parts import SeriesGroup, Sized, plan_parts
from delivery.packaging.preview import MAX_SIDE, RenderLimits, series_previews
from delivery.packaging.viewer import ImageSpool, ViewerOptions, estimate
from delivery.packaging.zipwriter import PARTIAL_SUFFIX, PartWriter, fsync_dir
from store.content import DIR_MODE

__all__ = [
    "MissingInstanceError",
    "PackageError",
    "PackageInfo",
    "PackageItem",
    "PackageResult",
    "PackageWriteError",
    "UnreadableInstanceError",
    "build_package",
    "sweep_partial",
]

_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
#: What one thumbnail may weigh at most when parts are planned before it is rendered:
#: a JPEG of at most MAX_SIDE x MAX_SIDE (442 KB as raw RGB) is far below it.
PREVIEW_BOUND = 1024 * 1024


@dataclass(frozen=True)
class PackageItem:
    """One stored instance to deliver, as the index knows it.

    ``path`` is the instance file in the content store; the UIDs must match its header
    (checked while packaging). The optional fields order series and instances;
    ``size_bytes`` is the file's size as the index recorded it when it was received
    (None: not known), so a sender can refuse a file that changed since (a C-STORE
    sends the file's bytes as they are, and a copy cut short would be stored as is).
    """

    path: Path
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None = None
    series_number: int | None = None
    instance_number: int | None = None
    size_bytes: int | None = None


@dataclass(frozen=True)
class PackageInfo:
    """What the READMEs and manifest say about the request (no patient data).

    ``reference`` names the files (letters, digits and dashes); ``language`` is a BCP 47
    tag (``en``, ``ar``, ``zh-Hans``; others fall back to English); ``contact`` is the
    staff contact text shown to the patient. ``reports``: ``(path, bytes)`` of the
    ``REPORT/`` files (:mod:`delivery.report_render`), written into the first part.
    """

    reference: str
    language: str
    contact: str
    created: datetime
    expires: datetime | None = None
    reports: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class PackageResult:
    """The parts written (in order) and what they hold.

    ``part_sha256`` and ``part_bytes`` are per part; ``total_bytes`` is their sum; counts
    cover the whole package; ``notes`` list previews that could not be made and record
    attributes the DICOMDIR had to invent (UIDs only, no patient data).
    """

    parts: tuple[Path, ...]
    part_sha256: tuple[str, ...]
    part_bytes: tuple[int, ...]
    total_bytes: int
    studies: int
    series: int
    instances: int
    notes: tuple[str, ...]


#: ``progress(done, total)``: instance bytes copied so far, out of all instance bytes.
Progress = Callable[[int, int], None]


def part_names(reference: str, parts: int) -> list[str]:
    """Final file names: ``<reference>.zip``, or ``<reference>-part<k>-of-<N>.zip``."""
    if parts == 1:
        return [f"{reference}.zip"]
    return [f"{reference}-part{k}-of-{parts}.zip" for k in range(1, parts + 1)]


def _sort_key(number: int | None, uid: str) -> tuple[float, str]:
    return (math.inf if number is None else number, uid)


def _checked(items: Iterable[PackageItem]) -> list[Sized[PackageItem]]:
    """Stat every instance file up front: a missing one fails the build before any write."""
    sized: list[Sized[PackageItem]] = []
    seen: set[str] = set()
    for item in items:
        if item.sop_instance_uid in seen:
            raise ValueError(f"instance {item.sop_instance_uid} is listed twice")
        seen.add(item.sop_instance_uid)
        try:
            size = item.path.stat().st_size
        except FileNotFoundError:
            raise MissingInstanceError(
                f"instance {item.sop_instance_uid} has no file in the store ({item.path}): "
                "have the study sent again (or re-fetch it from PACS), then re-run delivery"
            ) from None
        except OSError as exc:
            raise UnreadableInstanceError(
                f"instance {item.sop_instance_uid} cannot be read ({item.path}: "
                f"{exc.strerror}): check the store's permissions and disk, then re-run delivery"
            ) from exc
        sized.append(Sized(item, size))
    if not sized:
        raise ValueError("a package needs at least one instance")
    return sized


def _series_groups(sized: list[Sized[PackageItem]]) -> list[list[Sized[PackageItem]]]:
    """Group by study (first-seen order), then series, then instance (numbers, then UIDs)."""
    studies: dict[str, dict[str, list[Sized[PackageItem]]]] = {}
    for s in sized:
        studies.setdefault(s.item.study_uid, {}).setdefault(s.item.series_uid, []).append(s)
    groups: list[list[Sized[PackageItem]]] = []
    for series in studies.values():
        ordered = sorted(
            series.values(), key=lambda g: _sort_key(g[0].item.series_number, g[0].item.series_uid)
        )
        for group in ordered:
            groups.append(
                sorted(
                    group,
                    key=lambda s: _sort_key(s.item.instance_number, s.item.sop_instance_uid),
                )
            )
    return groups


def _previews(
    groups: list[list[Sized[PackageItem]]], limits: RenderLimits | None
) -> dict[str, bytes | str]:
    """One thumbnail per series (its middle instance), or the reason there is none."""
    middles = (group[len(group) // 2].item for group in groups)
    return series_previews(((m.series_uid, m.path) for m in middles), limits)


def _planned(
    group: list[Sized[PackageItem]], preview_bytes: int, viewer: ViewerOptions | None
) -> SeriesGroup[Sized[PackageItem]]:
    """The series for the part plan; with the viewer, each instance also counts its
    image's estimated bytes (:func:`delivery.packaging.viewer.estimate`)."""
    planned = [
        Sized(s, s.size + (estimate(s.size, viewer) if viewer is not None else 0)) for s in group
    ]
    return SeriesGroup(group[0].item.series_uid, planned, preview_bytes)


def _plan(
    groups: list[list[Sized[PackageItem]]],
    preview_bytes: Callable[[str], int],
    viewer: ViewerOptions | None,
    max_part_bytes: int | None,
    info: PackageInfo,
) -> list[list[Sized[PackageItem]]]:
    """The parts (:func:`delivery.packaging.parts.plan_parts`), each series counting
    ``preview_bytes(series UID)`` for its thumbnail."""
    return [
        [s.item for s in part]
        for part in plan_parts(
            [_planned(g, preview_bytes(g[0].item.series_uid), viewer) for g in groups],
            max_part_bytes,
            first_part_files=[len(data) for _, data in info.reports],  # REPORT/: part 1
        )
    ]


def _size(preview: bytes | str) -> int:
    return len(preview) if isinstance(preview, bytes) else 0


class _Previews(Mapping[str, "bytes | str"]):
    """The thumbnails (:func:`_previews`), rendered by their limited child in a thread of
    their own while the instances are copied; reading one waits for all (re-raising
    what the rendering raised)."""

    def __init__(self, groups: list[list[Sized[PackageItem]]], limits: RenderLimits | None):
        self._result: dict[str, bytes | str] = {}
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(groups, limits), name="package-previews", daemon=True
        )
        self._thread.start()

    def _run(self, groups: list[list[Sized[PackageItem]]], limits: RenderLimits | None) -> None:
        try:
            self._result = _previews(groups, limits)
        except BaseException as exc:  # handed to whoever reads them
            self._error = exc

    def wait(self) -> dict[str, bytes | str]:
        """All of them, once rendered (each series bounded by its limits' timeout)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result

    def __getitem__(self, series_uid: str) -> bytes | str:
        return self.wait()[series_uid]

    def __iter__(self) -> Iterator[str]:
        return iter(self.wait())

    def __len__(self) -> int:
        return len(self.wait())


def build_package(
    items: Iterable[PackageItem],
    dest: Path,
    *,
    info: PackageInfo,
    max_part_bytes: int | None = None,
    progress: Progress | None = None,
    preview_limits: RenderLimits | None = None,
    viewer: ViewerOptions | None = None,
) -> PackageResult:
    """Build the package for ``items`` into the folder ``dest`` (created if missing).

    One ZIP ``<reference>.zip``, or, when the estimated size exceeds ``max_part_bytes``,
    parts ``<reference>-part<k>-of-<N>.zip`` cut between series where possible (see
    :mod:`delivery.packaging.parts`). Earlier final-named parts of the same reference that this
    build did not produce are removed once it succeeds. ``progress`` is called with
    (instance bytes copied, total instance bytes) after each instance. ``preview_limits``
    bound the decoding of the series previews (:mod:`delivery.packaging.preview`; None: the
    defaults). ``viewer``: put the offline viewer in every part
    (:mod:`delivery.packaging.viewer`; None: no ``VIEWER/``); its images are rendered in a
    thread while the instances are copied, by one child that renders the previews first
    (under ``viewer.limits``, or ``preview_limits`` when those are None).

    Raises :class:`MissingInstanceError` / :class:`UnreadableInstanceError` for an instance
    file that is missing, unreadable or not the instance the item names, and
    :class:`PackageWriteError` when writing fails; in every case nothing final-named is
    left by this build. ``ValueError`` for a bad reference or no (or duplicate) items.

    Parts are renamed one after the other once all are complete: a crash during those
    renames can leave some parts final-named. Only a returned result says the package is
    complete; callers record it and serve only what they recorded.
    """
    if not _REFERENCE.fullmatch(info.reference):
        raise ValueError(f"reference {info.reference!r}: use letters, digits and dashes")
    groups = _series_groups(_checked(items))
    # The parent too: mkdir(parents=True) gives the folders it adds the umask's mode.
    dest.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    dest.mkdir(exist_ok=True, mode=DIR_MODE)
    spool = None
    pending = None
    if viewer is not None:  # one child renders the previews, then every image
        if viewer.limits is None:
            viewer = replace(viewer, limits=preview_limits)
        spool = ImageSpool.beside(
            [[s.item for s in g] for g in groups], dest, info.reference, viewer
        ).start(previews=MAX_SIDE)
    try:
        previews: Mapping[str, bytes | str]
        if spool is not None:
            previews = spool.previews()
            plan = _plan(groups, lambda uid: _size(previews[uid]), viewer, max_part_bytes, info)
        else:
            # The thumbnails are rendered while the instances are copied (they are
            # written after them): the child's start-up (~0.4 s) was a third of a CT's
            # build. Planned with each at its bound: one part then is one part with any
            # real sizes (all smaller); more parts are planned again with the real ones.
            previews = pending = _Previews(groups, preview_limits)
            plan = _plan(groups, lambda uid: PREVIEW_BOUND, None, max_part_bytes, info)
            if len(plan) > 1:
                real = pending.wait()
                plan = _plan(groups, lambda uid: _size(real[uid]), None, max_part_bytes, info)
    except BaseException:
        if spool is not None:
            spool.close()
        if pending is not None:
            with contextlib.suppress(BaseException):
                pending.wait()
        raise
    names = part_names(info.reference, len(plan))
    facts = PackageFacts(
        counts=Counts(
            studies=len({g[0].item.study_uid for g in groups}),
            series=len(groups),
            instances=sum(len(g) for g in groups),
        ),
        series_index={g[0].item.series_uid: i for i, g in enumerate(groups, start=1)},
        previews=previews,
    )
    total = sum(s.size for g in groups for s in g)
    done = [0]

    def advance(nbytes: int) -> None:
        done[0] += nbytes
        if progress is not None:
            progress(done[0], total)

    writers: list[PartWriter] = []
    notes: list[str] = []
    try:
        for number, (name, part) in enumerate(zip(names, plan, strict=True), start=1):
            writer = PartWriter(dest / name, info.created)
            writers.append(writer)
            notes += write_part(
                writer,
                part,
                info=info,
                number=number,
                parts=len(plan),
                facts=facts,
                advance=advance,
                viewer=spool,
            )
            writer.finish()
        for writer in writers:
            writer.publish()
        fsync_dir(dest)
    except BaseException as exc:
        for writer in writers:
            writer.abort()
        if isinstance(exc, OSError) and not isinstance(exc, PackageError):
            raise PackageWriteError(
                f"could not write the package into {dest}: {exc}; "
                "free disk space or fix permissions there, then re-run delivery"
            ) from exc
        raise
    finally:
        if spool is not None:
            spool.close()
        if pending is not None:  # never leave its thread behind (bounded by its limits)
            with contextlib.suppress(BaseException):
                pending.wait()
    _remove_stale(dest, info.reference, set(names))
    return PackageResult(
        parts=tuple(w.final for w in writers),
        part_sha256=tuple(w.sha256 for w in writers),
        part_bytes=tuple(w.size for w in writers),
        total_bytes=sum(w.size for w in writers),
        studies=facts.counts.studies,
        series=facts.counts.series,
        instances=facts.counts.instances,
        notes=tuple(dict.fromkeys(notes)),
    )


def _remove_stale(dest: Path, reference: str, keep: set[str]) -> None:
    pattern = re.compile(re.escape(reference) + r"(-part\d+-of-\d+)?\.zip")
    removed = False
    for entry in dest.iterdir():
        if pattern.fullmatch(entry.name) and entry.name not in keep:
            entry.unlink(missing_ok=True)
            removed = True
    if removed:
        fsync_dir(dest)


def sweep_partial(folder: Path) -> int:
    """Remove what interrupted builds left in ``folder``; return how many entries went.

    Removes hidden ``.*.partial`` files and folders (earlier versions made DICOMDIR
    scratch folders) only, never a final-named package. Call it at start-up, before any
    build runs in ``folder`` (a build in progress owns ``.partial`` entries too). A missing
    folder counts as clean.
    """
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in folder.iterdir():
        if not (entry.name.startswith(".") and entry.name.endswith(PARTIAL_SUFFIX)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    if removed:
        fsync_dir(folder)
    return removed

"""What the viewer shows: a grant's studies, their series, and each series' images.

Everything is addressed by position, never by UID: study ``k`` is the files page's
``k``-th study (the order of :func:`portal.studyzip.request_studies`), series ``j`` its
``j``-th series (by series number, then arrival), image ``n`` the series' ``n``-th image
(instances by instance number, then slice position, then arrival; each frame of a
multi-frame instance is an image of its own). All are 1-based as the pages show them.

A series' list of images needs each instance's header (frames, position, windows). It is
read once (headers only, pixel data never) and kept as a small JSON file in the viewer's
folder beside the package (see :mod:`portal.viewer_render`), so later requests read one
file; the files page has it built in the background (:func:`prebuild`) while the
patient reads it. Encapsulated PDFs and structured reports are listed as documents, not images.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections.abc import Collection
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from imaging import RenderFailed, describe
from imaging.info import read_facts
from portal.context import PortalContext
from portal.studyzip import request_studies
from portal.viewer_render import private_dir, write_private
from store.models import Instance, Package, Series, Study

log = logging.getLogger("courier.portal.viewer")
VIEWER_FOLDER = "viewer"
# The kept index's format: bump it whenever what an index holds changes (its fields, or
# what index_rows puts in them), so an index kept by an older node is built again, never
# believed. 2: frames capped at imaging.info.MAX_VIEW_FRAMES per instance (evenly spaced).
_INDEX_VERSION = 2


@dataclass(frozen=True)
class SeriesRow:
    """One series of a study as the picker lists it."""

    number: int  # 1-based position in the study
    series_id: int
    modality: str
    description: str
    series_number: str
    instances: int


@dataclass(frozen=True)
class StudyRow:
    number: int  # 1-based position on the files page
    study_id: int
    study_uid: str
    description: str
    series: list[SeriesRow]


@dataclass(frozen=True)
class Frame:
    """One image of a series: which instance (store path), which frame."""

    instance_id: int
    path: str  # relative to the content store's root
    frame: int
    position: float | None


@dataclass(frozen=True)
class Document:
    instance_id: int
    path: str
    kind: str  # "pdf" or "sr"


@dataclass(frozen=True)
class SeriesIndex:
    """A series' images and documents, and what its presets need."""

    frames: list[Frame]
    documents: list[Document]
    modality: str
    colour: bool
    windows: list[tuple[float, float]]  # the first image's header windows
    broken: int  # instances whose header could not be read (left out)


def _series_key(row: Series) -> tuple[int, str, int]:
    try:
        number = int(row.series_number)
    except ValueError:
        number = 1 << 30
    return (number, row.series_number, row.id)


def viewer_studies(s: Session, request_id: int, withheld: Collection[int] = ()) -> list[StudyRow]:
    """The request's studies in page order, each with its series (see the module
    docstring). Series without any instance are left out, and so are the instances in
    ``withheld`` (the report instances the report policy keeps back:
    :meth:`portal.context.PortalContext.withheld`), and a series left with none."""
    held: dict[int, int] = {}
    if withheld:
        for series_id in s.scalars(
            select(Instance.series_id).where(Instance.id.in_(list(withheld)))
        ):
            held[series_id] = held.get(series_id, 0) + 1
    out = []
    for k, study in enumerate(request_studies(s, request_id), start=1):
        rows = sorted(
            (
                row
                for row in s.scalars(
                    select(Series).where(Series.study_id == study.id, Series.instance_count > 0)
                )
                if row.instance_count - held.get(row.id, 0) > 0
            ),
            key=_series_key,
        )
        series = [
            SeriesRow(
                number=j,
                series_id=row.id,
                modality=row.modality,
                description=row.series_description,
                series_number=row.series_number,
                instances=row.instance_count - held.get(row.id, 0),
            )
            for j, row in enumerate(rows, start=1)
        ]
        out.append(StudyRow(k, study.id, study.study_uid, study.study_description, series))
    return out


def viewer_folder(ctx: PortalContext, package: Package) -> Path:
    """The viewer's folder of ``package`` (inside the package's own, so it goes with it;
    keyed by the package id, so a rebuilt package never shows an older one's images)."""
    return ctx.package_dir / package.folder / VIEWER_FOLDER / str(package.id)


def _instance_key(number: str, position: float | None, instance_id: int) -> tuple[Any, ...]:
    try:
        n = int(number)
    except ValueError:
        n = 1 << 30
    return (n, position if position is not None else 0.0, instance_id)


def build_index(ctx: PortalContext, s: Session, series_id: int) -> SeriesIndex:
    """Read every instance header of series ``series_id`` (pixel data never) into its
    :class:`SeriesIndex`."""
    return index_rows(ctx, _rows(s, series_id))


def _rows(s: Session, series_id: int) -> list[tuple[int, str, str]]:
    rows = s.execute(
        select(Instance.id, Instance.path, Instance.instance_number).where(
            Instance.series_id == series_id, Instance.file_missing.is_(False)
        )
    ).all()
    return [(int(i), str(p), str(n)) for i, p, n in rows]


def index_rows(ctx: PortalContext, rows: list[tuple[int, str, str]]) -> SeriesIndex:
    """The :class:`SeriesIndex` of instances ``rows`` (row id, store path, instance
    number): their headers read, nothing from the database."""
    assert ctx.content is not None
    images: list[tuple[tuple[Any, ...], list[Frame]]] = []
    documents: list[Document] = []
    modality, colour, windows, broken = "", False, list[tuple[float, float]](), 0
    for instance_id, relpath, number in rows:
        try:
            info = describe(read_facts(ctx.content.path(relpath)))
        except (RenderFailed, OSError):
            broken += 1
            continue
        except Exception:  # a header that confuses pydicom's lazy parts: one image less
            broken += 1
            continue
        modality = modality or info.modality
        if info.kind in ("pdf", "sr"):
            documents.append(Document(instance_id, relpath, info.kind))
            continue
        if info.kind != "image":
            broken += 1  # no picture and no document: shown as one that cannot be drawn
            images.append(((1 << 30, 0.0, instance_id), [Frame(instance_id, relpath, 0, None)]))
            continue
        if not images:
            colour, windows = info.colour, list(info.windows)
        frames = [  # at most MAX_VIEW_FRAMES per instance, whatever its header claims
            Frame(instance_id, relpath, f, info.positions[i] if i < len(info.positions) else None)
            for i, f in enumerate(info.picks)
        ]
        first = frames[0].position if frames else None
        images.append((_instance_key(number, first, instance_id), frames))
    images.sort(key=lambda item: item[0])
    documents.sort(key=lambda d: d.instance_id)
    return SeriesIndex(
        frames=[f for _, fs in images for f in fs],
        documents=documents,
        modality=modality,
        colour=colour,
        windows=windows,
        broken=broken,
    )


@functools.lru_cache(maxsize=32)
def _load(path: str, mtime_ns: int) -> SeriesIndex:
    doc = json.loads(Path(path).read_text())
    if doc.get("version") != _INDEX_VERSION:
        raise ValueError("old index")
    return SeriesIndex(
        frames=[Frame(**f) for f in doc["frames"]],
        documents=[Document(**d) for d in doc["documents"]],
        modality=doc["modality"],
        colour=doc["colour"],
        windows=[(float(c), float(w)) for c, w in doc["windows"]],
        broken=doc["broken"],
    )


def series_index(
    ctx: PortalContext,
    s: Session,
    package: Package,
    series_id: int,
    withheld: Collection[int] = (),
) -> SeriesIndex:
    """The series' index, read from the viewer's folder or built and written there (not
    written when the package's folder is gone: nothing is brought back after a purge),
    without the instances in ``withheld`` (filtered on every read: the kept index lists
    every instance, the report policy's answer can change after it was written)."""
    folder = viewer_folder(ctx, package)
    path = folder / f"series-{series_id}.json"
    try:
        index = _load(str(path), path.stat().st_mtime_ns)
    except (OSError, ValueError, KeyError, TypeError):
        index = _keep(ctx, package, series_id, build_index(ctx, s, series_id))
    if not withheld:
        return index
    held = set(withheld)
    return replace(
        index,
        frames=[f for f in index.frames if f.instance_id not in held],
        documents=[d for d in index.documents if d.instance_id not in held],
    )


def _keep(ctx: PortalContext, package: Package, series_id: int, index: SeriesIndex) -> SeriesIndex:
    """Write ``index`` into the viewer's folder (unless the package's folder is gone)."""
    folder = viewer_folder(ctx, package)
    path = folder / f"series-{series_id}.json"
    if (ctx.package_dir / package.folder).is_dir():
        try:
            private_dir(folder)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            doc = {"version": _INDEX_VERSION, **asdict(index)}
            write_private(tmp, json.dumps(doc).encode())
            tmp.replace(path)
        except OSError as exc:
            log.warning("viewer: series index not kept (%s)", type(exc).__name__)
    return index


def study_of(s: Session, study_id: int) -> Study | None:
    return s.get(Study, study_id)


_prebuilding: set[int] = set()  # package ids whose indexes a thread is building
_prebuild_lock = threading.Lock()


def prebuild(ctx: PortalContext, s: Session, package: Package, series_ids: list[int]) -> None:
    """Index ``series_ids`` of ``package`` in a background thread (those not indexed yet),
    so that the viewer's first page does not wait for a series' headers: the files page
    calls this while the patient reads it. One thread per package at a time; a failure
    only means the first view builds the index itself."""
    folder = viewer_folder(ctx, package)
    todo = [i for i in series_ids if not (folder / f"series-{i}.json").is_file()]
    if not todo or ctx.content is None:
        return
    with _prebuild_lock:
        if package.id in _prebuilding:
            return
        _prebuilding.add(package.id)
    # The rows read here; the thread reads files only (no database connection of its
    # own to outlive anything), on a transient copy of the package row.
    work = [(series_id, _rows(s, series_id)) for series_id in todo]
    package = Package(id=package.id, folder=package.folder)

    def run() -> None:
        try:
            for series_id, rows in work:
                _keep(ctx, package, series_id, index_rows(ctx, rows))
        except Exception as exc:  # the first view will try again
            log.debug("viewer: series not indexed ahead (%s)", type(exc).__name__)
        finally:
            with _prebuild_lock:
                _prebuilding.discard(package.id)

    threading.Thread(target=run, name="viewer-index", daemon=True).start()

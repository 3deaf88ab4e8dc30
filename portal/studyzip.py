"""Per-study ZIPs: one study of a request as a self-contained package, built on demand.

The nightly batch builds one package per request (every study). A patient with several
studies may want only one of them; the download page then offers each study on its own,
numbered by its position on the page (1, 2…, the order of :func:`request_studies`). The
first request for study ``k`` builds it with the ordinary packager (DICOMDIR, READMEs,
manifest, previews; one part, whatever its size) into::

    <package_dir>/<package folder>/studies/<package id>/<reference>-S<k>.zip

Keyed by the package id, a rebuilt package (a new row) never serves a study ZIP made
from the instances of an earlier one; and the file's MANIFEST.json must name that study
alone, or it is built again (a study list that changed under the same package). The
folder goes with the package's when the link expires.

Built once: builds of the same file are serialized by a per-path lock, and the second
comer finds the finished file. The packager writes under a hidden ``.partial`` name and
renames, so a final-named file is always complete.

Errors: :class:`~delivery.packaging.package.PackageError` when the study's instances are missing
or unreadable in the store, or the ZIP cannot be written (nothing final-named is left).
"""

from __future__ import annotations

import functools
import json
import shutil
import threading
import weakref
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from delivery.packaging.items import package_items
from delivery.packaging.package import PackageError, PackageInfo, build_package
from delivery.packaging.preview import RenderLimits
from delivery.packaging.zipwriter import PARTIAL_SUFFIX
from portal.context import PortalContext
from store.models import Package, ReleaseRequest, RequestStudy, Study

STUDIES_FOLDER = "studies"


@dataclass(frozen=True)
class StudyZip:
    """Study ``number`` (1-based, as the page shows it) of a package: where its ZIP is
    (or will be) kept, and what building it needs."""

    number: int
    study_uid: str
    path: Path
    package_id: int
    request_id: int
    language: str

    @property
    def name(self) -> str:
        """The file name the patient gets."""
        return self.path.name


def request_studies(s: Session, request_id: int) -> list[Study]:
    """The studies attached to request ``request_id``, in the page's order (by date)."""
    return list(
        s.scalars(
            select(Study)
            .join(RequestStudy, RequestStudy.study_id == Study.id)
            .where(RequestStudy.request_id == request_id)
            .order_by(Study.study_date, Study.id)
        )
    )


def study_zips(ctx: PortalContext, s: Session, package: Package) -> list[StudyZip]:
    """Every study of ``package``'s request, in the page's order; empty when per-study
    downloads are not offered (no content store, or one study: the package is it)."""
    if ctx.content is None:
        return []
    req = s.get(ReleaseRequest, package.request_id)
    if req is None:
        return []
    rows = request_studies(s, req.id)
    if len(rows) < 2:
        return []
    folder = ctx.package_dir / package.folder / STUDIES_FOLDER / str(package.id)
    return [
        StudyZip(
            number=k,
            study_uid=row.study_uid,
            path=folder / f"{req.reference}-S{k}.zip",
            package_id=package.id,
            request_id=req.id,
            language=req.language,
        )
        for k, row in enumerate(rows, start=1)
    ]


def study_zip(ctx: PortalContext, s: Session, package: Package, number: int) -> StudyZip | None:
    """Study ``number`` of ``package`` (see :func:`study_zips`), or None."""
    zips = study_zips(ctx, s, package)
    return zips[number - 1] if 1 <= number <= len(zips) else None


@functools.lru_cache(maxsize=64)
def _study_uids(path: str, size: int, mtime_ns: int) -> frozenset[str]:
    with zipfile.ZipFile(path) as zf:
        doc = json.loads(zf.read("MANIFEST.json"))
    return frozenset(str(series.get("study_uid")) for series in doc.get("series", []))


def built(target: StudyZip) -> bool:
    """Whether ``target``'s file exists and its MANIFEST.json names that study alone."""
    try:
        st = target.path.stat()
        uids = _study_uids(str(target.path), st.st_size, st.st_mtime_ns)
    except (OSError, KeyError, ValueError, AttributeError, zipfile.BadZipFile):
        return False
    return uids == {target.study_uid}


def built_size(target: StudyZip) -> int | None:
    """The size of ``target``'s file when it is built, else None."""
    if not built(target):
        return None
    try:
        return target.path.stat().st_size
    except OSError:
        return None


class _PathLock:
    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()


# Keyed by file path: two builders of one file must share a lock whoever made them (the
# file system is process-wide). Weak values: a lock lives while someone holds or waits.
_locks: weakref.WeakValueDictionary[Path, _PathLock] = weakref.WeakValueDictionary()
_locks_guard = threading.Lock()


def _lock_for(path: Path) -> _PathLock:
    with _locks_guard:
        entry = _locks.get(path)
        if entry is None:
            entry = _PathLock()
            _locks[path] = entry
        return entry


def ensure(ctx: PortalContext, package_folder: str, target: StudyZip) -> Path:
    """The finished file of ``target``, built now if it is not (blocking: run it in a
    worker thread). Concurrent calls for one file build it once.

    Raises :class:`PackageError` when the study's instances are missing or unreadable,
    when the package's own folder is gone (the link expired meanwhile), or when writing
    fails; nothing final-named is left then.
    """
    if built(target):
        return target.path
    assert ctx.content is not None
    entry = _lock_for(target.path)
    with entry.lock:
        if built(target):  # another request built it while this one waited
            return target.path
        if not (ctx.package_dir / package_folder).is_dir():
            # Expired (its folder deleted): building would bring patient data back.
            raise PackageError("the package's folder is gone (expired or deleted)")
        _sweep_own_partials(target.path)
        items = package_items(
            ctx.sessions,
            ctx.content,
            target.request_id,
            study_uids=[target.study_uid],
            report_studies=ctx.report_studies_of,
        )
        try:
            result = build_package(
                items,
                target.path.parent,
                info=PackageInfo(
                    reference=target.path.name.removesuffix(".zip"),
                    language=target.language,
                    contact=ctx.contact,
                    created=ctx.clock(),
                ),
                max_part_bytes=None,
                # The node.yaml limits, as the batch's packages have (delivery.preview_*).
                preview_limits=RenderLimits(
                    ctx.delivery.preview_max_pixels,
                    ctx.delivery.preview_memory_mb,
                    ctx.delivery.preview_timeout_s,
                ),
                viewer=ctx.delivery.offline_viewer_options(),  # delivery.offline_viewer
            )
        except OSError as exc:
            if isinstance(exc, PackageError):
                raise
            raise PackageError(f"could not write the study ZIP: {exc}", permanent=False) from exc
        (path,) = result.parts
        if _expired(ctx, target.package_id):
            _remove(target.path.parent, ctx.package_dir / package_folder)
            raise PackageError("the link expired while the study ZIP was built")
        return path


def _expired(ctx: PortalContext, package_id: int) -> bool:
    """Whether the package was expired (the batch marks the row, then deletes its folder:
    a build that finished after the mark is undone here, one before it goes with the
    folder)."""
    with ctx.sessions() as s:
        deleted = s.scalar(select(Package.deleted_at).where(Package.id == package_id))
    return deleted is not None


def _remove(folder: Path, package_folder: Path) -> None:
    """Remove ``folder`` and its now-empty parents up to the package's own folder."""
    shutil.rmtree(folder, ignore_errors=True)
    for parent in (folder.parent, package_folder):
        try:
            parent.rmdir()
        except OSError:
            return


def _sweep_own_partials(path: Path) -> None:
    """Remove what an interrupted build of ``path`` left (called under its lock, so no
    build of that file is running; other files' partials are left alone)."""
    folder = path.parent
    if not folder.is_dir():
        return
    for entry in folder.glob(f".{path.name}.*{PARTIAL_SUFFIX}"):
        if entry.is_file():
            entry.unlink(missing_ok=True)

"""Disc images: a request's studies as an ISO 9660 image to burn when a link will not do.

Public surface: :func:`write_disc_image` → :class:`DiscResult`, :func:`volume_label`, and
the errors :class:`DiscTargetError` and :class:`DiscExistsError` (both
:class:`~delivery.packaging.errors.PackageError`); bad instance files raise the package's
:class:`~delivery.packaging.errors.MissingInstanceError` /
:class:`~delivery.packaging.errors.UnreadableInstanceError`, and a failed write
:class:`~delivery.packaging.errors.PackageWriteError`.

The layout is an IHE PDI medium (PS3.12 Annex F, ISO 9660 level 1):

- ``DICOMDIR`` at the root, its File-set ID the volume label (PS3.12 F.1.1), and the
  instances under ``DICOM/`` at the file IDs it names (``DICOM/PT000000/ST000000/
  SE000000/IM000000``: upper case, at most 8 characters, no extension, 5 levels), the
  stored files without the sender in their meta group (:class:`store.filemeta.OutgoingFile`),
  every other byte as stored;
- ``README.TXT`` / ``README.HTM`` (the package's plain-language READMEs, in their disc
  wording: open the disc named by the volume label, no unzipping, no expiry) and
  ``MANIFEST.JSN`` (format ``courier-package/1``, as in a ZIP: SHA-256 and size of every
  other file; no previews). Level 1 allows only 8.3 names, so a Joliet tree repeats
  everything with the long names ``README.txt``, ``README.html``, ``MANIFEST.json``, which
  Windows, macOS and Linux show; the manifest lists those names.
- with ``viewer=``, the offline viewer: ``VIEWER/`` (``index.html`` and every image
  pre-rendered, :mod:`delivery.packaging.viewer`; level 1 names ``VIEWER/INDEX.HTM``,
  ``VIEWER/S001/00001.JPG``) and ``INDEX.HTM`` at the root, the IHE PDI web content,
  which opens it; the manifest lists them like every other file.

Each instance is read three times, one file at a time: its SHA-256 and its header (for
the manifest and the DICOMDIR, which pycdlib lays out *before* the instances, so they are
needed first), then pycdlib copies it through :class:`_Source`, which re-hashes the bytes
as they pass and fails the write if the file changed in between or is shorter than its
size (pycdlib itself would pad a short file with zeros). Memory holds directory records,
never instance data: pycdlib copies in 1 MiB blocks from a file it opens when it gets
there.

Writes go to ``.<name>.<random>.partial`` beside ``out_path`` (swept by
:func:`delivery.packaging.package.sweep_partial`), which is fsynced, then renamed; any error removes
it, so a final-named image is always whole. Without ``force`` the rename is a hard link
that fails if ``out_path`` appeared meanwhile: an existing file is never replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from delivery.packaging.builder import (
    by_series,
    part_manifest,
    read_dicomdir,
    readme_files,
    series_entry,
)
from delivery.packaging.errors import (
    MissingInstanceError,
    PackageError,
    PackageWriteError,
    UnreadableInstanceError,
)
from delivery.packaging.manifest import Counts
from delivery.packaging.package import PackageInfo, PackageItem
from delivery.packaging.viewer import ImageSpool, ViewerOptions, disc_index, level1, viewer_files
from delivery.packaging.zipwriter import CHUNK, Entry, fsync_dir, temporary_name
from store.content import FILE_MODE
from store.filemeta import MalformedMeta, OutgoingFile

__all__ = ["DiscExistsError", "DiscResult", "DiscTargetError", "volume_label", "write_disc_image"]

log = logging.getLogger("courier.delivery.disc")

#: The File ID component above the patients (IHE PDI: the instances live under DICOM/).
ROOT = "DICOM"
#: An 80-minute CD-R (360,000 sectors of 2048 bytes) and a single-layer DVD±R.
CD_BYTES = 737_280_000
DVD_BYTES = 4_700_372_992

_RERUN = "then run export-iso again"
# Joliet (long) name -> ISO 9660 level 1 name (8.3, upper case) for the files beside DICOM/.
_LEVEL1 = {
    "DICOMDIR": "DICOMDIR.",
    "README.txt": "README.TXT",
    "README.html": "README.HTM",
    "MANIFEST.json": "MANIFEST.JSN",
}

#: ``progress(done, total)``: bytes of the image written so far, out of all.
Progress = Callable[[int, int], None]


class DiscTargetError(PackageError):
    """``out_path`` cannot be written: its folder is missing or read-only, or it is a folder."""


class DiscExistsError(DiscTargetError, FileExistsError):
    """``out_path`` exists and ``force`` was not given."""


@dataclass(frozen=True)
class DiscResult:
    """The image written and what it holds.

    ``medium`` is the smallest disc it fits (``"CD"``, ``"DVD"``), or None when it is
    larger than a single-layer DVD. ``notes`` record attributes the DICOMDIR had to invent
    (UIDs only, no patient data).
    """

    path: Path
    size: int
    sha256: str
    volume_id: str
    studies: int
    series: int
    instances: int
    medium: str | None
    notes: tuple[str, ...]


def volume_label(reference: str) -> str:
    """The volume identifier (and DICOMDIR File-set ID) for ``reference``.

    ``CR-7KQ4-M2XD-9`` → ``CR_7KQ4_M2XD_9``: both must be ISO 9660 d-characters (A-Z,
    0-9, _), at most 16 for a File-set ID. Raises ``ValueError`` when nothing is left.
    """
    label = re.sub(r"[^A-Z0-9_]", "", reference.upper().replace("-", "_"))[:16]
    if not label:
        raise ValueError(f"reference {reference!r}: no letters or digits for a volume label")
    return label


def _ordered(items: Iterable[PackageItem]) -> list[PackageItem]:
    """Package order: studies as first seen, then series and instances by number, then UID."""
    items = list(items)
    studies: dict[str, int] = {}
    for item in items:
        studies.setdefault(item.study_uid, len(studies))

    def key(item: PackageItem) -> tuple[int, float, str, float, str]:
        series = math.inf if item.series_number is None else item.series_number
        number = math.inf if item.instance_number is None else item.instance_number
        return (
            studies[item.study_uid],
            series,
            item.series_uid,
            number,
            item.sop_instance_uid,
        )

    return sorted(items, key=key)


def _outgoing(item: PackageItem) -> OutgoingFile:
    """The instance's file as it goes on the disc: without the sender in its meta group."""
    try:
        return OutgoingFile(item.path)
    except MalformedMeta as exc:
        raise UnreadableInstanceError(
            f"instance {item.sop_instance_uid}: {item.path} has a malformed File Meta "
            f"Information group ({exc}): have the study sent again, {_RERUN}"
        ) from None


def _digest(item: PackageItem) -> tuple[int, str]:
    """Size and SHA-256 of the instance's file as it goes on the disc, read in 1 MiB
    chunks."""
    digest = hashlib.sha256()
    size = 0
    try:
        with _outgoing(item) as source:
            buffer = bytearray(CHUNK)
            view = memoryview(buffer)
            while n := source.readinto(buffer):
                digest.update(view[:n])
                size += n
    except FileNotFoundError:
        raise MissingInstanceError(
            f"instance {item.sop_instance_uid} has no file in the store ({item.path}): "
            f"have the study sent again (or re-fetch it from PACS), {_RERUN}"
        ) from None
    except OSError as exc:
        raise UnreadableInstanceError(
            f"instance {item.sop_instance_uid} cannot be read ({item.path}: {exc.strerror}): "
            f"check the store's permissions and disk, {_RERUN}"
        ) from exc
    return size, digest.hexdigest()


class _Source(io.RawIOBase):
    """An instance file as pycdlib reads it: opened on first use, closed at its last byte.

    Checks what passes against the first read (``entry``): a short read or other bytes
    raise :class:`UnreadableInstanceError` out of pycdlib's write. One descriptor is open
    at a time, however many instances the disc holds.
    """

    def __init__(self, item: PackageItem, entry: Entry) -> None:
        super().__init__()
        self._item = item
        self._entry = entry
        self._file: OutgoingFile | None = None
        self._digest = hashlib.sha256()
        self._done = 0
        self.verified = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """pycdlib seeks to 0 before copying; any other position is not supported."""
        if offset != 0 or whence != os.SEEK_SET:
            raise io.UnsupportedOperation("an instance is copied from its start only")
        self._open()
        return 0

    def _open(self) -> None:
        self._close_file()
        try:
            self._file = _outgoing(self._item)
        except FileNotFoundError:
            raise MissingInstanceError(
                f"instance {self._item.sop_instance_uid} vanished from the store "
                f"({self._item.path}) while writing the disc image: have the study sent "
                f"again, {_RERUN}"
            ) from None
        self._digest = hashlib.sha256()
        self._done = 0
        self.verified = False

    def readinto(self, buffer: Any) -> int:
        if self._file is None:
            self._open()
        assert self._file is not None
        view = memoryview(buffer)
        want = min(len(view), self._entry.size - self._done)
        n = 0
        while n < want:  # fill the request: pycdlib takes a short read as the file's end
            got = self._file.readinto(view[n:want])
            if not got:
                raise self._changed("is shorter than when it was hashed")
            n += got
        self._digest.update(view[:n])
        self._done += n
        if self._done == self._entry.size and not self.verified:
            self._verify()
        return n

    def _verify(self) -> None:
        assert self._file is not None
        if self._file.stored_size() != self._entry.size:
            raise self._changed("changed size")
        if self._digest.hexdigest() != self._entry.sha256:
            raise self._changed("changed content")
        self.verified = True
        self._close_file()

    def _changed(self, what: str) -> UnreadableInstanceError:
        return UnreadableInstanceError(
            f"instance {self._item.sop_instance_uid}: {self._item.path} {what} while "
            f"writing the disc image; stored files must not change: check what writes to "
            f"the store, {_RERUN}"
        )

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        self._close_file()
        super().close()


def _check_target(out_path: Path, force: bool) -> Path:
    """The folder ``out_path`` goes into; raises :class:`DiscTargetError` / ``DiscExistsError``."""
    folder = out_path.absolute().parent
    if not folder.is_dir():
        raise DiscTargetError(
            f"the folder {folder} does not exist: create it, or give a path in an existing folder"
        )
    if out_path.is_dir():
        raise DiscTargetError(f"{out_path} is a folder: give a file name, such as disc.iso")
    if (out_path.exists() or out_path.is_symlink()) and not force:
        raise DiscExistsError(
            f"{out_path} exists: give another name, or replace it (export-iso --force)"
        )
    return folder


def _directories(file_ids: Iterable[str]) -> list[str]:
    """Every folder the file IDs need, parents first."""
    folders = {"/".join(parts[:n]) for parts in (f.split("/") for f in file_ids)
               for n in range(1, len(parts))}  # fmt: skip
    return sorted(folders, key=lambda f: (f.count("/"), f))


def _add_bytes(iso: pycdlib.PyCdlib, name: str, data: bytes) -> Entry:
    iso.add_fp(io.BytesIO(data), len(data), iso_path=f"/{_LEVEL1[name]};1", joliet_path=f"/{name}")
    return Entry(name, len(data), hashlib.sha256(data).hexdigest())


def _add_reports(iso: pycdlib.PyCdlib, info: PackageInfo) -> list[Entry]:
    """``REPORT/`` (:mod:`delivery.report_render`: 8.3 names already); its entries."""
    if not info.reports:
        return []
    iso.add_directory(iso_path="/REPORT", joliet_path="/REPORT")
    listed = []
    for name, data in info.reports:
        iso.add_fp(io.BytesIO(data), len(data), iso_path=f"/{name};1", joliet_path=f"/{name}")
        listed.append(Entry(name, len(data), hashlib.sha256(data).hexdigest()))
    return listed


def _add_viewer(
    iso: pycdlib.PyCdlib,
    ordered: list[PackageItem],
    spool: ImageSpool,
    info: PackageInfo,
) -> tuple[list[Entry], list[str]]:
    """``VIEWER/`` (images from the spool, left there until the image is written) and
    ``INDEX.HTM`` at the root, which opens it; returns their manifest entries and notes."""
    index = {uid: n for n, uid in enumerate(dict.fromkeys(i.series_uid for i in ordered), 1)}
    files, notes = viewer_files(ordered, spool, info=info, series_index=index, medium="disc")
    listed: list[Entry] = []
    folders = {name.rsplit("/", 1)[0] for name in (f.name for f in files)}
    for folder_id in _directories(f"{f}/x" for f in folders):
        iso.add_directory(iso_path=f"/{folder_id.upper()}", joliet_path=f"/{folder_id}")
    for file in files:
        iso_path, joliet_path = f"/{level1(file.name)};1", f"/{file.name}"
        if file.data is not None:
            data = file.data
            iso.add_fp(io.BytesIO(data), len(data), iso_path=iso_path, joliet_path=joliet_path)
        else:
            assert file.path is not None
            data = file.path.read_bytes()  # one small JPEG: its hash for the manifest
            iso.add_file(str(file.path), iso_path=iso_path, joliet_path=joliet_path)
        listed.append(Entry(file.name, len(data), hashlib.sha256(data).hexdigest()))
    page = disc_index(info)
    iso.add_fp(io.BytesIO(page), len(page), iso_path="/INDEX.HTM;1", joliet_path="/INDEX.HTM")
    listed.append(Entry("INDEX.HTM", len(page), hashlib.sha256(page).hexdigest()))
    return listed, notes


def _medium(size: int) -> str | None:
    if size <= CD_BYTES:
        return "CD"
    return "DVD" if size <= DVD_BYTES else None


def _sha256_of(path: Path) -> str:
    """SHA-256 of the written image (read back: pycdlib does not write it in order)."""
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as f:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def _publish(temporary: Path, final: Path, force: bool) -> None:
    """Give the finished image its final name; never replaces a file unless ``force``."""
    if force:
        os.replace(temporary, final)
        return
    try:
        os.link(temporary, final)  # fails if final exists: no check-then-rename race
    except FileExistsError:
        raise DiscExistsError(
            f"{final} appeared while the image was written: give another name, or "
            "replace it (export-iso --force)"
        ) from None
    except OSError:  # a filesystem without hard links: a small race, but no replace
        if final.exists():
            raise DiscExistsError(f"{final} appeared while the image was written") from None
        os.replace(temporary, final)
        return
    temporary.unlink()


def write_disc_image(
    items: Iterable[PackageItem],
    out_path: Path,
    *,
    info: PackageInfo,
    force: bool = False,
    progress: Progress | None = None,
    viewer: ViewerOptions | None = None,
) -> DiscResult:
    """Write ``items`` (a request's stored instances) as an ISO 9660 image at ``out_path``.

    The layout, the checks and the atomic write are in the module docstring; the volume
    label is :func:`volume_label` of ``info.reference``. ``progress(done, total)`` is called
    with image bytes as pycdlib writes. ``viewer``: put the offline viewer on the disc
    (``VIEWER/`` and ``INDEX.HTM`` at the root; :mod:`delivery.packaging.viewer`).

    Raises :class:`DiscTargetError` when ``out_path``'s folder is missing or not writable
    or ``out_path`` is a folder, :class:`DiscExistsError` when it exists and not ``force``
    (both before any instance is read); :class:`MissingInstanceError` /
    :class:`UnreadableInstanceError` for an instance file that is missing, unreadable, not
    the instance named, or changes while written; :class:`PackageWriteError` when writing
    fails (disk full); :class:`PackageError` when there is no instance or one cannot go on
    a level 1 disc (4 GiB or more). Whatever the error, nothing is left at ``out_path``
    (an existing file there is untouched) and no temporary file remains.
    """
    label = volume_label(info.reference)
    ordered = _ordered(items)
    if not ordered:
        raise PackageError(f"nothing to put on the disc: no instance given, {_RERUN}")
    folder = _check_target(out_path, force)
    temporary = folder / temporary_name(out_path.name)
    try:
        # Owner-only whatever the umask: the image holds patient data.
        out = os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), "wb")
    except OSError as exc:
        raise DiscTargetError(
            f"cannot write into {folder} ({exc.strerror}): choose a folder you can write to"
        ) from exc
    sources: list[_Source] = []
    iso = pycdlib.PyCdlib()
    spool = None
    if viewer is not None:
        groups = list(by_series(ordered))
        spool = ImageSpool.beside(groups, folder, out_path.name, viewer).start()
    try:
        with out:
            entries: dict[str, tuple[int, str]] = {}

            def hashed(all_items: list[PackageItem]) -> Iterator[PackageItem]:
                for item in all_items:  # hash, then the header: one file at a time
                    entries[item.sop_instance_uid] = _digest(item)
                    yield item

            dicomdir = read_dicomdir(hashed(ordered), root=ROOT, file_set_id=label, rerun=_RERUN)
            iso.new(interchange_level=1, vol_ident=label, joliet=3, app_ident_str="COURIER")
            for folder_id in _directories(dicomdir.file_ids.values()):
                iso.add_directory(iso_path=f"/{folder_id}", joliet_path=f"/{folder_id}")
            listed: list[Entry] = []
            for item in ordered:
                file_id = dicomdir.file_ids[item.sop_instance_uid]
                entry = Entry(file_id, *entries[item.sop_instance_uid])
                source = _Source(item, entry)
                sources.append(source)
                iso.add_fp(
                    cast(BinaryIO, source),
                    entry.size,
                    iso_path=f"/{file_id}.;1",
                    joliet_path=f"/{file_id}",
                )
                listed.append(entry)
            listed.append(_add_bytes(iso, "DICOMDIR", dicomdir.data))
            notes = list(dicomdir.notes)
            if spool is not None:
                viewer_entries, viewer_notes = _add_viewer(iso, ordered, spool, info)
                listed += viewer_entries
                notes += viewer_notes
            listed += _add_reports(iso, info)
            series = [series_entry(members) for members in by_series(ordered)]
            counts = Counts(len({s.study_uid for s in series}), len(series), len(ordered))
            readmes = readme_files(
                info,
                part=1,
                parts=1,
                counts=counts,
                medium="disc",
                label=label,
                viewer=spool is not None,
            )
            for name, data in readmes:
                listed.append(_add_bytes(iso, name, data))
            manifest = part_manifest(
                info,
                part=1,
                parts=1,
                package_counts=counts,
                series=series,
                entries=listed,
                notes=notes,
            )
            _add_bytes(iso, "MANIFEST.json", manifest)

            def report(done: int, total: int, _opaque: object) -> None:
                if progress is not None:
                    progress(done, total)

            iso.write_fp(cast(BinaryIO, out), blocksize=CHUNK, progress_cb=report)
            out.flush()
            os.fsync(out.fileno())
            size = os.fstat(out.fileno()).st_size
        if not all(s.verified for s in sources):  # pycdlib copies each file once, whole
            raise PackageWriteError(f"the image in {folder} misses instance data: {_RERUN}")
        sha256 = _sha256_of(temporary)
        _publish(temporary, out_path, force)
        fsync_dir(folder)
    except BaseException as exc:
        for source in sources:
            source.close()
        temporary.unlink(missing_ok=True)
        if isinstance(exc, PyCdlibException):
            raise PackageError(f"the disc image cannot be made: {exc}; {_RERUN}") from exc
        if isinstance(exc, OSError) and not isinstance(exc, PackageError):
            raise PackageWriteError(
                f"could not write the disc image into {folder}: {exc}; free disk space or "
                f"fix permissions there, {_RERUN}"
            ) from exc
        raise
    finally:
        with contextlib.suppress(Exception):
            iso.close()
        if spool is not None:
            spool.close()
    log.info("disc image of %s written: %d instances, %d bytes", info.reference, len(ordered), size)
    return DiscResult(
        path=out_path,
        size=size,
        sha256=sha256,
        volume_id=label,
        studies=counts.studies,
        series=counts.series,
        instances=counts.instances,
        medium=_medium(size),
        notes=tuple(notes),
    )

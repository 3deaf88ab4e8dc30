"""One self-contained part of a package (for :func:`delivery.packaging.package.build_package`).

The pieces a disc image shares with a ZIP part (:mod:`delivery.disc`) are public here:
:func:`read_dicomdir` (headers read and checked, then the DICOMDIR), :func:`by_series`
and :func:`series_entry` (the manifest's series), :func:`readme_files` and
:func:`part_manifest`.

Instances go without the sender in their meta group (:class:`store.filemeta.OutgoingFile`:
calling and called AE titles, the sender's address), every other byte as stored.
Order inside a part: the instances (streamed), ``DICOMDIR``, ``PREVIEW/*.jpg``,
``VIEWER/`` (the offline viewer's images, ``index.html``, script and stylesheet; see
:mod:`delivery.packaging.viewer`), ``README.txt``, ``README.html`` and last
``MANIFEST.json``, which lists the size and SHA-256 of every entry before it. Headers
are read twice per instance (once, without pixel data, for the DICOMDIR; once as
bytes while copying); the second read comes from the page cache, and it keeps memory
flat: nothing but directory records stays in memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from delivery.packaging.dicomdir import Dicomdir, build_dicomdir
from delivery.packaging.errors import MissingInstanceError, UnreadableInstanceError
from delivery.packaging.manifest import Counts, SeriesEntry, manifest_bytes
from delivery.packaging.parts import Sized
from delivery.packaging.readme import Medium, render_readmes
from delivery.packaging.viewer import ImageSpool, viewer_files
from delivery.packaging.zipwriter import Entry, PartWriter
from store.filemeta import MalformedMeta, OutgoingFile

if TYPE_CHECKING:
    from delivery.packaging.package import PackageInfo, PackageItem

_RERUN = "then re-run delivery"


@dataclass(frozen=True)
class PackageFacts:
    """What every part needs to know about the whole package."""

    counts: Counts
    series_index: dict[str, int]  # series UID -> 1-based position in the package
    previews: Mapping[str, bytes | str]  # series UID -> JPEG, or why there is none


def _header(item: PackageItem, rerun: str = _RERUN) -> Dataset:
    """The instance's header without pixel data, checked against the item."""
    try:
        header = pydicom.dcmread(item.path, stop_before_pixels=True)
    except FileNotFoundError:
        raise MissingInstanceError(
            f"instance {item.sop_instance_uid} vanished from the store ({item.path}) while "
            f"packaging: have the study sent again, {rerun}"
        ) from None
    except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
        raise UnreadableInstanceError(
            f"instance {item.sop_instance_uid}: {item.path} is not a readable DICOM file "
            f"({type(exc).__name__}): have the study sent again, {rerun}"
        ) from exc
    if header.get("SOPInstanceUID") != item.sop_instance_uid:
        raise UnreadableInstanceError(
            f"instance {item.sop_instance_uid}: {item.path} holds another instance "
            f"({header.get('SOPInstanceUID')}): the store and its index disagree; "
            f"check the store, {rerun}"
        )
    return header


def read_dicomdir(
    items: Iterable[PackageItem],
    *,
    root: str | None = None,
    file_set_id: str | None = None,
    rerun: str = _RERUN,
) -> Dicomdir:
    """The DICOMDIR of ``items`` (see :func:`delivery.packaging.dicomdir.build_dicomdir` for
    ``root`` and ``file_set_id``), each header read without pixel data and checked.

    ``rerun`` ends the error messages (what to run again once fixed). Raises
    :class:`MissingInstanceError` / :class:`UnreadableInstanceError`.
    """
    try:
        return build_dicomdir(
            (_header(item, rerun) for item in items), root=root, file_set_id=file_set_id
        )
    except ValueError as exc:  # no directory record can describe an instance
        raise UnreadableInstanceError(f"DICOMDIR: {exc}; {rerun} once fixed") from exc


def _copy(writer: PartWriter, file_id: str, sized: Sized[PackageItem]) -> None:
    """Copy the instance as it leaves the hospital: without the sender in its meta group
    (:class:`store.filemeta.OutgoingFile`); the manifest lists the bytes written."""
    item = sized.item
    try:
        with OutgoingFile(item.path) as source:
            writer.add_file(file_id, source, source.size)
    except MalformedMeta as exc:
        raise UnreadableInstanceError(
            f"instance {item.sop_instance_uid}: {item.path} has a malformed File Meta "
            f"Information group ({exc}): have the study sent again, {_RERUN}"
        ) from None
    except FileNotFoundError:
        raise MissingInstanceError(
            f"instance {item.sop_instance_uid} vanished from the store ({item.path}) while "
            f"packaging: have the study sent again, {_RERUN}"
        ) from None
    except EOFError:
        raise UnreadableInstanceError(
            f"instance {item.sop_instance_uid}: {item.path} changed size while packaging; "
            f"stored files must not change: check what writes to the store, {_RERUN}"
        ) from None


def _preview_name(index: int, modality: str | None) -> str:
    label = re.sub(r"[^A-Za-z0-9]", "", modality or "")[:16] or "SERIES"
    return f"PREVIEW/{index:03d}-{label}.jpg"


def by_series(items: Iterable[PackageItem]) -> Iterator[list[PackageItem]]:
    """Runs of consecutive items of one series (package order keeps a series together)."""
    current: list[PackageItem] = []
    for item in items:
        if current and current[0].series_uid != item.series_uid:
            yield current
            current = []
        current.append(item)
    if current:
        yield current


def series_entry(
    members: Sequence[PackageItem], preview: str | None = None, note: str | None = None
) -> SeriesEntry:
    """The manifest's entry for one series (``members``, its instances in the part)."""
    first = members[0]
    return SeriesEntry(
        first.study_uid,
        first.series_uid,
        first.modality,
        first.series_number,
        len(members),
        preview,
        note,
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def readme_files(
    info: PackageInfo,
    *,
    part: int,
    parts: int,
    counts: Counts,
    medium: Medium = "zip",
    label: str | None = None,
    viewer: bool = False,
) -> list[tuple[str, bytes]]:
    """``README.txt`` and ``README.html`` (name, UTF-8 bytes) in the request's language;
    ``counts`` are the whole package's. A disc (``medium="disc"``) passes its volume
    ``label``; ``viewer``: the part has the offline viewer; see
    :func:`delivery.packaging.readme.render_readmes`."""
    text, html = render_readmes(
        language=info.language,
        reference=info.reference,
        contact=info.contact,
        created=info.created,
        expires=info.expires,
        part=part,
        parts=parts,
        studies=counts.studies,
        series=counts.series,
        instances=counts.instances,
        medium=medium,
        label=label,
        viewer=viewer,
    )
    return [("README.txt", text.encode("utf-8")), ("README.html", html.encode("utf-8"))]


def part_manifest(
    info: PackageInfo,
    *,
    part: int,
    parts: int,
    package_counts: Counts,
    series: Sequence[SeriesEntry],
    entries: Sequence[Entry],
    notes: Sequence[str],
) -> bytes:
    """``MANIFEST.json`` of one part holding ``series`` and the files ``entries``."""
    header = {
        "reference": info.reference,
        "language": info.language,
        "created": _iso(info.created),
        "expires": _iso(info.expires),
    }
    counts = Counts(
        len({s.study_uid for s in series}), len(series), sum(s.instances for s in series)
    )
    return manifest_bytes(
        header=header,
        part=part,
        parts=parts,
        counts=counts,
        package_counts=package_counts,
        series=series,
        entries=entries,
        notes=notes,
    )


def _write_viewer(
    writer: PartWriter,
    part: Sequence[Sized[PackageItem]],
    *,
    info: PackageInfo,
    facts: PackageFacts,
    viewer: ImageSpool,
) -> list[str]:
    """``VIEWER/`` of the part: images streamed from the spool (then deleted), the page."""
    files, notes = viewer_files(
        (s.item for s in part), viewer, info=info, series_index=facts.series_index
    )
    for file in files:
        if file.data is not None:
            writer.add_bytes(file.name, file.data, compress=not file.name.endswith(".jpg"))
        else:
            assert file.path is not None
            with file.path.open("rb", buffering=0) as source:
                writer.add_file(file.name, source, file.size)
            file.path.unlink(missing_ok=True)
    return notes


def write_part(
    writer: PartWriter,
    part: Sequence[Sized[PackageItem]],
    *,
    info: PackageInfo,
    number: int,
    parts: int,
    facts: PackageFacts,
    advance: Callable[[int], None],
    viewer: ImageSpool | None = None,
) -> list[str]:
    """Write part ``number`` of ``parts`` holding ``part`` (package order) into ``writer``.

    Calls ``advance(size)`` after each instance. ``viewer``: the rendered images of the
    offline viewer (None: no ``VIEWER/``). Returns the part's notes. Raises
    :class:`~delivery.packaging.errors.PackageError` subclasses for bad instance files and
    ``OSError`` when writing fails; the caller aborts the writer.
    """
    dicomdir = read_dicomdir(s.item for s in part)
    notes = list(dicomdir.notes)
    for sized in part:
        _copy(writer, dicomdir.file_ids[sized.item.sop_instance_uid], sized)
        advance(sized.size)
    writer.add_bytes("DICOMDIR", dicomdir.data)

    series: list[SeriesEntry] = []
    for members in by_series(s.item for s in part):
        first = members[0]
        preview = facts.previews[first.series_uid]
        if isinstance(preview, bytes):
            name = _preview_name(facts.series_index[first.series_uid], first.modality)
            writer.add_bytes(name, preview, compress=False)
            series.append(series_entry(members, preview=name))
        else:
            notes.append(f"series {first.series_uid}: no preview: {preview}")
            series.append(series_entry(members, note=preview))

    if viewer is not None:
        notes += _write_viewer(writer, part, info=info, facts=facts, viewer=viewer)
    if number == 1:  # the reports (delivery.report_render), once per package
        for name, data in info.reports:
            writer.add_bytes(name, data, compress=not name.endswith(".PDF"))

    for name, data in readme_files(
        info, part=number, parts=parts, counts=facts.counts, viewer=viewer is not None
    ):
        writer.add_bytes(name, data)
    writer.add_bytes(
        "MANIFEST.json",
        part_manifest(
            info,
            part=number,
            parts=parts,
            package_counts=facts.counts,
            series=series,
            entries=writer.entries,
            notes=notes,
        ),
    )
    return notes

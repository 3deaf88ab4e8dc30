"""Writing one self-contained part of a package (called by :func:`delivery.package.build_package`).

Order inside a part: the instances (streamed), ``DICOMDIR``, ``PREVIEW/*.jpg``,
``README.txt``, ``README.html`` and last ``MANIFEST.json``, which lists the size and
SHA-256 of every entry before it. Headers are read twice per instance (once, without pixel
data, for the DICOMDIR; once as raw bytes while copying); the second read comes from the
page cache, and it keeps memory flat: nothing but directory records stays in memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from delivery.dicomdir import build_dicomdir
from delivery.manifest import Counts, SeriesEntry, manifest_bytes
from delivery.package_errors import MissingInstanceError, UnreadableInstanceError
from delivery.parts import Sized
from delivery.readme import render_readmes
from delivery.zipwriter import PartWriter

if TYPE_CHECKING:
    from delivery.package import PackageInfo, PackageItem

_RERUN = "then re-run delivery"


@dataclass(frozen=True)
class PackageFacts:
    """What every part needs to know about the whole package."""

    counts: Counts
    series_index: dict[str, int]  # series UID -> 1-based position in the package
    previews: dict[str, bytes | str]  # series UID -> JPEG, or why there is none


def _header(item: PackageItem) -> Dataset:
    """The instance's header without pixel data, checked against the item."""
    try:
        header = pydicom.dcmread(item.path, stop_before_pixels=True)
    except FileNotFoundError:
        raise MissingInstanceError(
            f"instance {item.sop_instance_uid} vanished from the store ({item.path}) while "
            f"packaging: have the study sent again, {_RERUN}"
        ) from None
    except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
        raise UnreadableInstanceError(
            f"instance {item.sop_instance_uid}: {item.path} is not a readable DICOM file "
            f"({type(exc).__name__}): have the study sent again, {_RERUN}"
        ) from exc
    if header.get("SOPInstanceUID") != item.sop_instance_uid:
        raise UnreadableInstanceError(
            f"instance {item.sop_instance_uid}: {item.path} holds another instance "
            f"({header.get('SOPInstanceUID')}): the store and its index disagree; "
            f"check the store, {_RERUN}"
        )
    return header


def _copy(writer: PartWriter, file_id: str, sized: Sized[PackageItem]) -> None:
    item = sized.item
    try:
        with item.path.open("rb", buffering=0) as source:
            writer.add_file(file_id, source, sized.size)
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


def _by_series(part: Sequence[Sized[PackageItem]]) -> Iterator[list[PackageItem]]:
    current: list[PackageItem] = []
    for sized in part:
        if current and current[0].series_uid != sized.item.series_uid:
            yield current
            current = []
        current.append(sized.item)
    if current:
        yield current


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def write_part(
    writer: PartWriter,
    part: Sequence[Sized[PackageItem]],
    *,
    info: PackageInfo,
    number: int,
    parts: int,
    facts: PackageFacts,
    advance: Callable[[int], None],
) -> list[str]:
    """Write part ``number`` of ``parts`` holding ``part`` (package order) into ``writer``.

    Calls ``advance(size)`` after each instance. Returns the part's notes. Raises
    :class:`~delivery.package_errors.PackageError` subclasses for bad instance files and
    ``OSError`` when writing fails; the caller aborts the writer.
    """
    try:
        dicomdir = build_dicomdir(_header(s.item) for s in part)
    except ValueError as exc:  # no directory record can describe an instance
        raise UnreadableInstanceError(f"DICOMDIR: {exc}; {_RERUN} once fixed") from exc
    notes = list(dicomdir.notes)
    for sized in part:
        _copy(writer, dicomdir.file_ids[sized.item.sop_instance_uid], sized)
        advance(sized.size)
    writer.add_bytes("DICOMDIR", dicomdir.data)

    series: list[SeriesEntry] = []
    for members in _by_series(part):
        first = members[0]
        preview = facts.previews[first.series_uid]
        name = note = None
        if isinstance(preview, bytes):
            name = _preview_name(facts.series_index[first.series_uid], first.modality)
            writer.add_bytes(name, preview, compress=False)
        else:
            note = preview
            notes.append(f"series {first.series_uid}: no preview: {preview}")
        series.append(
            SeriesEntry(
                first.study_uid,
                first.series_uid,
                first.modality,
                first.series_number,
                len(members),
                name,
                note,
            )
        )

    total = facts.counts
    text, html = render_readmes(
        language=info.language,
        reference=info.reference,
        contact=info.contact,
        created=info.created,
        expires=info.expires,
        part=number,
        parts=parts,
        studies=total.studies,
        series=total.series,
        instances=total.instances,
    )
    writer.add_bytes("README.txt", text.encode("utf-8"))
    writer.add_bytes("README.html", html.encode("utf-8"))
    header = {
        "reference": info.reference,
        "language": info.language,
        "created": _iso(info.created),
        "expires": _iso(info.expires),
    }
    counts = Counts(len({s.study_uid for s in series}), len(series), len(part))
    writer.add_bytes(
        "MANIFEST.json",
        manifest_bytes(
            header=header,
            part=number,
            parts=parts,
            counts=counts,
            package_counts=total,
            series=series,
            entries=writer.entries,
            notes=notes,
        ),
    )
    return notes

"""The DICOMDIR of one package part, written by pydicom's :class:`~pydicom.fileset.FileSet`.

Only headers go in: each instance is read with ``stop_before_pixels`` (pixel data is never
loaded), handed to ``FileSet.add`` and forgotten, so memory grows with the number of
instances (a few KB of directory records each), not with their size. ``FileSet.write``
then lays the header-only copies out under PS3.10/PS3.12 file IDs (``PT000000/ST000000/
SE000000/IM000000``: upper case, at most 8 characters a component and 8 levels) in a
scratch folder and writes the DICOMDIR there; we keep its bytes and each instance's file
ID, and the packager puts the *stored* files (byte-identical) at those IDs in the ZIP.

The directory records need a few attributes that are only Type 2 (may be empty) in the
instances themselves: PatientID, StudyDate, StudyTime, StudyID, SeriesNumber,
InstanceNumber, Modality. When one is missing or empty, a placeholder goes into the
*record* only (never into the instance), as ``dcmmkdir +I`` does, and :attr:`Dicomdir.notes`
says so.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pydicom.dataset import Dataset
from pydicom.fileset import FileSet

# Placeholders for directory-record attributes the instance left empty (record only).
_INVENTED: dict[str, str | int] = {
    "PatientID": "UNKNOWN",
    "StudyDate": "19000101",
    "StudyTime": "000000",
    "StudyID": "1",
    "SeriesNumber": 0,
    "InstanceNumber": 0,
    "Modality": "OT",
}


@dataclass
class Dicomdir:
    """A DICOMDIR's bytes and the file ID (a relative POSIX path) of every instance."""

    data: bytes
    file_ids: dict[str, str]  # SOP Instance UID -> "PT000000/ST000000/SE000000/IM000000"
    notes: list[str] = field(default_factory=list)


def _fill_record_attributes(header: Dataset, notes: list[str]) -> None:
    """Put placeholders for empty record attributes into ``header`` (a header-only copy)."""
    for keyword, value in _INVENTED.items():
        if keyword not in header or header[keyword].VM == 0:
            setattr(header, keyword, value)
            notes.append(
                f"instance {header.SOPInstanceUID}: no {keyword} in the file; "
                f"the DICOMDIR record says {value!r}"
            )


def discard(fileset: FileSet) -> None:
    """Remove the staging folder every FileSet keeps in ``TMPDIR``, now.

    pydicom (3.0) creates it on construction and leaves it to the garbage collector, which
    warns (ResourceWarning) and, after a crash, leaves it behind; FileSet has no public
    close, so this reaches for its ``TemporaryDirectory``.
    """
    stage = getattr(fileset, "_stage", {}).get("t")
    if stage is not None:
        stage.cleanup()


def build_dicomdir(headers: Iterable[Dataset], scratch: Path) -> Dicomdir:
    """Build the DICOMDIR for ``headers`` (datasets read with ``stop_before_pixels``).

    ``scratch`` must not exist; it is created, used for pydicom's header-only layout and
    removed before returning (also on error). Headers may be modified (placeholders, see the
    module docstring). Raises ``ValueError`` (from pydicom) when an instance cannot be
    described by a directory record at all, e.g. it has no SOPInstanceUID.
    """
    notes: list[str] = []
    fileset = FileSet()
    try:
        for header in headers:
            _fill_record_attributes(header, notes)
            fileset.add(header)
        scratch.mkdir()
        fileset.write(scratch)
        data = (scratch / "DICOMDIR").read_bytes()
        file_ids = {
            str(instance.SOPInstanceUID): PurePosixPath(
                Path(instance.path).relative_to(scratch)
            ).as_posix()
            for instance in fileset
        }
    finally:
        discard(fileset)
        shutil.rmtree(scratch, ignore_errors=True)
    return Dicomdir(data, file_ids, notes)

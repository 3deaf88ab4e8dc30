"""``MANIFEST.json``: what a package part holds, with a SHA-256 and size per file.

The manifest is the last entry written, so it lists every other file in the ZIP (not
itself). Format ``courier-package/1``::

    {
      "format": "courier-package/1",
      "reference": "CR-ABCD-EFGH-K", "language": "en",
      "created": "2024-01-02T10:15:00+00:00", "expires": null,
      "part": 1, "parts": 3,
      "counts": {"studies": 1, "series": 2, "instances": 300},          # this part
      "package_counts": {"studies": 1, "series": 4, "instances": 900},  # all parts
      "series": [{"study_uid": "...", "series_uid": "...", "modality": "CT",
                  "series_number": 1, "instances": 300,
                  "preview": "PREVIEW/001-CT.jpg", "preview_note": null}],
      "files": [{"path": "DICOMDIR", "size": 1234, "sha256": "..."}],
      "notes": ["series ...: no preview: pixels could not be decoded (...)"]
    }

A series without a thumbnail has ``"preview": null`` and the reason in ``preview_note``.
The offline viewer's files (``VIEWER/index.html``, its script, stylesheet and images;
:mod:`delivery.packaging.viewer`) are listed in ``files`` like every other file; an image
it could not render adds a line ``series <UID>: offline viewer: ...`` to ``notes``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from delivery.packaging.zipwriter import Entry

FORMAT = "courier-package/1"
NAME = "MANIFEST.json"


@dataclass(frozen=True)
class Counts:
    """How many studies, series and instances."""

    studies: int
    series: int
    instances: int


@dataclass(frozen=True)
class SeriesEntry:
    """One series of a part as the manifest lists it."""

    study_uid: str
    series_uid: str
    modality: str | None
    series_number: int | None
    instances: int
    preview: str | None
    preview_note: str | None


def manifest_bytes(
    *,
    header: dict[str, Any],
    part: int,
    parts: int,
    counts: Counts,
    package_counts: Counts,
    series: Sequence[SeriesEntry],
    entries: Sequence[Entry],
    notes: Sequence[str],
) -> bytes:
    """The UTF-8 JSON of one part's manifest.

    ``header`` holds the package-wide fields (reference, language, created, expires) as
    JSON-ready values; ``entries`` are the files already written into the part.
    """
    document = {
        "format": FORMAT,
        **header,
        "part": part,
        "parts": parts,
        "counts": asdict(counts),
        "package_counts": asdict(package_counts),
        "series": [asdict(s) for s in series],
        "files": [{"path": e.path, "size": e.size, "sha256": e.sha256} for e in entries],
        "notes": list(notes),
    }
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

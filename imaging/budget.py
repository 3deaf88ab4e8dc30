"""Declared pixel sizes: what a header says its pixel data holds, read before decoding.

:func:`declared_size` reads Rows, Columns, NumberOfFrames, SamplesPerPixel and
BitsAllocated (never the pixel data) into a :class:`PixelBudget`. The counts are the
header's claims: a lying header can declare far more than it carries (an RLE frame of
zeros is tiny on the wire), which is exactly why callers check these numbers before any
decoder allocates the frame. Missing or malformed values count as 0 (rows, columns,
bits) or 1 (frames, samples); a negative or non-numeric NumberOfFrames counts as 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imaging.errors import OverBudget


@dataclass(frozen=True)
class PixelBudget:
    """The size an instance's header declares for its pixel data."""

    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int

    @property
    def frame_values(self) -> int:
        """Values in one decoded frame: Rows × Columns × SamplesPerPixel."""
        return self.rows * self.columns * self.samples

    @property
    def total_values(self) -> int:
        """Values in the whole instance: the frame's × NumberOfFrames (what ingest bounds)."""
        return self.frame_values * self.frames

    @property
    def frame_bytes(self) -> int:
        """Bytes of one decoded frame at BitsAllocated (rounded up to whole bytes)."""
        return self.frame_values * ((self.bits_allocated + 7) // 8)

    def check_frame(self, max_values: int) -> None:
        """Raise :class:`OverBudget` when one frame holds more than ``max_values`` values."""
        if self.frame_values > max_values:
            raise OverBudget(
                f"the image declares {self.rows}x{self.columns}x{self.samples} values per "
                f"frame, over the limit of {max_values}; not decoded"
            )


def _int(value: Any, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):  # a MultiValue, "1.5", "abc": not a count
        return default


def declared_size(ds: Any) -> PixelBudget:
    """The pixel size ``ds`` (a pydicom Dataset, or anything with ``.get(keyword)``)
    declares. Never raises for malformed values (see the module docstring)."""
    frames = _int(ds.get("NumberOfFrames"), 1)
    samples = _int(ds.get("SamplesPerPixel"), 1)
    return PixelBudget(
        rows=max(0, _int(ds.get("Rows"), 0)),
        columns=max(0, _int(ds.get("Columns"), 0)),
        frames=frames if frames >= 1 else 1,
        samples=samples if samples >= 1 else 1,
        bits_allocated=max(0, _int(ds.get("BitsAllocated"), 0)),
    )

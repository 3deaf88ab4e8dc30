"""Synthetic instances whose pixel data is cheap to send and dear to decode.

RLE Lossless (PS3.5 Annex G) of an all-zero frame: each row of each byte segment is
PackBits runs of 128 zeros (two bytes per run), so a 16384x16384 16-bit frame is 8.4 MB on
the wire and 512 MB decoded. The fragments are built from repeated bytes: the test process
never holds a decoded frame either. A "declaration only" instance claims a size its pixel
data does not carry (a header is all a hostile sender needs to lie with).
"""

from __future__ import annotations

import struct
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, RLELossless

from tests import synthetic


def _segment_of_zeros(rows: int, cols: int) -> bytes:
    runs, rest = divmod(cols, 128)
    row = b"\x81\x00" * runs  # 0x81 = -127: repeat the next byte 128 times
    if rest:
        row += bytes([(257 - rest) & 0xFF, 0])  # repeat the next byte ``rest`` times
    return row * rows


def _rle_frame(rows: int, cols: int, segments: int) -> bytes:
    segment = _segment_of_zeros(rows, cols)
    if len(segment) % 2:
        segment += b"\x00"
    offsets = [64 + i * len(segment) for i in range(segments)]
    header = struct.pack("<16L", segments, *offsets, *([0] * (15 - segments)))
    return header + segment * segments


def _dataset(tag: str, rows: int, cols: int, samples: int, bits: int) -> tuple[Dataset, str]:
    key = ("hostile", tag, rows, cols, samples, bits)
    study = synthetic.synthetic_uid(*key, "study")
    ds = synthetic._ct_dataset(
        study_uid=study,
        series_uid=synthetic.synthetic_uid(*key, "series"),
        frame_uid=synthetic.synthetic_uid(*key, "frame"),
        patient_id="SYN0014",
        accession="ACC0014",
        series_number=7,
        rows=rows,
        cols=cols,
    )
    uid = synthetic.synthetic_uid(*key, "instance")
    ds.SOPInstanceUID = uid
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = samples
    if samples == 3:
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits
    ds.BitsStored = bits if bits == 8 else 12
    ds.HighBit = ds.BitsStored - 1
    return ds, uid


def rle_zeros(out: Path, rows: int, cols: int, *, bits: int = 16, tag: str = "zeros") -> Path:
    """A whole, valid RLE Lossless instance of an all-zero ``rows`` x ``cols`` frame."""
    ds, uid = _dataset(tag, rows, cols, 1, bits)
    ds.PixelData = encapsulate([_rle_frame(rows, cols, bits // 8)])
    ds["PixelData"].VR = "OB"
    ds.file_meta = synthetic._file_meta(CTImageStorage, uid, RLELossless)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def declared_only(out: Path, rows: int, cols: int, *, samples: int = 1, tag: str = "lie") -> Path:
    """An RLE instance whose header declares ``rows`` x ``cols`` x ``samples`` (8-bit) but
    whose one fragment holds a single row's worth: structurally whole, a lie inside."""
    ds, uid = _dataset(tag, rows, cols, samples, 8)
    ds.PixelData = encapsulate([_rle_frame(1, cols, samples)])
    ds["PixelData"].VR = "OB"
    ds.file_meta = synthetic._file_meta(CTImageStorage, uid, RLELossless)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out

"""Rendering one frame to an 8-bit picture, in the current process (the worker's side).

:func:`render_file` reads the header, checks the declared size against the budget before
anything is decoded, decodes only the frame asked for with
:func:`pydicom.pixels.pixel_array` (compressed transfer syntaxes through the installed
plugins: pylibjpeg-libjpeg, -openjpeg, -rle, pyjpegls), and maps it to 8 bits the way a
viewer shows it first:

1. the frame is reduced to at most twice the output size first, by block means in
   float32 (palette images: by picking pixels, indices cannot be averaged), so no
   full-size floating-point copy of a frame is ever made; memory stays about one frame in
   its stored dtype (uint8/uint16/int16) plus the small reduced image;
2. the Modality LUT's linear form: ``value * RescaleSlope + RescaleIntercept``;
3. the VOI window from the header's first WindowCenter/WindowWidth (the linear function of
   PS3.3 C.11.2.1.2.1), or else the image's own min..max;
4. MONOCHROME1 inverted (0 is white there);
5. colour images (RGB, YBR converted to RGB by pydicom, PALETTE COLOR through its LUT)
   scaled to 8 bits without windowing.

Steps 2-4 are elementwise, so a greyscale frame of integers left unreduced (the common
case: a CT or MR slice no larger than twice the output) goes through an 8-bit lookup
table instead (:func:`grey_by_table`), computed by :func:`grey_to_8bit` itself over the
range of values the frame holds: the same picture, byte for byte (a test checks it);
the mapping of a 512x512 CT slice takes 0.30 ms instead of 0.52 ms.

Untrusted pixel data is decoded here, so call this only inside the limited child
(:mod:`imaging.worker`); :class:`imaging.Renderer` does. Raises :class:`ImagingError`.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut
from pydicom.pixels.utils import pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian

from imaging.budget import declared_size
from imaging.errors import ImagingError, RenderFailed
from imaging.info import frame_transform

Format = Literal["jpeg", "png"]
JPEG_QUALITY = 85
#: Header elements larger than this are left unread (a header is read for its small values).
_DEFER = 4096
#: Widest range of stored values :func:`grey_by_table` maps (wider: the float pipeline).
MAX_LUT = 1 << 20


def read_header(path: Path) -> Dataset:
    """The dataset without pixel data (large values deferred). Raises :class:`RenderFailed`."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, defer_size=_DEFER)
    except Exception as exc:  # pydicom raises many types; its messages may quote values
        raise RenderFailed(f"the header cannot be read ({type(exc).__name__})") from None


def reduce(pixels: npt.NDArray[Any], max_side: int, *, pick: bool = False) -> npt.NDArray[Any]:
    """``pixels`` shrunk by a whole factor so its longer side is at most ``2 * max_side``.

    Block means in float32 (views only: the reshape splits axes without copying, and the
    mean reduces in buffered chunks), or every n-th pixel when ``pick`` is set. An image
    already small enough is returned as is.
    """
    rows, cols = pixels.shape[:2]
    step = max(1, math.ceil(max(rows, cols) / (2 * max_side)))
    if step == 1:
        return pixels
    if pick:
        return pixels[::step, ::step]
    h, w = rows // step, cols // step
    blocks = pixels[: h * step, : w * step].reshape((h, step, w, step, *pixels.shape[2:]))
    means: npt.NDArray[np.float32] = blocks.mean(axis=(1, 3), dtype=np.float32)
    return means


def grey_to_8bit(
    pixels: npt.NDArray[Any],
    header: Dataset,
    *,
    frame: int = 0,
    window: tuple[float, float] | None = None,
    minmax: bool = False,
) -> npt.NDArray[np.uint8]:
    """Modality LUT, VOI window (or min..max) and MONOCHROME1 inversion, in float32.

    The rescale and window are the frame's own (:func:`imaging.info.frame_transform`:
    enhanced objects keep them in functional groups). ``window`` (centre, width) replaces
    the header's window; ``minmax`` ignores any window and spans the image's values.
    """
    values = pixels.astype(np.float32)
    transform = frame_transform(header, frame)
    values = values * np.float32(transform.slope) + np.float32(transform.intercept)
    centre, width = window if window is not None else (transform.centre, transform.width)
    if width >= 1.0 and not minmax:
        scaled = (values - np.float32(centre - 0.5)) / np.float32(width - 1.0) + np.float32(0.5)
    else:
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    scaled = np.clip(scaled, 0.0, 1.0)
    if header.get("PhotometricInterpretation") == "MONOCHROME1":
        scaled = 1.0 - scaled
    out: npt.NDArray[np.uint8] = (scaled * 255.0 + 0.5).astype(np.uint8)
    return out


def grey_by_table(
    pixels: npt.NDArray[Any],
    header: Dataset,
    *,
    frame: int = 0,
    window: tuple[float, float] | None = None,
    minmax: bool = False,
) -> npt.NDArray[np.uint8] | None:
    """``grey_to_8bit(pixels, ...)`` through a lookup table; None when it does not apply.

    The table is :func:`grey_to_8bit` of every integer from the frame's minimum to its
    maximum: the function is elementwise and its min..max case sees the same extremes (the
    rescale is monotonic), so the result is identical. It applies to a 2-D frame of
    integers whose range of values is narrower than :data:`MAX_LUT` and than the frame
    (a wider table would cost more than it saves).
    """
    if pixels.ndim != 2 or pixels.dtype.kind not in "iu" or pixels.size == 0:
        return None
    low, high = int(pixels.min()), int(pixels.max())
    if high - low >= min(MAX_LUT, pixels.size):
        return None
    values = np.arange(low, high + 1, dtype=np.int64)
    table = grey_to_8bit(values, header, frame=frame, window=window, minmax=minmax)
    index = pixels.astype(np.int64) - low if low else pixels
    mapped: npt.NDArray[np.uint8] = table[index]
    return mapped


def colour_to_8bit(pixels: npt.NDArray[Any], header: Dataset) -> npt.NDArray[np.uint8]:
    """Colour samples (or palette indices, through the LUT) scaled to 8 bits."""
    if header.get("PhotometricInterpretation") == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, header)
        bits = 16 if pixels.dtype.itemsize > 1 else 8
    else:
        bits = int(header.get("BitsStored", 8))
    if bits <= 8 and pixels.dtype == np.uint8:
        return pixels
    if bits <= 8:
        rounded: npt.NDArray[np.uint8] = (np.clip(pixels, 0, 255) + 0.5).astype(np.uint8)
        return rounded
    scale = np.float32(255.0 / ((1 << bits) - 1))
    out: npt.NDArray[np.uint8] = (pixels.astype(np.float32) * scale + 0.5).astype(np.uint8)
    return out


def _decode(path: Path, header: Dataset, index: int) -> npt.NDArray[Any]:
    # pixel_array() reads one frame straight from the file, but cannot inflate a Deflated
    # dataset: those (rare, and small by nature) are read whole first.
    if header.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return pixel_array(pydicom.dcmread(path), index=index)
    return pixel_array(path, index=index)


def render_file(
    path: Path,
    *,
    frame: int | None,
    max_side: int,
    max_frame_values: int,
    fmt: Format = "jpeg",
    window: tuple[float, float] | None = None,
    minmax: bool = False,
) -> bytes:
    """The picture of frame ``frame`` (0-based; None: the middle one) of the instance at
    ``path``, its longer side at most ``max_side``, as JPEG or PNG bytes.

    Greyscale only: ``window`` (centre, width, in rescaled units) replaces the header's
    VOI window, ``minmax`` spans the frame's own values (see :func:`grey_to_8bit`).

    Raises :class:`OverBudget` (one frame declares more than ``max_frame_values`` values:
    nothing decoded) or :class:`RenderFailed` (no image, no such frame, a decoder error).
    ``MemoryError`` is left to the caller (the worker reports it as such).
    """
    header = read_header(path)
    if "Rows" not in header or "Columns" not in header:
        raise RenderFailed("the instance has no image")
    budget = declared_size(header)
    if budget.frame_values == 0:
        raise RenderFailed("the instance declares an empty image")
    budget.check_frame(max_frame_values)
    index = budget.frames // 2 if frame is None else frame
    if not 0 <= index < budget.frames:
        raise RenderFailed(f"frame {index} does not exist (the instance has {budget.frames})")
    try:
        with warnings.catch_warnings():
            # Odd-but-decodable files warn; a picture is best effort, so keep them quiet.
            warnings.simplefilter("ignore")
            pixels = _decode(path, header, index)
        palette = header.get("PhotometricInterpretation") == "PALETTE COLOR"
        small = reduce(pixels, max_side, pick=palette)
        del pixels  # the full frame goes before the 8-bit copies are made
        if int(header.get("SamplesPerPixel", 1)) == 1 and not palette:
            grey = grey_by_table(small, header, frame=index, window=window, minmax=minmax)
            if grey is None:
                grey = grey_to_8bit(small, header, frame=index, window=window, minmax=minmax)
            image = Image.fromarray(grey, mode="L")
        else:
            image = Image.fromarray(colour_to_8bit(small, header)).convert("RGB")
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        if fmt == "png":
            image.save(out, format="PNG", optimize=False)
        else:
            image.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        return out.getvalue()
    except (ImagingError, MemoryError):
        raise
    except Exception as exc:  # any decoder or conversion failure: no picture
        # Decoder messages name sizes and syntaxes, not header text; keep the first line.
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        raise RenderFailed(f"pixels could not be decoded ({reason})") from None

"""Preview thumbnails: one small JPEG per series, for a quick look (not for diagnosis).

:func:`render_preview` reads one instance (the packager picks the middle one of a series),
decodes only its middle frame with :func:`pydicom.pixels.pixel_array` (compressed transfer
syntaxes go through the installed plugins: pylibjpeg-libjpeg, -openjpeg, -rle, pyjpegls),
and maps it to 8 bits the way a viewer would show it first:

1. the Modality LUT's linear form: ``value * RescaleSlope + RescaleIntercept``;
2. the VOI window from the header's first WindowCenter/WindowWidth (the linear function of
   PS3.3 C.11.2.1.2.1), or else the image's own min..max;
3. MONOCHROME1 inverted (0 is white there);
4. colour images (RGB, YBR converted to RGB by pydicom, PALETTE COLOR through its LUT)
   scaled to 8 bits without windowing.

Anything that goes wrong raises :class:`PreviewError` with a short reason; the packager then
leaves the series without a thumbnail and says so in the manifest, and the package is built
anyway. Memory: one frame at a time.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut
from pydicom.pixels.utils import pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian

#: Longest side of a thumbnail, in pixels.
MAX_SIDE = 384
JPEG_QUALITY = 85


class PreviewError(Exception):
    """No thumbnail could be made; the message is a short reason without patient data."""


def _first(value: Any, default: float) -> float:
    """The first value of a possibly multi-valued numeric element."""
    if value is None:
        return default
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        value = value[0] if len(value) else default
    return float(value)


def _grey_to_8bit(pixels: npt.NDArray[Any], header: Dataset) -> npt.NDArray[np.uint8]:
    values = pixels.astype(np.float64)
    slope = _first(header.get("RescaleSlope"), 1.0)
    intercept = _first(header.get("RescaleIntercept"), 0.0)
    values = values * slope + intercept
    width = _first(header.get("WindowWidth"), 0.0)
    if width >= 1.0:
        centre = _first(header.get("WindowCenter"), 0.0)
        scaled = (values - (centre - 0.5)) / (width - 1.0) + 0.5
    else:
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    scaled = np.clip(scaled, 0.0, 1.0)
    if header.get("PhotometricInterpretation") == "MONOCHROME1":
        scaled = 1.0 - scaled
    return (scaled * 255.0 + 0.5).astype(np.uint8)


def _colour_to_8bit(pixels: npt.NDArray[Any], header: Dataset) -> npt.NDArray[np.uint8]:
    if header.get("PhotometricInterpretation") == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, header)
        bits = 16 if pixels.dtype.itemsize > 1 else 8
    else:
        bits = int(header.get("BitsStored", 8))
    if bits <= 8:
        return pixels.astype(np.uint8)
    return (pixels.astype(np.float64) * (255.0 / ((1 << bits) - 1)) + 0.5).astype(np.uint8)


def _middle_frame(path: Path, header: Dataset, index: int) -> npt.NDArray[Any]:
    # pixel_array() reads one frame straight from the file, but cannot inflate a Deflated
    # dataset: those (rare, and small by nature) are read whole first.
    if header.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return pixel_array(pydicom.dcmread(path), index=index)
    return pixel_array(path, index=index)


def render_preview(path: Path, max_side: int = MAX_SIDE) -> bytes:
    """Return a JPEG thumbnail of the middle frame of the instance at ``path``.

    Raises :class:`PreviewError` when the file has no image, or its pixels cannot be decoded
    (no plugin for the transfer syntax, corrupt data) or converted.
    """
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        if "Rows" not in header or "Columns" not in header:
            raise PreviewError("the instance has no image")
        frames = int(header.get("NumberOfFrames") or 1)
        with warnings.catch_warnings():
            # Odd-but-decodable files warn; a preview is best effort, so keep them quiet.
            warnings.simplefilter("ignore")
            pixels = _middle_frame(path, header, frames // 2)
        if (
            int(header.get("SamplesPerPixel", 1)) == 1
            and header.get("PhotometricInterpretation") != "PALETTE COLOR"
        ):
            image = Image.fromarray(_grey_to_8bit(pixels, header), mode="L")
        else:
            image = Image.fromarray(_colour_to_8bit(pixels, header)).convert("RGB")
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        return out.getvalue()
    except PreviewError:
        raise
    except Exception as exc:  # any decoder or conversion failure: no thumbnail, no failure
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        raise PreviewError(f"pixels could not be decoded ({reason})") from exc

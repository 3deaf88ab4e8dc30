"""Rendering every image of a package (the offline viewer) fast, in the limited child.

The offline viewer renders each instance of a package, not one per series, so the
per-frame cost of :func:`imaging.render.render_file` dominates a package's build time:
its float32 pipeline on the full frame costs about twice the decoding. For the common
case, a single-frame greyscale image no larger than the output, :func:`render_export`
maps the stored values through an 8-bit lookup table instead, computed by the very same
:func:`imaging.render.grey_to_8bit` over the range of values the frame holds (an
elementwise function, so the picture is identical, byte for byte, to ``render_file``'s:
a test checks it) and then saved the same way. Anything else (colour, palette,
multi-frame, frames to reduce, deflated datasets, a value range over 2^20) goes to
``render_file`` unchanged.

:class:`ExportRenderer` is an :class:`imaging.Renderer` whose child runs
``python -m imaging.export`` instead of ``imaging.worker``: the same protocol, the same
limits (address space, CPU time, wall time; killed and replaced after any failure), the
same header check before anything is sent. Like the rest of :mod:`imaging`, pure: no
store, no web.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.pixels.utils import pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian

from imaging.budget import declared_size
from imaging.errors import ImagingError, OverBudget
from imaging.render import JPEG_QUALITY, Format, grey_to_8bit, read_header, render_file
from imaging.renderer import _ROOT, Renderer
from imaging.worker import _answer, _limit_cpu, _window

#: Widest range of stored values the lookup table covers (larger: the float pipeline).
MAX_LUT = 1 << 20


def _plain(header: Any, max_side: int) -> bool:
    """A single-frame greyscale frame that needs no reduction: the lookup-table case."""
    budget = declared_size(header)
    return (
        budget.frames == 1
        and budget.samples == 1
        and 0 < max(budget.rows, budget.columns) <= max_side
        and header.get("PhotometricInterpretation") in ("MONOCHROME1", "MONOCHROME2")
        and header.file_meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian
    )


def _mapped(
    pixels: npt.NDArray[Any],
    header: Any,
    window: tuple[float, float] | None,
    minmax: bool,
) -> npt.NDArray[np.uint8] | None:
    """``grey_to_8bit(pixels)`` through a lookup table; None when it does not apply."""
    if pixels.ndim != 2 or pixels.dtype.kind not in "iu":
        return None
    low, high = int(pixels.min()), int(pixels.max())
    if high - low >= MAX_LUT:
        return None
    values = np.arange(low, high + 1, dtype=np.int64)
    table = grey_to_8bit(values, header, frame=0, window=window, minmax=minmax)
    index = pixels.astype(np.int64) - low if low else pixels
    mapped: npt.NDArray[np.uint8] = table[index]
    return mapped


def render_export(
    path: Path,
    *,
    frame: int | None,
    max_side: int,
    max_frame_values: int,
    fmt: Format = "jpeg",
    window: tuple[float, float] | None = None,
    minmax: bool = False,
) -> bytes:
    """:func:`imaging.render.render_file`'s picture (same arguments, same errors), by
    the lookup table when the frame allows it (see the module docstring)."""
    header = read_header(path)
    if frame in (None, 0) and "Rows" in header and "Columns" in header and _plain(header, max_side):
        declared_size(header).check_frame(max_frame_values)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pixels = pixel_array(path, index=0)
            grey = _mapped(pixels, header, window, minmax)
            del pixels
            if grey is not None:
                image = Image.fromarray(grey, mode="L")
                out = io.BytesIO()
                if fmt == "png":
                    image.save(out, format="PNG", optimize=False)
                else:
                    image.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
                return out.getvalue()
        except (ImagingError, MemoryError):
            raise
        except Exception:  # the general path decodes again and says why
            pass
    return render_file(
        path,
        frame=frame,
        max_side=max_side,
        max_frame_values=max_frame_values,
        fmt=fmt,
        window=window,
        minmax=minmax,
    )


class ExportRenderer(Renderer):
    """An :class:`imaging.Renderer` whose child renders with :func:`render_export`."""

    def _start(self) -> subprocess.Popen[bytes]:
        if self._child is not None and self._child.poll() is None:
            return self._child
        self._kill()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = "1"
        self._child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "imaging.export",
                "--memory-mb",
                str(self.limits.memory_mb),
                "--cpu-s",
                str(self.limits.timeout_s),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
        return self._child


def serve(requests: BinaryIO, out: BinaryIO, cpu_s: float) -> None:
    """:func:`imaging.worker.serve` with :func:`render_export` (the same protocol)."""
    for line in requests:
        try:
            req = json.loads(line)
            _limit_cpu(cpu_s)
            picture = render_export(
                Path(req["path"]),
                frame=req.get("frame"),
                max_side=int(req["max_side"]),
                max_frame_values=int(req["max_frame_values"]),
                fmt=req.get("format", "jpeg"),
                window=_window(req.get("window")),
                minmax=bool(req.get("minmax", False)),
            )
        except OverBudget as exc:
            _answer(out, {"ok": False, "kind": "over_budget", "reason": str(exc)})
        except MemoryError:
            _answer(out, {"ok": False, "kind": "failed", "reason": "out of memory"})
        except Exception as exc:  # RenderFailed, or a bad request: say so, keep serving
            _answer(out, {"ok": False, "kind": "failed", "reason": str(exc)[:300]})
        else:
            _answer(out, {"ok": True, "size": len(picture)}, picture)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m imaging.export")
    parser.add_argument("--memory-mb", type=int, required=True)
    parser.add_argument("--cpu-s", type=float, required=True)
    args = parser.parse_args(argv)
    limit = args.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core full of pixels
    serve(sys.stdin.buffer, sys.stdout.buffer, args.cpu_s)


if __name__ == "__main__":
    main()

"""Imaging: decode and render frames of untrusted DICOM instances with bounded memory.

Owns reading a header's declared pixel size (:func:`declared_size` →
:class:`PixelBudget`), turning one frame into an 8-bit picture the way a viewer first
shows it (Modality LUT, VOI window, MONOCHROME1, colour; :mod:`imaging.render`), and doing
that decoding in a child process with memory and time limits (:class:`Renderer`,
:func:`render_frame`), so that a hostile or absurd instance can cost the caller a preview,
never its memory.

Used by package previews (``delivery``), the header walk at ingest (``scp``: the declared
size only) and the portal's viewer (:mod:`imaging.info`: what an instance holds, its
frames, windows and presets). Pure like ``rules``: imports pydicom, numpy, Pillow and
the standard library, never another Courier package, never the store or the web.

The declared size and the errors are imported with the package; the rest on first use
(PEP 562), because the renderer's module imports numpy and Pillow: the header walk of a
receiving process needs :func:`declared_size` only.

Errors: :class:`ImagingError` and its subclasses (:mod:`imaging.errors`); their messages
are short reasons without patient data, fit for a package manifest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from imaging.budget import PixelBudget, declared_size
from imaging.errors import ImagingError, OverBudget, RenderFailed, RenderTimeout

if TYPE_CHECKING:
    from imaging.info import InstanceInfo, Window, describe, find_preset, presets
    from imaging.renderer import Renderer, RenderLimits, render_frame

#: The names imported on first use, and their modules.
_LAZY = {
    "InstanceInfo": "imaging.info",
    "Window": "imaging.info",
    "describe": "imaging.info",
    "find_preset": "imaging.info",
    "presets": "imaging.info",
    "Renderer": "imaging.renderer",
    "RenderLimits": "imaging.renderer",
    "render_frame": "imaging.renderer",
}

__all__ = [
    "ImagingError",
    "InstanceInfo",
    "OverBudget",
    "PixelBudget",
    "RenderFailed",
    "RenderLimits",
    "RenderTimeout",
    "Renderer",
    "Window",
    "declared_size",
    "describe",
    "find_preset",
    "presets",
    "render_frame",
]


def __getattr__(name: str) -> Any:
    """Import :data:`_LAZY`'s names when first asked for (``from imaging import X``)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'imaging' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

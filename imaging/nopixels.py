"""pydicom without its pixel stack, for the node's own processes.

``import pydicom`` imports numpy, Pillow, requests and the pixel decoder plugins (about
40 MB of a process's memory, a third of a receiving process's), whether or not the
process ever decodes a frame. Courier's long-running processes never do: pixel data is
decoded only in :mod:`imaging`'s child processes, under memory and time limits
(:class:`imaging.Renderer`, which start a fresh interpreter with pydicom whole). The
header walk reads the declared size from the header (:func:`imaging.declared_size`).

:func:`import_pydicom_without_pixels` imports pydicom while those packages are refused,
so pydicom records them as missing and never loads them; ``Dataset.pixel_array`` and
the like then raise pydicom's own "NumPy is required" error in that process. The
refusal lasts that import only: a module that imports numpy or Pillow itself later
(a portal page drawing with Pillow, say) still gets it.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

#: What ``import pydicom`` would load for pixel data alone (top-level package names).
PIXEL_STACK = frozenset(
    ("numpy", "PIL", "requests", "pylibjpeg", "openjpeg", "libjpeg", "rle", "jpeg_ls", "gdcm")
)


class _Refuse(importlib.abc.MetaPathFinder):
    """Makes ``import X`` raise ImportError for the packages in ``names``."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname.partition(".")[0] in self.names:
            raise ImportError(f"{fullname} is not loaded with pydicom here (imaging.nopixels)")
        return None


def import_pydicom_without_pixels() -> ModuleType:
    """Import pydicom with :data:`PIXEL_STACK` refused; returns the pydicom module.

    Call it before anything imports pydicom. Does nothing more when pydicom is already
    imported (it then has its pixel stack, whoever imported it first).
    """
    if "pydicom" in sys.modules:
        return sys.modules["pydicom"]
    refuse = _Refuse(PIXEL_STACK - sys.modules.keys())
    sys.meta_path.insert(0, refuse)
    try:
        import pydicom

        return pydicom
    finally:
        sys.meta_path.remove(refuse)

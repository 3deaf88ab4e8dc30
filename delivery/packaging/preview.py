"""Preview thumbnails: one small JPEG per series, for a quick look (not for diagnosis).

:func:`series_previews` renders the middle frame of one instance per series (the packager
picks the middle instance) through :mod:`imaging`: the header's declared size is checked
against ``delivery.preview_max_pixels`` before anything is decoded, and decoding runs in
one child process per package (:class:`imaging.Renderer`) whose memory and time are
capped by ``delivery.preview_memory_mb`` / ``preview_timeout_s``. The packaging process
itself never holds more than a thumbnail: a 16k×16k frame costs it nothing.

Anything that goes wrong (over the budget, a decoder error, the child out of memory,
killed or crashed) leaves that series without a thumbnail and returns the reason instead,
which the manifest records; the package is built anyway and nothing waits longer than
``preview_timeout_s`` per series. Reasons carry no patient data.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from imaging import ImagingError, Renderer, RenderLimits

#: Longest side of a thumbnail, in pixels.
MAX_SIDE = 384

__all__ = ["MAX_SIDE", "RenderLimits", "series_previews"]


def series_previews(
    middles: Iterable[tuple[str, Path]], limits: RenderLimits | None = None
) -> dict[str, bytes | str]:
    """For each (series UID, instance path): its JPEG thumbnail, or why there is none.

    One child process serves all of them (started on the first, replaced after a
    failure, ended on return).
    """
    previews: dict[str, bytes | str] = {}
    with Renderer(limits) as renderer:
        for series_uid, path in middles:
            try:
                previews[series_uid] = renderer.render(path, max_side=MAX_SIDE)
            except ImagingError as exc:
                previews[series_uid] = str(exc)
    return previews

"""The imaging errors: one base, a short reason without patient data in every message.

- :class:`OverBudget`: the header declares more pixels than the limit; nothing was decoded.
- :class:`RenderFailed`: no picture (no image in the instance, a decoder error, the child
  ran out of memory or crashed).
- :class:`RenderTimeout` (also a :class:`TimeoutError`): the child exceeded its time and was
  killed.
"""

from __future__ import annotations


class ImagingError(Exception):
    """No picture could be made; ``str(error)`` is a reason fit for a manifest or a log."""


class OverBudget(ImagingError):
    """The declared size is over the pixel budget: refused before any decoding."""


class RenderFailed(ImagingError):
    """Decoding or rendering failed (bad data, no plugin, out of memory, a crash)."""


class RenderTimeout(ImagingError, TimeoutError):
    """The decoding child took longer than its limit and was killed."""

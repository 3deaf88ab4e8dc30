"""Errors raised by the store.

- :class:`StoreError`: base.
- :class:`DatabaseUnavailable`: the index database cannot be reached or is locked
  (also a ``ConnectionError``): retry later; the SCP answers A7xx.
- :class:`DiskFull`: no space left for the content store (also an ``OSError``):
  free space under ``node.data_dir``; the SCP answers A7xx.
- :class:`InvalidUID`: a UID that cannot name a file (also a ``ValueError``).
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every store error."""


class DatabaseUnavailable(StoreError, ConnectionError):
    """The database refused or timed out; nothing was committed."""


class DiskFull(StoreError, OSError):
    """The content store's filesystem is full; nothing partial was left behind."""


class InvalidUID(StoreError, ValueError):
    """A UID is not of the form 1.2.3 (digits and dots, at most 64 characters)."""

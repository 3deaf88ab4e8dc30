"""Errors raised while building a delivery package (see :mod:`delivery.packaging.package`).

- :class:`PackageError`: base. Its message says what the operator should do next;
  ``permanent`` is True when running the same build again cannot help until someone acts
  (an instance file is gone), False when a retry may succeed (the disk was full).
- :class:`MissingInstanceError` (also a ``FileNotFoundError``): an instance the request
  selected has no file in the content store.
- :class:`UnreadableInstanceError`: a file is there but is not the DICOM instance the index
  says it is (unreadable header, other SOP Instance UID).
- :class:`PackageWriteError` (also an ``OSError``): the package could not be written
  (disk full, permissions); nothing final-named was left behind.

Whatever the error, no final-named ZIP is left for that build: a package never silently
lacks an instance. Messages name files and UIDs, never patient names or IDs.
"""

from __future__ import annotations


class PackageError(Exception):
    """A package could not be built; the message says what to do next."""

    def __init__(self, message: str, *, permanent: bool = True) -> None:
        super().__init__(message)
        self.permanent = permanent


class MissingInstanceError(PackageError, FileNotFoundError):
    """An instance's file is missing from the content store."""


class UnreadableInstanceError(PackageError):
    """An instance's file cannot be read as the DICOM instance the index names."""


class PackageWriteError(PackageError, OSError):
    """Writing the package failed (disk full, permissions); a retry may succeed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=False)

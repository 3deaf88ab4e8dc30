"""The spool: where a C-STORE's dataset is written while it arrives.

pynetdicom's chunked receive (``STORE_RECV_CHUNKED_DATASET``) writes each incoming
dataset to a ``NamedTemporaryFile`` in ``TMPDIR``: flushed, never fsynced, left behind
if the association dies mid-dataset, and a full disk there raises inside pynetdicom's
reactor thread, which drops the association instead of answering A7xx. We give it
:class:`SpoolFile` instead:

- it lives in the content store's ``spool/`` folder, on the same filesystem, so a
  complete file is *renamed* into place, never copied;
- a write error (ENOSPC) is remembered, the partial bytes are freed at once, and the
  C-STORE handler answers A700 after the peer has finished sending;
- every open spool file is registered, so a connection that closes mid-dataset has its
  file deleted immediately (and start-up sweeps anything a crash left).

A 2 GB instance therefore never sits in memory: only one PDU at a time does.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pynetdicom import (
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    _config,
    dimse_messages,
)

from store.content import DIR_MODE

_counter = itertools.count()
_open: dict[str, SpoolFile] = {}
_open_lock = threading.Lock()

# Test seam: called with the number of bytes about to be written; raise OSError to
# simulate a failing disk. None in production.
WriteFault = Callable[[int], None]


class SpoolFile:
    """The file-like pynetdicom writes a dataset into (name, write, file.flush, close)."""

    def __init__(self, folder: Path, fault: WriteFault | None = None) -> None:
        self.name = str(folder / f"{os.getpid()}-{next(_counter)}.part")
        self._fd = os.open(self.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.error: OSError | None = None
        self.size = 0
        # The file's SHA-256, computed as it is written (ingest need not read it again).
        self.digest = hashlib.sha256()
        self._fault = fault
        self.closed = False
        with _open_lock:
            _open[self.name] = self

    @property
    def file(self) -> SpoolFile:
        """pynetdicom calls ``.file.flush()`` after each fragment."""
        return self

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; after a failure, swallow the rest of the dataset."""
        if self.error is not None:
            return len(data)
        try:
            if self._fault is not None:
                self._fault(len(data))
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            self.digest.update(data)
            self.size += len(data)
        except OSError as exc:
            self.error = exc
            # Free the space now: other associations may still fit.
            os.ftruncate(self._fd, 0)
        return len(data)

    def flush(self) -> None:
        """Nothing to flush: writes go straight to the kernel."""

    def tell(self) -> int:
        """Bytes written so far."""
        return self.size

    def close(self) -> None:
        """Close the descriptor (the file stays until renamed or discarded)."""
        if not self.closed:
            self.closed = True
            os.close(self._fd)
        with _open_lock:
            _open.pop(self.name, None)

    def discard(self) -> None:
        """Close and delete: the dataset will not be kept."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.name)


def _element(group_elem: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", 0x0002, group_elem, vr, len(value)) + value


def _uid_bytes(uid: object) -> bytes:
    raw = str(uid).encode("ascii", "replace")[:64]
    return raw + b"\0" if len(raw) % 2 else raw


def file_meta_bytes(
    sop_class_uid: object, sop_instance_uid: object, transfer_syntax: object
) -> bytes:
    """The File Meta Information group (PS3.10 7.1), encoded directly.

    Equivalent to pydicom's ``create_file_meta`` + ``write_file_meta_info``, which cost
    about a millisecond per instance on the receive path; this costs microseconds.
    """
    version = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    body = b"".join(
        (
            struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
            _element(0x0002, b"UI", _uid_bytes(sop_class_uid)),
            _element(0x0003, b"UI", _uid_bytes(sop_instance_uid)),
            _element(0x0010, b"UI", _uid_bytes(transfer_syntax)),
            _element(0x0012, b"UI", _uid_bytes(PYNETDICOM_IMPLEMENTATION_UID)),
            _element(0x0013, b"SH", version + (b" " if len(version) % 2 else b"")),
        )
    )
    return struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body)) + body


def _create_file_meta(
    *, sop_class_uid: object, sop_instance_uid: object, transfer_syntax: object
) -> bytes:
    return file_meta_bytes(sop_class_uid, sop_instance_uid, transfer_syntax)


def _write_file_meta_info(fp: SpoolFile, meta: bytes) -> None:
    fp.write(meta)


# Where C-STORE datasets are spooled in this process (set by install()).
_installed: tuple[Path, WriteFault | None] | None = None


def open_spool() -> SpoolFile | None:
    """A new spool file in the installed folder; None when :func:`install` was not called."""
    if _installed is None:
        return None
    return SpoolFile(*_installed)


def install(folder: Path, fault: WriteFault | None = None) -> None:
    """Spool every C-STORE dataset into ``folder`` (process-wide): the fast path
    (:mod:`scp.fastpath`) and pynetdicom's chunked receive both."""
    global _installed
    folder.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _installed = (folder, fault)
    _config.STORE_RECV_CHUNKED_DATASET = True

    def factory(*_args: Any, **_kwargs: Any) -> SpoolFile:
        return SpoolFile(folder, fault)

    patched: Any = dimse_messages
    patched.NamedTemporaryFile = factory
    patched.create_file_meta = _create_file_meta
    patched.write_file_meta_info = _write_file_meta_info


def lookup(name: str) -> SpoolFile | None:
    """The open spool file behind a dataset path, if still open."""
    with _open_lock:
        return _open.get(name)


def discard_pending(assoc: Any) -> None:
    """Delete the spool file of a dataset that was still arriving when the link closed."""
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    pending = getattr(message, "_data_set_file", None)
    if isinstance(pending, SpoolFile):
        pending.discard()

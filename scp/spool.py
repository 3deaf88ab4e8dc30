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
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pynetdicom import _config, dimse_messages
from pynetdicom.dul import DULServiceProvider

from scp import filemeta
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
        # The file's content SHA-256 (scp.filemeta.content_sha256), computed as it is
        # written: ingest need not read it again.
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
        if self._append(data):
            self.digest.update(data)
        return len(data)

    def write_meta(self, meta: filemeta.FileMeta, prefix: bytes = b"") -> None:
        """Append ``prefix`` (the preamble, when not written yet) and the File Meta
        Information; the digest takes the meta without the sender's elements, as
        :func:`scp.filemeta.content_sha256` of the finished file does."""
        if self._append(prefix + meta.written):
            self.digest.update(prefix + meta.digested)

    def _append(self, data: bytes | bytearray | memoryview) -> bool:
        if self.error is not None:
            return False
        try:
            if self._fault is not None:
                self._fault(len(data))
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            self.size += len(data)
            return True
        except OSError as exc:
            self.error = exc
            # Free the space now: other associations may still fit.
            os.ftruncate(self._fd, 0)
            return False

    def flush(self) -> None:
        """Nothing to flush: writes go straight to the kernel."""

    def datasync(self) -> None:
        """Make the bytes written so far durable: ``fdatasync`` (``fsync`` where the
        platform has none) on this file's own descriptor, so no second open is needed.

        Raises OSError as the call does, ValueError once :meth:`close` was called.
        """
        if self.closed:
            raise ValueError(f"spool file {self.name} is closed")
        sync = getattr(os, "fdatasync", os.fsync)
        sync(self._fd)

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


def start_file(spooled: SpoolFile, assoc: Any, sop_class: str, sop_instance: str, ts: str) -> None:
    """Write the preamble and File Meta Information (with the sender, see
    :mod:`scp.filemeta`) of a C-STORE arriving on ``assoc`` (the fast path)."""
    meta = filemeta.file_meta(sop_class, sop_instance, ts, filemeta.peer_elements(assoc))
    spooled.write_meta(meta, filemeta.PREAMBLE)


def _create_file_meta(
    *, sop_class_uid: object, sop_instance_uid: object, transfer_syntax: object
) -> filemeta.FileMeta:
    # pynetdicom's path: called from its DIMSE decoding, which the association's DUL
    # thread runs (fsm action DT-2), so the association is that thread's ``assoc``.
    dul = threading.current_thread()
    assoc = dul.assoc if isinstance(dul, DULServiceProvider) else None
    return filemeta.file_meta(
        sop_class_uid, sop_instance_uid, transfer_syntax, filemeta.peer_elements(assoc)
    )


def _write_file_meta_info(fp: SpoolFile, meta: filemeta.FileMeta) -> None:
    fp.write_meta(meta)


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

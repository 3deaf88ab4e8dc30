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

**Ready files.** Creating a file (``O_CREAT|O_EXCL``) costs 250-600 us of system CPU on
ext4, about a third of a small instance's time in a receiving process, and it used to
happen while the sender waited for the C-STORE-RSP. :func:`install` therefore starts one
daemon thread per process (:class:`_Pool`) that keeps :data:`POOL_SIZE` empty spool files
created and open, with the same names (``<pid>-<n>.part``), folder and mode (0600) as
before; :func:`open_spool` takes one without a system call. The thread is woken when
half are taken (it never polls); when none is ready the file is created inline as before,
never waiting for the thread, so a failing folder still gives the C-STORE its A700 from
the inline ``open``. The thread logs its first failure (ENOSPC, EMFILE, a removed folder)
once, then retries after a back-off (:data:`POOL_BACKOFF_S`, doubling to
:data:`POOL_BACKOFF_MAX_S`) until a file can be made again. Ready files are plain empty
``.part`` files: an orderly stop (:func:`shutdown`, also run at exit) closes and deletes
them; after a crash, start-up's spool sweep (:meth:`store.content.ContentStore.sweep_spool`,
run by the node process before any receiver starts) deletes them with any partial
receive. A forked child does not inherit the parent's ready files.

**No early writeback.** Asking the kernel to start writing a large dataset while it
arrives (``sync_file_range(SYNC_FILE_RANGE_WRITE)`` every 256 KB, or
``posix_fadvise(DONTNEED)``), so that ingest's ``fdatasync`` waits for less, was
measured on the CT set (~525 KB per instance) and left out: the calls themselves took
~0.5-1 ms per instance on the receive thread and the ``fdatasync`` did not get shorter.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import hashlib
import itertools
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pynetdicom import _config, dimse_messages
from pynetdicom.dul import DULServiceProvider

from scp import filemeta
from store.content import DIR_MODE

log = logging.getLogger("courier.scp.spool")

#: Empty spool files each receiving process keeps created and open (one descriptor
#: each): enough for the datasets of several associations starting at once; the thread
#: makes one in well under a millisecond, faster than instances arrive. It is woken
#: once the pool is down to half (not at every take: each wake-up is a futex call and
#: a GIL hand-over on the receiving thread, ~3% of its time when done per instance).
POOL_SIZE = 8
#: After the pool's thread fails to create a file, it waits this long (seconds) before
#: trying again, doubling after each further failure up to :data:`POOL_BACKOFF_MAX_S`.
POOL_BACKOFF_S = 1.0
POOL_BACKOFF_MAX_S = 60.0
_counter = itertools.count()
_open: dict[str, SpoolFile] = {}
_open_lock = threading.Lock()

# Test seam: called with the number of bytes about to be written; raise OSError to
# simulate a failing disk. None in production.
WriteFault = Callable[[int], None]


def _new_name(folder: Path) -> str:
    """A spool file name no other file of this process has: ``<pid>-<n>.part``."""
    return str(folder / f"{os.getpid()}-{next(_counter)}.part")


def _open_new(name: str) -> int:
    """Create the empty file ``name`` (0600, never an existing one); its descriptor."""
    return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)


def _create(folder: Path) -> tuple[str, int]:
    """Create a new, empty spool file in ``folder``: its name and open descriptor."""
    name = _new_name(folder)
    return name, _open_new(name)


class SpoolFile:
    """The file-like pynetdicom writes a dataset into (name, write, file.flush, close)."""

    def __init__(
        self, folder: Path, fault: WriteFault | None = None, *, ready: tuple[str, int] | None = None
    ) -> None:
        """A new spool file in ``folder``; ``ready`` is one already created (name and
        open descriptor, from the pool). Raises OSError when it cannot be created."""
        self.name, self._fd = ready if ready is not None else _create(folder)
        self.error: OSError | None = None
        self.size = 0
        # The file's content SHA-256 (scp.filemeta.content_sha256), computed as it is
        # written: ingest need not read it again.
        self.digest = hashlib.sha256()
        self._fault = fault
        self.closed = False
        # Set by ingest once the file was moved into the content store under its
        # final name: the spool name is gone, nothing to delete.
        self.placed = False
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


class _Pool:
    """Keeps up to ``size`` empty spool files created in ``folder`` (see the module
    docstring); :meth:`take` hands one out, a daemon thread makes the next."""

    def __init__(self, folder: Path, size: int = POOL_SIZE) -> None:
        self.folder = folder
        self.size = size
        self._ready: collections.deque[tuple[str, int]] = collections.deque()
        self._making: str | None = None  # the name being created, not yet ready
        self._lock = threading.Lock()
        self._wanted = threading.Event()  # set when half the files were taken (or at start)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="courier-spool-pool", daemon=True)
        self._wanted.set()
        self._thread.start()

    def take(self) -> tuple[str, int] | None:
        """A ready file (name, open descriptor), or None when none is ready."""
        with self._lock:
            ready = self._ready.popleft() if self._ready else None
            low = len(self._ready) <= self.size // 2
        if low and not self._wanted.is_set():
            self._wanted.set()
        return ready

    def names(self) -> set[str]:
        """The files the pool holds (ready or being created): not datasets."""
        with self._lock:
            held = {name for name, _fd in self._ready}
            if self._making is not None:
                held.add(self._making)
        return held

    def _run(self) -> None:
        failing = False
        delay = POOL_BACKOFF_S
        while not self._stopped.is_set():
            self._wanted.wait()
            self._wanted.clear()
            while len(self._ready) < self.size and not self._stopped.is_set():
                name = _new_name(self.folder)
                with self._lock:
                    self._making = name
                try:
                    fd = _open_new(name)
                except OSError as exc:
                    with self._lock:
                        self._making = None
                    if not failing:  # once per failing spell; inline creation reports too
                        log.warning(
                            "cannot prepare spool files (%s); creating them per C-STORE, "
                            "retrying in %.0f s",
                            exc.strerror or type(exc).__name__,
                            delay,
                        )
                        failing = True
                    self._stopped.wait(delay)
                    delay = min(delay * 2, POOL_BACKOFF_MAX_S)
                    continue
                if failing:
                    log.info("spool files can be prepared again")
                    failing, delay = False, POOL_BACKOFF_S
                with self._lock:
                    self._making = None
                    if self._stopped.is_set():
                        _drop(name, fd)
                        return
                    self._ready.append((name, fd))

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the thread; close and delete the files not handed out."""
        self._stopped.set()
        self._wanted.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._lock:
            while self._ready:
                _drop(*self._ready.popleft())


def _drop(name: str, fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)


# Where C-STORE datasets are spooled in this process (set by install()), and its pool.
_installed: tuple[Path, WriteFault | None] | None = None
_pool: _Pool | None = None
_pool_pid = 0  # the process that started _pool (a forked child has none)


def _take() -> tuple[str, int] | None:
    pool = _pool
    if pool is None or _pool_pid != os.getpid():
        return None
    return pool.take()


def open_spool() -> SpoolFile | None:
    """A spool file in the installed folder (a ready one when the pool has one, else
    created now; OSError when that fails); None when :func:`install` was not called."""
    if _installed is None:
        return None
    return SpoolFile(*_installed, ready=_take())


def ready_names() -> set[str]:
    """Paths of the empty spool files the pool holds (not datasets: tests leave them out)."""
    pool = _pool
    return pool.names() if pool is not None and _pool_pid == os.getpid() else set()


def shutdown() -> None:
    """Stop this process's pool: its thread ends, ready files are closed and deleted.
    Run at exit too; :func:`install` starts it again."""
    global _pool
    pool, _pool = _pool, None
    if pool is not None and _pool_pid == os.getpid():
        pool.shutdown()


def _forget_pool_in_child() -> None:
    # The parent's ready files and thread are the parent's: never hand them out here.
    global _pool
    _pool = None


atexit.register(shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def install(folder: Path, fault: WriteFault | None = None, *, pool_size: int = POOL_SIZE) -> None:
    """Spool every C-STORE dataset into ``folder`` (process-wide): the fast path
    (:mod:`scp.fastpath`) and pynetdicom's chunked receive both. Starts the pool of
    ready files (``pool_size`` 0: none), after stopping the one of a previous call."""
    global _installed, _pool, _pool_pid
    folder.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    shutdown()
    _installed = (folder, fault)
    if pool_size > 0:
        _pool, _pool_pid = _Pool(folder, pool_size), os.getpid()
    _config.STORE_RECV_CHUNKED_DATASET = True

    def factory(*_args: Any, **_kwargs: Any) -> SpoolFile:
        return SpoolFile(folder, fault, ready=_take())

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

"""Group commit of folder fsyncs: one flush of a folder answers every placer waiting on it.

A placer links a file into a folder and must not answer before an fsync of that folder
that *started after its link* has succeeded (an fsync that was already running may have
read the folder before the new entry). Several associations storing into one series
folder at once would each pay a full flush for their own entry; here, beyond
``max_running`` at once, they share one.

Per folder there are at most ``max_running`` flushes running and one waiting to start
(the folder's next generation). :meth:`GroupSync.sync` joins the waiting one if there
is one (it has not started, so it will cover the caller), else starts a flush at once
when fewer than ``max_running`` run, else becomes the waiting one and starts it when a
running one ends. With ``max_running=1`` (classic group commit) a caller waits for at
most two flushes, and N concurrent callers cause at most two, not N.

A failed flush raises ``OSError`` in every caller it was to cover: after an fsync
error Linux may have dropped the dirty state it failed to write, so a later flush that
succeeds does not prove the earlier entry durable (the PostgreSQL "fsyncgate" findings,
https://wiki.postgresql.org/wiki/Fsync_Errors). Memory stays bounded: a folder is
forgotten as soon as nobody waits on it.

The fsync itself is injected (``fsync=``), so tests can record the order of links and
flushes; by default it is :func:`fsync_dir`.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

#: Flushes one folder's entries to stable storage; raises OSError.
FolderFsync = Callable[[Path], None]


def fsync_dir(path: Path) -> None:
    """fsync the folder ``path``: its new, renamed and removed entries become durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Flush:
    """One generation of a folder's flush: done once it ended, with its error if any."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


class _Folder:
    """How many flushes of one folder run, the one waiting to start, and who waits."""

    __slots__ = ("pending", "running", "users")

    def __init__(self) -> None:
        self.running = 0
        self.pending: _Flush | None = None
        self.users = 0


class GroupSync:
    """Folder flushes shared by concurrent callers (threads of one process)."""

    def __init__(self, fsync: FolderFsync | None = None, *, max_running: int = 1) -> None:
        """``fsync``: the flush of one folder; None: :func:`fsync_dir`, looked up at each
        call (so a profiler that wraps the module's function sees it). ``max_running``:
        flushes of one folder allowed at once before callers queue for a shared one (1:
        classic group commit, the fewest flushes; more: less waiting where the
        filesystem batches concurrent flushes itself, as ext4's and XFS's journals do)."""
        if max_running < 1:
            raise ValueError(f"max_running must be at least 1, not {max_running}")
        self._fsync = fsync
        self._max_running = max_running
        self._lock = threading.Lock()
        self._slot_free = threading.Condition(self._lock)
        self._folders: dict[Path, _Folder] = {}
        #: Flushes actually issued (a count for profiles and tests).
        self.flushes = 0

    def sync(self, folder: Path) -> None:
        """Return once a flush of ``folder`` that started after this call has succeeded.

        Everything done to the folder's entries before the call (a link, a rename, a
        mkdir or an unlink in it) is then durable. Raises ``OSError`` when that flush
        failed (the caller must not report the entry as durable).
        """
        with self._lock:
            state = self._folders.get(folder)
            if state is None:
                state = self._folders[folder] = _Folder()
            state.users += 1
            queued = False
            if state.pending is not None:
                flush, lead = state.pending, False  # not started yet: it covers us
            elif state.running < self._max_running:
                flush, lead = _Flush(), True
                state.running += 1
                self.flushes += 1
            else:
                # Running flushes may have read the folder before our entry: the next one.
                flush, lead, queued = _Flush(), True, True
                state.pending = flush
        try:
            if lead:
                self._lead(folder, state, flush, queued)
            else:
                flush.done.wait()
        finally:
            with self._lock:
                state.users -= 1
                if state.users == 0:
                    del self._folders[folder]
        if flush.error is not None:
            if lead:
                raise flush.error
            raise _error_for_follower(flush.error, folder)

    def _lead(self, folder: Path, state: _Folder, flush: _Flush, queued: bool) -> None:
        if queued:
            with self._slot_free:
                self._slot_free.wait_for(lambda: state.running < self._max_running)
                state.running += 1
                state.pending = None  # started from here on: later callers need another
                self.flushes += 1
        try:
            fsync = self._fsync or fsync_dir
            fsync(folder)
        except BaseException as exc:
            flush.error = exc
        finally:
            with self._slot_free:
                state.running -= 1
                self._slot_free.notify_all()
            flush.done.set()


def _error_for_follower(exc: BaseException, folder: Path) -> OSError:
    """A fresh error per caller (one exception object raised in several threads would
    collect all their tracebacks)."""
    if isinstance(exc, OSError):
        return OSError(exc.errno, exc.strerror or str(exc), str(folder))
    return OSError(errno.EIO, f"the flush of the folder was interrupted ({type(exc).__name__})")


#: The process's shared instance: every content store in the process groups through it.
#: Two at once: on ext4 (this project's machine, CT-300 on four associations into one
#: series folder, ``bench/ingest_profile.py``) classic group commit (1) issued 25% fewer
#: folder flushes but each instance waited 0.5 ms longer for its folder, as the journal
#: already batches concurrent flushes; with 2 the wait is that of one flush per caller and
#: only callers beyond two share.
default = GroupSync(max_running=2)

"""The content store on disk: instances under paths built from validated UIDs only.

Layout under the data directory::

    instances/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm   acknowledged instances
    conflicts/<SOPInstanceUID>.<sha256[:16]>.dcm            same UID, different bytes
    spool/                                                   partial receives (swept)

What :meth:`ContentStore.place` guarantees when it returns (the promise behind a C-STORE
answered 0x0000): the file's bytes and its name are durable, so the instance survives
kill -9 and power loss byte for byte; and at every moment, a name that exists under
``instances/`` or ``conflicts/`` holds complete bytes (start-up recovery re-indexes such
a file from its header: the file is the durable truth). The order that gives both:

1. ``fdatasync`` the spooled file (its data, size and allocation);
2. make the folder exist, its own entry durable in its parent (once per process);
3. ``link`` it to its final name (never overwriting) and unlink the spool name, or
   ``rename`` when replacing;
4. wait for an fsync of the folder that *started after* step 3
   (:class:`store.group_sync.GroupSync`: beyond two at once, concurrent placers in one
   folder share one).

Why each flush is there, why no other is, and what was rejected (Linux fsync(2),
https://man7.org/linux/man-pages/man2/fsync.2.html, unless another reference is named):

- **fdatasync, not fsync, for the file.** fdatasync flushes the data and "metadata
  [...] needed in order to allow a subsequent data retrieval to be correctly handled";
  the man page names the file size as such metadata and st_mtime/st_atime as not. A
  spooled file is new, written once and never changed again, so its size and block
  allocation are all the metadata a read needs; its mode is set when it is created. POSIX
  defines fdatasync as synchronized I/O *data* integrity completion (fdatasync(3p)). On
  ext4 the two cost the same for a new file (both commit the journal: measured, equal
  within noise); the cheaper call is kept for filesystems where timestamps are flushed
  separately.
- **The folder's fsync after the link stays.** fsync(2): "Calling fsync() does not
  necessarily ensure that the entry in the directory containing the file has also
  reached disk. For that an explicit fsync() on a file descriptor for the directory is
  also needed." On ext4 and XFS the file's flush also commits the journal that holds the
  new name, so the folder's flush then finds little to do; that is the filesystem's
  behaviour, not a promise, and is not relied on.
- **The file is flushed before it is linked, not after.** Linking first and flushing
  the file and the folder together would cost one flush's wait instead of two for a
  lone association, but a crash in between could leave a final name over incomplete
  bytes: ext4 in its default ``data=ordered`` mode with delayed allocation commits the
  name without the data ("file data blocks are /not/ guaranteed to be in any consistent
  state after a crash",
  https://www.kernel.org/doc/html/latest/filesystems/ext4/journal.html; "a program's
  writes to the file system are not guaranteed to be on-disk unless the program issues
  an fsync() call afterwards", Red Hat's ext4 chapter), and recovery would index it.
  Rejected.
- **A new series' folders are flushed once per process, not per instance.** A folder
  is created with ``mkdir`` and its parent flushed once; afterwards it is remembered
  (up to :data:`KNOWN_FOLDERS`) and costs nothing. A folder that already exists when
  first seen (made by another thread still flushing its parent, or by an earlier process
  killed before it did) gets that one flush of its parent too: waiting on a folder that
  merely exists would let an instance be acknowledged inside a folder whose own name a
  power loss could still take. The data directory's own name in its parent is flushed
  by :meth:`ContentStore.prepare` when it creates it.
- **The spool folder is never flushed.** Spool names are not part of the promise:
  start-up sweeps whatever is there. If a power loss brings back a spool name that was
  unlinked after its link (a second name for an acknowledged instance's inode), the
  sweep removes that name; the final one, flushed in step 4, stays.
- **No syncfs.** syncfs(2) would make file and name durable in one call but flushes
  everything dirty on the filesystem (other receives, packages being written) and
  still needs the ordering above.
- **A failed flush is not retried.** After an fsync error Linux may have dropped what
  it failed to write, and a second fsync can succeed without it
  (https://wiki.postgresql.org/wiki/Fsync_Errors): the error goes to every placer the
  flush covered, and the C-STORE is answered with a failure.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from store import group_sync
from store.errors import DiskFull, InvalidUID
from store.group_sync import GroupSync, fsync_dir

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")

#: Modes of everything created under ``node.data_dir``: patient data is the node
#: account's alone, never readable by another local user. Given explicitly wherever a
#: folder or file is made, whatever the process's umask (``courier`` also sets 077).
DIR_MODE = 0o700
FILE_MODE = 0o600
_HASH_CHUNK = 1 << 20
#: Folders a store remembers as made durable in their parents (forgetting one costs one
#: flush of its parent the next time it is used).
KNOWN_FOLDERS = 4096


def check_uid(value: object, what: str = "UID") -> str:
    """Return ``value`` if it is a UID that can name a file; raises :class:`InvalidUID`."""
    if not isinstance(value, str) or len(value) > 64 or not _UID_RE.match(value):
        # Never echo the value: a malformed "UID" may carry patient data.
        raise InvalidUID(f"{what} is not a valid UID (digits and dots, at most 64 characters)")
    return value


# Not every platform's Python has fdatasync (macOS); fsync flushes at least as much.
_datasync = getattr(os, "fdatasync", os.fsync)


def fsync_file(path: Path, fd: int | None = None) -> None:
    """Flush a new file's data and size to stable storage (fdatasync; see above).

    ``fd``: an open descriptor of ``path`` (read-only will do: the flush is of the
    file, not of the descriptor), flushed through and left open; None: ``path`` is
    opened for it."""
    if fd is not None:
        _datasync(fd)
        return
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _datasync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path) -> tuple[str, int]:
    """Return (hex SHA-256, size) of the file, read in chunks (memory stays flat)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(_HASH_CHUNK)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            digest.update(view[:n])
            size += n
    return digest.hexdigest(), size


def _disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


class ContentStore:
    """Files under one root; every method names paths relative to it."""

    def __init__(
        self, root: Path, spool_name: str | None = None, *, syncs: GroupSync | None = None
    ) -> None:
        """``spool_name``: this node's own spool folder under ``spool/`` (nodes sharing
        the data directory each sweep only their own at start); None: ``spool/`` itself.
        ``syncs``: the folder flushes to share; None: the process's own
        (:data:`store.group_sync.default`), so every store in a process groups together."""
        self.root = root
        self.instances = root / "instances"
        self.conflicts = root / "conflicts"
        self.spool = root / "spool"
        if spool_name is not None:
            if spool_name in ("", ".", "..") or "/" in spool_name or "\\" in spool_name:
                raise ValueError(f"not a folder name for a spool: {spool_name!r}")
            self.spool = self.spool / spool_name
        self._syncs = syncs if syncs is not None else group_sync.default
        # Folders whose name is known durable in their parent (most recently used last).
        self._known: OrderedDict[Path, None] = OrderedDict()
        self._known_lock = threading.Lock()

    def prepare(self) -> None:
        """Create the folders (idempotent); the name of each one created is flushed to
        its parent, the data directory's own too where its parent can be opened."""
        # Parents first: mkdir(parents=True) gives the folders it adds the umask's mode.
        for d in (self.root, self.instances, self.conflicts, self.spool.parent, self.spool):
            if d.is_dir():
                continue
            d.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            if d in (self.root, self.instances, self.conflicts):
                # The operator's folder may not be readable to us; nothing more we can do.
                with contextlib.suppress(PermissionError):
                    fsync_dir(d.parent)

    def instance_relpath(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """The stored path of an instance, from validated UIDs only."""
        parts = (
            check_uid(study_uid, "StudyInstanceUID"),
            check_uid(series_uid, "SeriesInstanceUID"),
            check_uid(sop_uid, "SOPInstanceUID"),
        )
        return f"instances/{parts[0]}/{parts[1]}/{parts[2]}.dcm"

    def conflict_relpath(self, sop_uid: str, sha256: str) -> str:
        """Where a same-UID, different-bytes arrival is kept aside."""
        return f"conflicts/{check_uid(sop_uid, 'SOPInstanceUID')}.{sha256[:16]}.dcm"

    def path(self, relpath: str) -> Path:
        """Absolute path of a stored file."""
        return self.root / relpath

    def place(
        self, spooled: Path, relpath: str, *, replace: bool = False, fd: int | None = None
    ) -> None:
        """Durably move a complete spooled file to ``relpath`` (the steps and why: above).

        Returns once the file's bytes and its name are durable. Unless ``replace``, an
        existing file is never overwritten (``FileExistsError``): another receiver may
        be storing the same UID. ``fd``: an open descriptor of ``spooled`` that step 1
        flushes through (ingest holds one from reading the header: no second open);
        None (recovery, a takeover, a file kept aside): ``spooled`` is opened for it.
        Raises :class:`DiskFull` (nothing left at ``relpath``) or OSError (a failed
        flush included: then nothing may be acknowledged).
        """
        final = self.root / relpath
        try:
            fsync_file(spooled, fd)
            try:
                self._move(spooled, final, replace)
            except FileNotFoundError:
                if not spooled.exists():
                    raise
                # A folder this store remembered was removed: make it again, once.
                with self._known_lock:
                    self._known.clear()
                self._move(spooled, final, replace)
            self._syncs.sync(final.parent)
        except OSError as exc:
            if _disk_full(exc):
                raise DiskFull(errno.ENOSPC, "no space left for the content store") from None
            raise

    def _move(self, spooled: Path, final: Path, replace: bool) -> None:
        self._ensure_folder(final.parent)
        if replace:
            os.replace(spooled, final)
        else:
            os.link(spooled, final)
            # The spool name need not be durably gone: start-up sweeps it (see above).
            os.unlink(spooled)

    def remove(self, relpath: str) -> None:
        """Remove a stored file if present (used to undo a placement the DB refused)."""
        final = self.root / relpath
        try:
            final.unlink()
        except FileNotFoundError:
            return
        self._syncs.sync(final.parent)

    def _ensure_folder(self, folder: Path) -> None:
        """Make ``folder`` exist, its name durable in its parent, up to the root."""
        if folder == self.root or folder.parent == folder:
            return
        with self._known_lock:
            if folder in self._known:
                self._known.move_to_end(folder)
                return
        self._ensure_folder(folder.parent)
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=DIR_MODE)
        # Made by us or by anyone before us: a flush starting now covers its name.
        self._syncs.sync(folder.parent)
        with self._known_lock:
            self._known[folder] = None
            if len(self._known) > KNOWN_FOLDERS:
                self._known.popitem(last=False)

    def sweep_spool(self) -> int:
        """Delete leftover partial receives (start-up only); returns how many."""
        count = 0
        if not self.spool.is_dir():
            return 0
        for entry in self.spool.iterdir():
            if entry.is_file():
                entry.unlink(missing_ok=True)
                count += 1
        return count

    def iter_instances(self) -> Iterator[str]:
        """Relative paths of every stored instance file."""
        if not self.instances.is_dir():
            return
        for dirpath, _dirs, files in os.walk(self.instances):
            base = Path(dirpath).relative_to(self.root)
            for name in files:
                if name.endswith(".dcm"):
                    yield str(base / name)

"""The content store on disk: instances under paths built from validated UIDs only.

Layout under the data directory::

    instances/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm   acknowledged instances
    conflicts/<SOPInstanceUID>.<sha256[:16]>.dcm            same UID, different bytes
    spool/                                                   partial receives (swept)

A file reaches its final path only by ``rename`` after ``fsync``, and the directory
is fsynced after the rename, so a name that exists always holds complete bytes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from store.errors import DiskFull, InvalidUID

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")

#: Modes of everything created under ``node.data_dir``: patient data is the node
#: account's alone, never readable by another local user. Given explicitly wherever a
#: folder or file is made, whatever the process's umask (``courier`` also sets 077).
DIR_MODE = 0o700
FILE_MODE = 0o600
_HASH_CHUNK = 1 << 20


def check_uid(value: object, what: str = "UID") -> str:
    """Return ``value`` if it is a UID that can name a file; raises :class:`InvalidUID`."""
    if not isinstance(value, str) or len(value) > 64 or not _UID_RE.match(value):
        # Never echo the value: a malformed "UID" may carry patient data.
        raise InvalidUID(f"{what} is not a valid UID (digits and dots, at most 64 characters)")
    return value


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
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

    def __init__(self, root: Path, spool_name: str | None = None) -> None:
        """``spool_name``: this node's own spool folder under ``spool/`` (nodes sharing
        the data directory each sweep only their own at start); None: ``spool/`` itself."""
        self.root = root
        self.instances = root / "instances"
        self.conflicts = root / "conflicts"
        self.spool = root / "spool"
        if spool_name is not None:
            if spool_name in ("", ".", "..") or "/" in spool_name or "\\" in spool_name:
                raise ValueError(f"not a folder name for a spool: {spool_name!r}")
            self.spool = self.spool / spool_name

    def prepare(self) -> None:
        """Create the folders (idempotent)."""
        # Parents first: mkdir(parents=True) gives the folders it adds the umask's mode.
        for d in (self.root, self.instances, self.conflicts, self.spool.parent, self.spool):
            d.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)

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

    def place(self, spooled: Path, relpath: str, *, replace: bool = False) -> None:
        """Durably move a complete spooled file to ``relpath``.

        fsync the file, create missing folders (fsyncing each parent), move it, fsync
        the folder. Unless ``replace``, an existing file is never overwritten
        (``FileExistsError``): another receiver may be storing the same UID. Raises
        :class:`DiskFull` (nothing left at ``relpath``) or OSError.
        """
        final = self.root / relpath
        try:
            fsync_file(spooled)
            self._makedirs(final.parent)
            if replace:
                os.replace(spooled, final)
            else:
                os.link(spooled, final)
                os.unlink(spooled)
            fsync_dir(final.parent)
        except OSError as exc:
            if _disk_full(exc):
                raise DiskFull(errno.ENOSPC, "no space left for the content store") from None
            raise

    def remove(self, relpath: str) -> None:
        """Remove a stored file if present (used to undo a placement the DB refused)."""
        final = self.root / relpath
        try:
            final.unlink()
            fsync_dir(final.parent)
        except FileNotFoundError:
            pass

    def _makedirs(self, folder: Path) -> None:
        if folder.is_dir():
            return
        missing = []
        p = folder
        while not p.is_dir():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):
                d.mkdir(mode=DIR_MODE)
            fsync_dir(d.parent)

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

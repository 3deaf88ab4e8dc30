"""One ZIP file written atomically and streamed, recording a SHA-256 and size per entry.

:class:`PartWriter` writes into ``dest/.<final name>.<random>.partial`` (opened with
``O_EXCL``). Files are copied in 1 MiB chunks (``ZIP_STORED``: DICOM is already
incompressible), so memory does not depend on their size; small generated texts are
deflated. :meth:`PartWriter.finish` closes the archive, flushes and fsyncs it, and hashes
the finished file; :meth:`PartWriter.publish` renames it to its final name (the caller then
fsyncs the directory with :func:`fsync_dir`); :meth:`PartWriter.abort` removes the
temporary file. A process killed at any point leaves at most a ``.partial`` file, which
:func:`delivery.package.sweep_partial` removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20
PARTIAL_SUFFIX = ".partial"
_FILE_MODE = 0o644 << 16  # rw-r--r-- for the unzip tools that honour Unix modes


@dataclass(frozen=True)
class Entry:
    """A file inside the ZIP: its path, size in bytes and SHA-256 (hex)."""

    path: str
    size: int
    sha256: str


def temporary_name(final_name: str) -> str:
    """The hidden temporary name used while ``final_name`` is being built."""
    return f".{final_name}.{secrets.token_hex(6)}{PARTIAL_SUFFIX}"


def fsync_dir(folder: Path) -> None:
    """Make renames and unlinks in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


class PartWriter:
    """Builds one ZIP part at ``final`` (see the module docstring for the life cycle)."""

    def __init__(self, final: Path, created: datetime) -> None:
        self.final = final
        self.temporary = final.with_name(temporary_name(final.name))
        self.entries: list[Entry] = []
        self.sha256 = ""
        self.size = 0
        self._date_time = (max(created.year, 1980), *created.timetuple()[1:6])
        self._file: BinaryIO | None = open(self.temporary, "xb")  # noqa: SIM115 - closed in finish/abort
        self._zip: zipfile.ZipFile | None = zipfile.ZipFile(self._file, "w", allowZip64=True)
        self._buffer = bytearray(CHUNK)

    def _info(self, path: str, compress: bool, size: int) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(path, self._date_time)
        info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        info.external_attr = _FILE_MODE
        info.file_size = size  # lets zipfile choose ZIP64 up front for big entries
        return info

    def add_file(self, path: str, source: io.RawIOBase | io.BufferedIOBase, size: int) -> None:
        """Copy ``size`` bytes from the open file ``source`` into entry ``path`` (stored).

        Raises ``EOFError`` when the source holds fewer or more than ``size`` bytes.
        """
        assert self._zip is not None, "the part is finished"
        digest = hashlib.sha256()
        view = memoryview(self._buffer)
        copied = 0
        with self._zip.open(self._info(path, False, size), "w") as out:
            while n := source.readinto(self._buffer):
                chunk = view[:n]
                digest.update(chunk)
                out.write(chunk)
                copied += n
        if copied != size:
            raise EOFError(f"{path}: expected {size} bytes, read {copied}")
        self.entries.append(Entry(path, size, digest.hexdigest()))

    def add_bytes(self, path: str, data: bytes, *, compress: bool = True) -> None:
        """Write ``data`` as entry ``path``, deflated unless ``compress`` is False."""
        assert self._zip is not None, "the part is finished"
        self._zip.writestr(self._info(path, compress, len(data)), data)
        self.entries.append(Entry(path, len(data), hashlib.sha256(data).hexdigest()))

    def finish(self) -> None:
        """Close the archive, flush and fsync it, and record its size and SHA-256."""
        assert self._zip is not None and self._file is not None, "the part is finished"
        self._zip.close()
        self._zip = None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        self.size = self.temporary.stat().st_size
        self.sha256 = _sha256_of(self.temporary)

    def publish(self) -> None:
        """Rename the finished part to its final name (atomic on one filesystem)."""
        assert self._file is None, "finish() first"
        os.replace(self.temporary, self.final)

    def abort(self) -> None:
        """Drop the part: close whatever is open and remove the temporary file."""
        for closeable in (self._zip, self._file):
            if closeable is not None:
                # Already failing: removing the temporary file matters more than this error.
                with contextlib.suppress(Exception):
                    closeable.close()
        self._zip = self._file = None
        self.temporary.unlink(missing_ok=True)

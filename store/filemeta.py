"""A stored file's File Meta Information: its sender elements, its content digest, and
the copy of it that leaves the hospital.

Every file Courier receives names its sender in the meta group (``scp.filemeta`` writes
them: (0002,0016)/(0002,0017) calling AE title, (0002,0018) called AE title, (0002,0027)
``dicom:<host>:<port>``; :data:`SENDER_ELEMENTS` adds the other two the standard has for
that). They stay in the stored file, for start-up recovery; here, below every package
that reads stored files:

- :func:`content_sha256`: the file's SHA-256 as if the sender elements were not in it
  (the index's ``sha256``), and its size on disk;
- :func:`dataset_start`: where the dataset proper starts, past those leading group 0002
  elements (the C-STORE sender, ``scp.storesend``, sends from there);
- :class:`OutgoingFile`: the file as it leaves the hospital (ZIP parts, disc images,
  DICOMweb): the meta group re-encoded without the sender elements, its group length to
  match, and without any group 0002 elements at the start of the dataset (a modality
  may send them, PS3.10 does not allow them there, and pydicom reads them as meta: its
  own (0002,0016) would name it); every other byte as stored. A file with neither
  (written by a version before the sender elements) reads byte for byte as stored.
  Memory is bounded: the meta group is read whole (at most :data:`MAX_META` bytes), so
  are the dataset's leading group 0002 elements (at most :data:`MAX_META` bytes too),
  the rest is read as the caller asks.

Errors: :class:`MalformedMeta` (a ``ValueError``) when a file's meta group says it is
Explicit VR Little Endian group 0002 but its elements (or the group 0002 elements at the
start of its dataset) do not parse; callers turn it into their own error before any byte
of the file goes out.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from pathlib import Path
from typing import Any

PREAMBLE = b"\0" * 128 + b"DICM"

# The elements that name the sender and receiver: left out of the content digest and of
# every copy that leaves the hospital.
SENDER_ELEMENTS = frozenset((0x0016, 0x0017, 0x0018, 0x0026, 0x0027, 0x0028))

# The largest meta group read to leave the sender out (a Courier file's is ~250 bytes).
MAX_META = 64 * 1024

# Explicit VR Little Endian VRs with a reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
# What a Part-10 file with a meta group length starts with: the preamble, (0002,0000) UL.
_GROUP_LENGTH = PREAMBLE + b"\x02\x00\x00\x00UL"
_HEAD = len(PREAMBLE) + 12  # the preamble and the group length element
_CHUNK = 1 << 20


class MalformedMeta(ValueError):
    """A stored file's File Meta Information group does not parse."""


def meta_group(body: bytes) -> bytes:
    """(0002,0000) File Meta Information Group Length for ``body``, then ``body``."""
    return struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body)) + body


def without_sender(meta: bytes) -> bytes | None:
    """The meta group's elements (after the group length) without the sender's
    elements; None when they do not parse as group 0002 Explicit VR Little Endian."""
    out: list[bytes] = []
    pos, end = 0, len(meta)
    while pos < end:
        if pos + 8 > end:
            return None
        group, element, vr = struct.unpack_from("<HH2s", meta, pos)
        if group != 0x0002:
            return None
        if vr in _LONG_VRS:
            if pos + 12 > end:
                return None
            length = struct.unpack_from("<I", meta, pos + 8)[0]
            stop = pos + 12 + length
        else:
            length = struct.unpack_from("<H", meta, pos + 6)[0]
            stop = pos + 8 + length
        if stop > end:
            return None
        if element not in SENDER_ELEMENTS:
            out.append(meta[pos:stop])
        pos = stop
    return b"".join(out)


def content_sha256(path: Path) -> tuple[str, int]:
    """(hex SHA-256 of the file without its sender elements, size in bytes).

    A file whose meta does not parse as Courier writes it digests as its plain bytes.
    """
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        head = f.read(_HEAD)
        size += len(head)
        meta = b""
        if head[: len(_GROUP_LENGTH)] == _GROUP_LENGTH:
            meta = f.read(struct.unpack_from("<I", head, _HEAD - 4)[0])
            size += len(meta)
            kept = without_sender(meta)
            if kept is not None and len(kept) != len(meta):
                head, meta = PREAMBLE, meta_group(kept)
        h.update(head)
        h.update(meta)
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def outgoing_head(source: io.RawIOBase | io.BufferedIOBase) -> tuple[bytes, int]:
    """(``head``, ``replaced``): the bytes that go out instead of the first ``replaced``
    bytes of the file open as ``source`` (read from its start); (b"", 0) when the file
    goes out as stored (no sender elements and no group 0002 at the start of the
    dataset, or no meta group length to find them by). ``replaced`` covers the
    dataset's leading group 0002 elements: they do not go out.

    Raises :class:`MalformedMeta` when the meta group is longer than :data:`MAX_META`,
    shorter than it says, or its elements do not parse, and as
    :func:`_dataset_group_0002` does.
    """
    found = _meta_and_leading(source)
    if found is None:
        return b"", 0
    length, kept, leading = found
    if len(kept) == length and not leading:
        return b"", 0
    return PREAMBLE + meta_group(kept), _HEAD + length + leading


def dataset_start(source: io.RawIOBase | io.BufferedIOBase) -> int | None:
    """Where the dataset proper starts in the file open as ``source`` (read from its
    start): after the meta group and after the group 0002 elements at the start of the
    dataset, as :class:`OutgoingFile` leaves them out (none are looked for in a
    deflated dataset: it goes as stored). None when the file has no meta group length
    to find them by. ``source`` is left somewhere past the meta group.

    Raises :class:`MalformedMeta` as :func:`outgoing_head` does.
    """
    found = _meta_and_leading(source)
    if found is None:
        return None
    length, _kept, leading = found
    return _HEAD + length + leading


def _meta_and_leading(
    source: io.RawIOBase | io.BufferedIOBase,
) -> tuple[int, bytes, int] | None:
    """(meta group length, its elements without the sender's, bytes of group 0002
    elements at the start of the dataset) of the file open as ``source``, read from its
    start; None without a meta group length. Raises as :func:`outgoing_head`."""
    source.seek(0)
    head = source.read(_HEAD) or b""
    if head[: len(_GROUP_LENGTH)] != _GROUP_LENGTH:
        return None
    length = struct.unpack_from("<I", head, _HEAD - 4)[0]
    if length > MAX_META:
        raise MalformedMeta(f"the meta group says it is {length} bytes long")
    meta = source.read(length) or b""
    if len(meta) != length:
        raise MalformedMeta(f"the file ends inside its meta group ({len(meta)} of {length})")
    kept = without_sender(meta)
    if kept is None:
        raise MalformedMeta("the meta group's elements do not parse")
    # A deflated dataset is a deflate stream: its first bytes are not elements.
    leading = 0 if _transfer_syntax(kept) == DEFLATED else _dataset_group_0002(source)
    return length, kept, leading


#: Deflated Explicit VR Little Endian (PS3.5 A.5).
DEFLATED = "1.2.840.10008.1.2.1.99"


def _transfer_syntax(elements: bytes) -> str:
    """(0002,0010) of meta group elements that parsed (:func:`without_sender`); ""."""
    pos = 0
    while pos + 8 <= len(elements):
        _group, element, vr = struct.unpack_from("<HH2s", elements, pos)
        if vr in _LONG_VRS:
            start = pos + 12
            stop = start + struct.unpack_from("<I", elements, pos + 8)[0]
        else:
            start = pos + 8
            stop = start + struct.unpack_from("<H", elements, pos + 6)[0]
        if element == 0x0010:
            return elements[start:stop].rstrip(b"\0 ").decode("ascii", "replace")
        pos = stop
    return ""


def _dataset_group_0002(source: io.RawIOBase | io.BufferedIOBase) -> int:
    """The number of bytes of group 0002 elements at the start of the dataset
    (``source`` positioned there), walked as Explicit VR Little Endian like
    ``scp.header`` steps over them on receipt; 0 when there are none.

    Raises :class:`MalformedMeta` when they run past :data:`MAX_META` bytes or past the
    end of the file.
    """
    window = MAX_META + 8  # the run, and the next element's tag and VR after it
    data = source.read(window) or b""
    pos = 0
    while pos + 8 <= len(data):
        group, _element, vr = struct.unpack_from("<HH2s", data, pos)
        if group != 0x0002:
            break
        if pos >= MAX_META:
            raise MalformedMeta(f"the dataset starts with over {MAX_META} bytes of group 0002")
        if vr in _LONG_VRS:
            stop = pos + 12
            if stop <= len(data):
                stop += struct.unpack_from("<I", data, pos + 8)[0]
        else:
            stop = pos + 8 + struct.unpack_from("<H", data, pos + 6)[0]
        if stop > len(data):  # past the window read, or the file's end before it
            if len(data) == window:
                raise MalformedMeta(f"the dataset starts with over {MAX_META} bytes of group 0002")
            raise MalformedMeta("the file ends inside a group 0002 element of its dataset")
        pos = stop
    if pos > MAX_META:
        raise MalformedMeta(f"the dataset starts with over {MAX_META} bytes of group 0002")
    return pos


class OutgoingFile(io.RawIOBase):
    """A stored file opened as it leaves the hospital: without the sender elements
    (see the module docstring); read-only, from its start onwards.

    ``size`` is the number of bytes it reads (computed when opened). Raises
    ``OSError`` (``FileNotFoundError``) when the file cannot be opened, and
    :class:`MalformedMeta` from :func:`outgoing_head`; either way nothing was read out.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._file = io.FileIO(path, "rb")
        try:
            self._head, self._replaced = outgoing_head(self._file)
            self._file.seek(self._replaced)
        except BaseException:
            self._file.close()
            raise
        self._given = 0  # bytes of the head read out so far
        self.size = self.stored_size()

    def stored_size(self) -> int:
        """The outgoing size of the file as it is on disk now (a check that it did not
        change since it was opened)."""
        return os.fstat(self._file.fileno()).st_size - self._replaced + len(self._head)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._given < len(self._head):
            n = min(len(view), len(self._head) - self._given)
            view[:n] = self._head[self._given : self._given + n]
            self._given += n
            return n
        return self._file.readinto(view) or 0

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left for -1; the head alone may come
        short); b"" at the end. Not through :meth:`readinto`: no ``size``-byte buffer
        is made per call."""
        if size < 0:
            head, self._given = self._head[self._given :], len(self._head)
            return head + self._file.readall()
        if self._given < len(self._head):
            stop = min(len(self._head), self._given + size)
            data = self._head[self._given : stop]
            self._given = stop
            return data
        return self._file.read(size) or b""

    def close(self) -> None:
        self._file.close()
        super().close()

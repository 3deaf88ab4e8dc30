"""Where an instance's frames are in its file, so WADO-RS reads only the frames asked for.

:func:`frame_source` reads the header up to the pixel data (``stop_before_pixels``: the
pixel data itself is never walked) and the pixel data element's own header, which says
where its value starts. :meth:`FrameSource.read` then reads one frame:

- native (uncompressed): ``size`` bytes at ``start + (n - 1) * size``;
- encapsulated (PS3.5 A.4), by the first of these the file has: the Extended Offset
  Table (in the header), the Basic Offset Table (the first item), or the fragments'
  item headers (8 bytes each, walked once per request and only when there is no table):
  one fragment per frame, every fragment for a single frame, or else fragments grouped
  up to each JPEG end-of-image marker (read from each fragment's last 10 bytes, as
  pydicom does).

Only the asked frame's fragments are read: a 1000-frame cine costs its header, its
offset table and one frame per request, not its whole pixel data. Every position and
length is checked against the file's size, and an offset table's length against the
number of frames (empty, or one entry per frame), so a lying header, offset table or
fragment length is refused (:class:`FramesUnreadable`: the route's 422) before anything
is read or allocated for it.
Deflated and Big Endian files (rare) are read whole once per request, as pydicom decodes
them.

Errors: :class:`NoFrame` (no pixel data, or no such frame: 404), :class:`FramesUnreadable`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from struct import unpack
from typing import BinaryIO

import pydicom
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian
from pydicom.uid import ExplicitVRLittleEndian as _EVRLE

_PIXEL_DATA = (0x7FE0, 0x0010)
_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_END = (0xFFFE, 0xE0DD)
_UNDEFINED = 0xFFFFFFFF
_EOI = b"\xff\xd9"
# VRs whose explicit header has 2 reserved bytes and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UN", b"UC", b"UR", b"UT"}

# The media type of a compressed frame, by transfer syntax (PS3.18 Table 8.7.3-2).
FRAME_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


class NoFrame(Exception):
    """No such frame, or no pixel data: 404."""


class FramesUnreadable(Exception):
    """The pixel data is not where or what its headers say (a corrupt file): 422."""


@dataclass
class FrameSource:
    """An instance's frames as stored: what each is sent as and where it is in the file.

    ``start`` is where the pixel data's value starts; ``end`` the file's size (no read
    goes past it). ``whole`` holds the pixel data of a Deflated or Big Endian file.
    """

    path: Path
    media: str  # of each frame as sent
    transfer_syntax: str  # of each frame as sent
    count: int  # frames in the instance
    encapsulated: bool
    start: int
    size: int  # bytes per frame (native only)
    end: int
    whole: bytes | None = None
    extended: tuple[list[int], list[int]] | None = None  # (offsets, lengths)
    # The encapsulated layout, read on first use (one per request): Basic Offset Table
    # offsets and, without one, each fragment's (value position, length).
    _offsets: list[int] | None = field(default=None, repr=False)
    _fragments: list[tuple[int, int]] | None = field(default=None, repr=False)
    _first_item: int = field(default=0, repr=False)

    def read(self, fh: BinaryIO, number: int) -> bytes:
        """Frame ``number`` (1-based) from ``fh``, the open file (unbuffered is best:
        every read is then exactly what is needed). Raises :class:`NoFrame` or
        :class:`FramesUnreadable`."""
        if number < 1 or number > self.count:
            raise NoFrame("no such frame")
        if self.encapsulated:
            return self._encapsulated(fh, number - 1)
        if self.whole is not None:
            data = self.whole[(number - 1) * self.size : number * self.size]
        else:
            fh.seek(self.start + (number - 1) * self.size)
            data = _read(fh, min(self.size, max(0, self.end - fh.tell())))
        if len(data) != self.size:
            raise NoFrame("the pixel data is shorter than declared")
        return data

    # -- encapsulated -------------------------------------------------------------------

    def _encapsulated(self, fh: BinaryIO, index: int) -> bytes:
        if self.extended is not None:
            offsets, lengths = self.extended
            if index >= len(offsets):
                raise NoFrame("no such frame in the Extended Offset Table")
            self._layout(fh)  # where the first fragment's item starts
            return self._span(fh, self._first_item + offsets[index] + 8, lengths[index])
        offsets = self._layout(fh)
        if offsets:
            if index >= len(offsets):
                raise NoFrame("no such frame in the Basic Offset Table")
            at = self._first_item + offsets[index]
            stop = self._first_item + offsets[index + 1] if index + 1 < len(offsets) else None
            return self._items_from(fh, at, stop)
        fragments = self._walk(fh)
        if len(fragments) == self.count:  # one fragment per frame (RLE, most writers)
            return self._span(fh, *fragments[index])
        if self.count == 1:
            return b"".join(self._span(fh, *f) for f in fragments)
        return self._by_end_marker(fh, fragments, index)

    def _layout(self, fh: BinaryIO) -> list[int]:
        """The Basic Offset Table (empty when the file has none), read once."""
        if self._offsets is None:
            tag, length = _item_header(fh, self.start, self.end)
            if tag != _ITEM or length % 4 or self.start + 8 + length > self.end:
                raise FramesUnreadable("the Basic Offset Table item is malformed")
            if length and length // 4 != self.count:
                # Checked before reading: a lying length costs nothing (PS3.5 A.4: one
                # offset per frame, or an empty table).
                raise FramesUnreadable("the Basic Offset Table does not hold one offset per frame")
            table = _read(fh, length)
            offsets = list(unpack(f"<{length // 4}L", table))
            if any(b <= a for a, b in pairwise(offsets)):
                raise FramesUnreadable("the Basic Offset Table is not increasing")
            self._first_item = self.start + 8 + length
            self._offsets = offsets
        return self._offsets

    def _walk(self, fh: BinaryIO) -> list[tuple[int, int]]:
        """Each fragment's (value position, length), from the item headers alone."""
        if self._fragments is None:
            self._layout(fh)
            found: list[tuple[int, int]] = []
            at = self._first_item
            while True:  # bounded: every item moves ``at`` on by 8 bytes or more
                tag, length = _item_header(fh, at, self.end)
                if tag == _SEQUENCE_END:
                    break
                if tag != _ITEM or length == _UNDEFINED or at + 8 + length > self.end:
                    raise FramesUnreadable("a fragment's item header is malformed")
                found.append((at + 8, length))
                at += 8 + length
            self._fragments = found
        return self._fragments

    def _items_from(self, fh: BinaryIO, at: int, stop: int | None) -> bytes:
        """The fragments from the item at ``at`` up to ``stop`` (or the sequence's end)."""
        parts = []
        while stop is None or at < stop:  # bounded: ``at`` grows by 8 or more
            tag, length = _item_header(fh, at, self.end)
            if tag == _SEQUENCE_END and stop is None:
                break
            if tag != _ITEM or length == _UNDEFINED or at + 8 + length > self.end:
                raise FramesUnreadable("the Basic Offset Table points outside a fragment")
            parts.append(_read(fh, length))
            at += 8 + length
        return b"".join(parts)

    def _span(self, fh: BinaryIO, at: int, length: int) -> bytes:
        if at < self.start or at + length > self.end:
            raise FramesUnreadable("a frame's position lies outside the file")
        fh.seek(at)
        return _read(fh, length)

    def _by_end_marker(self, fh: BinaryIO, fragments: list[tuple[int, int]], index: int) -> bytes:
        """Several fragments per frame and no table: a frame ends with the fragment whose
        last 10 bytes hold the JPEG end-of-image marker (pydicom's rule)."""
        number, first = 0, 0
        for k, (at, length) in enumerate(fragments):
            tail = length if length < 10 else 10
            fh.seek(at + length - tail)
            ends = _EOI in _read(fh, tail)
            if ends or k == len(fragments) - 1:
                if number == index:
                    return b"".join(self._span(fh, *f) for f in fragments[first : k + 1])
                number, first = number + 1, k + 1
        raise NoFrame("the pixel data holds fewer frames than declared")


def _read(fh: BinaryIO, n: int) -> bytes:
    """Exactly ``n`` bytes from ``fh`` (an unbuffered file may return fewer per call)."""
    chunks, got = [], 0
    while got < n:
        chunk = fh.read(n - got)
        if not chunk:
            raise FramesUnreadable("the file ends inside its pixel data")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _item_header(fh: BinaryIO, at: int, end: int) -> tuple[tuple[int, int], int]:
    if at + 8 > end:
        raise FramesUnreadable("the file ends inside its pixel data")
    fh.seek(at)
    group, element, length = unpack("<HHL", _read(fh, 8))
    return (group, element), length


def frame_source(path: Path) -> FrameSource:
    """The frames of the instance at ``path`` as stored. Reads the header only (up to
    the pixel data); raises :class:`NoFrame` when it has no pixel data and
    :class:`FramesUnreadable` when the pixel data element is malformed."""
    with open(path, "rb") as fh:
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
        at = fh.tell()
        end = os.fstat(fh.fileno()).st_size
        ts = UID(ds.file_meta.get("TransferSyntaxUID", _EVRLE))
        if "Rows" not in ds:
            raise NoFrame("the instance has no pixel data")
        count = int(ds.get("NumberOfFrames", 1) or 1)
        if ts == DeflatedExplicitVRLittleEndian:  # positions are in the inflated stream
            return _whole(path, ds, ts, count)
        little = ts != ExplicitVRBigEndian
        head = fh.read(12)
    if len(head) < 8:
        raise NoFrame("the instance has no pixel data")
    group, element = unpack("<HH" if little else ">HH", head[:4])
    if (group, element) != _PIXEL_DATA:  # none, or Float / Double Float Pixel Data
        raise NoFrame("the instance has no pixel data")
    if ts.is_implicit_VR:
        (length,) = unpack("<L", head[4:8])
        start = at + 8
    elif head[4:6] in _LONG_VRS and len(head) == 12:
        (length,) = unpack("<L" if little else ">L", head[8:12])
        start = at + 12
    else:
        (length,) = unpack("<H" if little else ">H", head[6:8])
        start = at + 8
    if ts.is_encapsulated:
        if length != _UNDEFINED:
            raise FramesUnreadable("encapsulated pixel data must have an undefined length")
        media = FRAME_TYPES.get(ts, "application/octet-stream")
        extended = _extended(ds, count)
        return FrameSource(path, media, ts, count, True, start, 0, end, extended=extended)
    if not little:
        return _whole(path, ds, ts, count)
    size = get_expected_length(ds, unit="bytes") // count
    if length != _UNDEFINED:  # no frame is read past the value's own end
        end = min(end, start + length)
    return FrameSource(path, "application/octet-stream", _EVRLE, count, False, start, size, end)


def _whole(path: Path, ds: pydicom.Dataset, ts: UID, count: int) -> FrameSource:
    """A Deflated or Big Endian file's frames, from its pixel data read whole (rare)."""
    whole = bytes(pydicom.dcmread(path).PixelData)
    size = get_expected_length(ds, unit="bytes") // count
    native = ExplicitVRBigEndian if ts == ExplicitVRBigEndian else _EVRLE
    return FrameSource(path, "application/octet-stream", native, count, False, 0, size, 0, whole)


def _extended(ds: pydicom.Dataset, count: int) -> tuple[list[int], list[int]] | None:
    """The Extended Offset Table (7FE0,0001) and its lengths (7FE0,0002), when the file
    has both. Raises :class:`FramesUnreadable` unless each holds one 8-byte entry per
    frame, checked before either is unpacked."""
    offsets = ds.get("ExtendedOffsetTable")
    lengths = ds.get("ExtendedOffsetTableLengths")
    if not offsets or not lengths:
        return None
    if len(offsets) != 8 * count or len(lengths) != 8 * count:
        raise FramesUnreadable("the Extended Offset Table does not hold one entry per frame")
    return list(unpack(f"<{count}Q", offsets)), list(unpack(f"<{count}Q", lengths))

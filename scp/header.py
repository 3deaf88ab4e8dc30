"""Reading a received instance's header, and refusing data that is not a whole dataset.

pydicom reads lazily and forgives a lot: a file cut short in its pixel data reads
without complaint, and a sequence nested thousands deep exhausts its recursion. Before
an instance is acknowledged, :func:`check_structure` walks every element header of the
dataset iteratively (no recursion, bounded depth), checking that each value fits in the
file and that every undefined-length sequence and item is closed; then
:func:`read_header` extracts the attributes the index needs, and the pixel size the header
declares (:class:`imaging.PixelBudget`: Rows, Columns, NumberOfFrames, SamplesPerPixel,
BitsAllocated), which ingest bounds before anything decodes those pixels.

Indexed text loses control characters (PostgreSQL refuses NUL) and the Unicode bidi
controls (U+202A-U+202E embeddings and overrides, U+2066-U+2069 isolates, the marks
U+200E, U+200F, U+061C): a name holding a right-to-left override would otherwise show
reversed, and differently from what it holds, on every page, list and terminal.
"""

from __future__ import annotations

import ipaddress
import os
import re
import struct
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pydicom.config
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from imaging import PixelBudget, declared_size
from telemetry import text

MAX_DEPTH = 32

# We validate what we rely on (UIDs, structure) ourselves; pydicom's value warnings
# would only echo received values (patient data) into the log.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD


class BadDataset(ValueError):
    """The received bytes are not a complete, parseable dataset (answer Cxxx)."""


@dataclass(frozen=True)
class Header:
    """What the index keeps of one instance (patient fields never reach a log)."""

    transfer_syntax_uid: str
    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_uid: str | None
    series_uid: str | None
    patient_id: str
    patient_name: str
    patient_birth_date: str
    accession_number: str
    study_date: str
    study_description: str
    modality: str
    series_number: str
    series_description: str
    instance_number: str
    dataset_offset: int
    pixels: PixelBudget  # the size the header declares (its pixel data is not checked)
    # Who sent it, from the File Meta Information Courier writes on receipt (empty in
    # files from older versions and from elsewhere): (0002,0017), else (0002,0016).
    calling_ae: str = ""
    called_ae: str = ""  # (0002,0018) Receiving Application Entity Title
    peer_host: str = ""  # the host of (0002,0027) Sending Presentation Address


# The first read of a file: a small instance whole, a large one's header (its pixel data
# is skipped by arithmetic, never read).
_CHUNK = 32 * 1024
_VR_LETTERS = frozenset(range(ord("A"), ord("Z") + 1))
_META_LONG = struct.Struct("<HH2sxxL")
_META_SHORT = struct.Struct("<HH2sH")

# A top-level element kept for the index: (VR or None when implicit, value, offset).
Found = tuple[str | None, bytes, int]

# Kinds of container on the walk's stack.
_DATASET, _SEQ, _ITEM_KIND, _FRAGS = 0, 1, 2, 3


class _File:
    """The file's bytes, read with ``pread`` from one descriptor: ``buf`` holds the
    bytes from ``base`` on (one chunk); anything else is read when asked for."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.base = 0
        self.buf = os.pread(fd, _CHUNK, 0)

    def window(self, offset: int) -> None:
        """Make ``buf`` start at ``offset`` (the walk only moves forward)."""
        self.buf = os.pread(self.fd, _CHUNK, offset)
        self.base = offset

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (the caller checked they are in the file)."""
        i = offset - self.base
        if i >= 0 and i + length <= len(self.buf):
            return self.buf[i : i + length]
        return os.pread(self.fd, length, offset)


def _meta(f: _File, meta: dict[int, bytes] | None = None) -> tuple[str, int]:
    """Return (transfer syntax UID, offset of the dataset) from a Part-10 file.

    The values of the meta elements whose element numbers are keys of ``meta`` are
    stored there (raw bytes).

    The File Meta Information ends where its group length (0002,0000) says (Courier
    writes it first). Group 0002 elements right after it belong to the sender's dataset
    (some modalities send them): they are stepped over as before, the dataset starting
    after them, but never read: the transfer syntax and the sender come from the meta
    Courier wrote only. A file without a group length (from elsewhere) is read as far
    as group 0002 goes.
    """
    size = f.size
    if size < 132 or f.read(128, 4) != b"DICM":
        raise BadDataset("no DICOM file meta information")
    offset = 132
    ts = ""
    meta_end = size
    if size >= 144:
        group, elem, vr, length = _META_SHORT.unpack_from(f.read(132, 12))
        if (group, elem, vr, length) == (0x0002, 0x0000, b"UL", 4):
            meta_end = 144 + int.from_bytes(f.read(140, 4), "little")
    while offset + 8 <= size:
        head = f.read(offset, 12 if offset + 12 <= size else 8)
        group, elem, vr, length = _META_SHORT.unpack_from(head)
        if group != 0x0002:
            break
        if vr in _LONG_VRS:
            if len(head) < 12:
                raise BadDataset("file meta information is truncated")
            length = _META_LONG.unpack(head)[3]
            start = offset + 12
        else:
            start = offset + 8
        if start + length > size:
            raise BadDataset("file meta information is truncated")
        if offset >= meta_end:
            pass  # the sender's dataset: not Courier's meta
        elif elem == 0x0010:
            ts = f.read(start, length).rstrip(b"\x00 ").decode("ascii", "replace")
        elif meta is not None and elem in meta and length <= 1024:
            meta[elem] = f.read(start, length)
        offset = start + length
    if not ts:
        raise BadDataset("no transfer syntax in the file meta information")
    return ts, offset


def _scan(
    path: Path,
    wanted: Collection[int],
    meta: dict[int, bytes] | None,
    opened: tuple[int, int] | None = None,
) -> tuple[str, int, bool, dict[int, Found]]:
    """Check the file's structure; return (transfer syntax, dataset offset, little
    endian, the top-level elements of ``wanted`` found, at most 1024 bytes each).

    ``opened``: (a readable descriptor of ``path``, the file's size), read from and
    left open; None: the file is opened here."""
    found: dict[int, Found] = {}
    if opened is None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        size = None
    else:
        fd, size = opened
    try:
        f = _File(fd, os.fstat(fd).st_size if size is None else size)
        ts, offset = _meta(f, meta)
        little = ts != ExplicitVRBigEndian
        if ts != DeflatedExplicitVRLittleEndian:  # deflated: the full parse checks it
            _walk(f, offset, little, ts == ImplicitVRLittleEndian, wanted, found)
    finally:
        if opened is None:
            os.close(fd)
    return ts, offset, little, found


def check_structure(
    path: Path,
    wanted: dict[int, RawDataElement | None] | None = None,
    meta: dict[int, bytes] | None = None,
) -> tuple[str, int]:
    """Walk the dataset's element headers; raise :class:`BadDataset` if it is not whole.

    Top-level elements whose tags are keys of ``wanted`` are stored there (raw, for
    pydicom to decode with the dataset's character set), and file meta elements whose
    element numbers are keys of ``meta`` there. Returns (transfer syntax UID, dataset
    offset).
    """
    ts, offset, little, found = _scan(path, wanted or (), meta)
    if wanted is not None:
        for tag, element in found.items():
            wanted[tag] = _raw(tag, element, little)
    return ts, offset


def _raw(tag: int, element: Found, little: bool) -> RawDataElement:
    vr, value, start = element
    return RawDataElement(BaseTag(tag), vr, len(value), value, start, vr is None, little)


def _walk(
    f: _File,
    offset: int,
    little: bool,
    implicit0: bool,
    wanted: Collection[int],
    found: dict[int, Found],
) -> None:
    """Every element header from ``offset`` to the end, iteratively (see the module
    docstring); the top-level elements of ``wanted`` go to ``found``.

    The bytes are walked in memory, a chunk at a time: a small file is one read, and a
    large value (pixel data) is stepped over, not read.
    """
    end = "<" if little else ">"
    # tag + VR + short length (explicit), or tag + 32-bit length (implicit, items)
    explicit_head = struct.Struct(end + "HH2sH").unpack_from
    implicit_head = struct.Struct(end + "HHL").unpack_from
    u32 = struct.Struct(end + "L").unpack_from
    size = f.size
    buf, base = f.buf, f.base
    blen = len(buf)
    # The enclosing containers: (kind, implicit, end offset or None when undefined length)
    stack: list[tuple[int, bool, int | None]] = []
    kind, implicit = _DATASET, implicit0
    limit: int | None = size
    while True:
        if limit is not None and offset >= limit:
            if offset > limit:
                raise BadDataset("an element runs past the end of its container")
            if not stack:
                return
            kind, implicit, limit = stack.pop()
            continue
        i = offset - base
        if i + 12 > blen and base + blen < size:
            f.window(offset)
            buf, base = f.buf, f.base
            blen, i = len(buf), 0
        if i + 8 > blen:
            raise BadDataset("the dataset ends in the middle of an element")
        if implicit:
            group, elem, length = implicit_head(buf, i)
            vr = b"UN"
        else:
            group, elem, vr, length = explicit_head(buf, i)
        if group == 0xFFFE:
            tag = (group << 16) | elem
            if not implicit:
                length = u32(buf, i + 4)[0]
            offset += 8
            if tag == _ITEM and kind == _SEQ:
                stack.append((kind, implicit, limit))
                if length == _UNDEFINED:
                    kind, limit = _ITEM_KIND, None
                else:
                    kind, limit = _ITEM_KIND, offset + length
                    if offset + length > size:
                        raise BadDataset("an item runs past the end of the file")
            elif tag == _ITEM and kind == _FRAGS:
                # Encapsulated pixel data: items hold opaque fragments.
                if length == _UNDEFINED or offset + length > size:
                    raise BadDataset("a pixel data fragment runs past the end of the file")
                offset += length
            elif (tag == _ITEM_END and kind == _ITEM_KIND and limit is None) or (
                tag == _SEQ_END and kind in (_SEQ, _FRAGS) and limit is None
            ):
                kind, implicit, limit = stack.pop()
            else:
                raise BadDataset("a sequence or item delimiter is out of place")
            if len(stack) >= MAX_DEPTH:
                raise BadDataset(f"sequences are nested more than {MAX_DEPTH} deep")
            continue
        if kind in (_SEQ, _FRAGS):
            raise BadDataset("a sequence holds something other than items")
        if implicit:
            start = offset + 8
        elif vr in _LONG_VRS:
            if i + 12 > blen:
                raise BadDataset("the dataset ends in the middle of an element")
            length = u32(buf, i + 8)[0]
            start = offset + 12
        elif vr[0] in _VR_LETTERS and vr[1] in _VR_LETTERS:
            start = offset + 8
        else:
            raise BadDataset("an element has an invalid value representation")
        if length == _UNDEFINED:
            stack.append((kind, implicit, limit))
            if vr == b"OB" or vr == b"OW":
                kind, limit = _FRAGS, None  # encapsulated pixel data
            elif vr == b"SQ" or vr == b"UN":
                # Undefined-length UN holds implicit VR little endian (PS3.5 6.2.2).
                kind, implicit, limit = _SEQ, implicit or vr == b"UN", None
            else:
                raise BadDataset("an element of undefined length is not a sequence")
            if len(stack) >= MAX_DEPTH:
                raise BadDataset(f"sequences are nested more than {MAX_DEPTH} deep")
            offset = start
            continue
        if start + length > size:
            raise BadDataset("an element's value runs past the end of the file")
        if not stack and length <= 1024:
            tag = (group << 16) | elem
            if tag in wanted:
                found[tag] = (
                    None if implicit else vr.decode("ascii"),
                    f.read(start, length),
                    start,
                )
        if vr == b"SQ" and length:
            stack.append((kind, implicit, limit))
            kind, limit = _SEQ, start + length
            if len(stack) >= MAX_DEPTH:
                raise BadDataset(f"sequences are nested more than {MAX_DEPTH} deep")
            offset = start
            continue
        offset = start + length


_CONTROL: dict[int, None] = dict.fromkeys(range(0x20), None)
_CONTROL.pop(0x1B)  # ESC starts ISO 2022 character set switches in names
# Bidi controls: embeddings/overrides, isolates, and the direction marks.
_CONTROL.update(dict.fromkeys(text.BIDI_CONTROLS, None))
_US = {None, "US"}  # Rows, Columns, SamplesPerPixel, BitsAllocated: implicit VR or US


# The same, for ASCII bytes (the bidi controls are not ASCII): deleted before decoding.
_ASCII_CONTROL = bytes(b for b in range(0x20) if b != 0x1B)


class _Fields:
    """The indexed attributes: plain ASCII values read straight from their bytes (the
    common case, and fast); anything else decoded by pydicom with the dataset's
    Specific Character Set."""

    def __init__(self, found: dict[int, Found], little: bool, ds: Dataset | None) -> None:
        self._found = found
        self._little = little
        self._ds = ds

    def _dataset(self) -> Dataset:
        if self._ds is None:
            little = self._little
            self._ds = Dataset({BaseTag(t): _raw(t, e, little) for t, e in self._found.items()})
        return self._ds

    def _decoded(self, keyword: str) -> str | None:
        """pydicom's reading of ``keyword`` (None when absent)."""
        if self._ds is None and _TAGS[keyword] not in self._found:
            return None
        value = self._dataset().get(keyword)
        return None if value is None else str(value)

    def text(self, keyword: str, limit: int) -> str:
        """The value for the index: control characters (NUL!) removed, trimmed.

        PostgreSQL refuses NUL in text, and no attribute we index may contain one.
        """
        element = self._found.get(_TAGS[keyword])
        if element is not None and element[1].isascii():
            return element[1].translate(None, _ASCII_CONTROL).decode("ascii").strip()[:limit]
        value = self._decoded(keyword)
        return "" if value is None else value.translate(_CONTROL).strip()[:limit]

    def count(self, keyword: str) -> object:
        """A numeric pixel-description value (US read from its two bytes, IS from its
        text), or pydicom's reading of anything else; None when absent."""
        element = self._found.get(_TAGS[keyword])
        if element is not None:
            vr, value, _start = element
            if vr in _US and len(value) == 2:
                return int.from_bytes(value, "little" if self._little else "big")
            if keyword == "NumberOfFrames" and value.isascii():
                return value.decode("ascii").strip("\x00 ")
        if element is None and self._ds is None:
            return None
        return self._dataset().get(keyword)

    def uid(self, keyword: str) -> str | None:
        element = self._found.get(_TAGS[keyword])
        if element is not None and element[1].isascii():
            return element[1].decode("ascii").strip("\x00 ")
        value = self._decoded(keyword)
        return None if value is None else value.strip("\x00 ")


_TAGS = {
    k: int(tag_for_keyword(k) or 0)
    for k in (
        "SpecificCharacterSet",
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "AccessionNumber",
        "StudyDate",
        "StudyDescription",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "InstanceNumber",
        "Rows",
        "Columns",
        "NumberOfFrames",
        "SamplesPerPixel",
        "BitsAllocated",
    )
}
_PIXEL_KEYWORDS = ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated")
_WANTED = {tag: k for k, tag in _TAGS.items()}


# File meta elements (group 0002) naming the sender (PS3.10 Table 7.1-1).
_SOURCE_AE = 0x0016
_SENDING_AE = 0x0017
_RECEIVING_AE = 0x0018
_SENDING_ADDRESS = 0x0027
_PEER_ELEMENTS = (_SOURCE_AE, _SENDING_AE, _RECEIVING_AE, _SENDING_ADDRESS)
# A Sending Presentation Address: "dicom:HOST:PORT" as PS3.10 7.1.1.1 gives it (IPv6 in
# brackets), or the URI form dicom://HOST[:PORT][/]; the host is group 1, the port 2.
_HOST = r"(\[[0-9A-Fa-f:.]+(?:%25[A-Za-z0-9._~-]+)?\]|[^/:\[\]@?#]+)"
_ADDRESSES = (
    re.compile(rf"dicom:{_HOST}:(\d{{1,5}})", re.ASCII | re.IGNORECASE),
    re.compile(rf"dicom://{_HOST}(?::(\d{{1,5}}))?/?", re.ASCII | re.IGNORECASE),
)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?", re.ASCII)


def ae_title(raw: bytes | None) -> str:
    """An AE title from its bytes (AE: default character set, at most 16 characters,
    space-padded); "" when absent or not a valid one."""
    if not raw:
        return ""
    value = raw.strip(b" \x00")
    if len(value) > 16 or not all(0x20 <= b < 0x7F and b != 0x5C for b in value):
        return ""
    return value.decode("ascii")


def presentation_host(raw: bytes | None) -> str:
    """The host of a Sending Presentation Address (UR): ``dicom:10.1.2.3:104`` (PS3.10
    7.1.1.1), ``dicom:[::1]:104``, or the URI form ``dicom://10.1.2.3:104``.

    IPv4 and bracketed IPv6 literals (returned as written, without the brackets; a zone
    ``%25eth0`` as ``%eth0``) and DNS host names are accepted; anything else (another
    scheme, a user part, a path, a port out of range, bytes outside ASCII) gives "".
    """
    if not raw:
        return ""
    try:
        text = raw.rstrip(b" ").decode("ascii")
    except UnicodeDecodeError:
        return ""
    match = _ADDRESSES[0].fullmatch(text) or _ADDRESSES[1].fullmatch(text)
    if match is None:
        return ""
    host, port = match.group(1), match.group(2)
    if port is not None and not 0 < int(port) < 65536:
        return ""
    if host.startswith("["):
        literal = host[1:-1].replace("%25", "%", 1)
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return ""
        return literal  # as written: the form the association's address had
    if host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return ""
        return host
    return host if _HOSTNAME.fullmatch(host) else ""


def read_header(path: Path, opened: tuple[int, int] | None = None) -> Header:
    """Check the structure and read the indexed attributes in one pass.

    ``opened``: (a readable descriptor of ``path``, the file's size) when the caller
    holds one (ingest: it flushes the file through the same descriptor), read with
    ``pread`` and left open; None: the file is opened and closed here.

    Raises :class:`BadDataset`. The values are decoded by pydicom (with the dataset's
    Specific Character Set); deflated datasets are parsed by pydicom whole.
    """
    meta: dict[int, bytes] = dict.fromkeys(_PEER_ELEMENTS, b"")
    ts, offset, little, found = _scan(path, _WANTED, meta, opened)
    try:
        full = None
        if ts == DeflatedExplicitVRLittleEndian:
            full = pydicom.dcmread(path, stop_before_pixels=True, defer_size=4096)
        f = _Fields(found, little, full)
        header = Header(
            transfer_syntax_uid=ts,
            sop_class_uid=f.uid("SOPClassUID"),
            sop_instance_uid=f.uid("SOPInstanceUID"),
            study_uid=f.uid("StudyInstanceUID"),
            series_uid=f.uid("SeriesInstanceUID"),
            patient_id=f.text("PatientID", 64),
            patient_name=f.text("PatientName", 324),
            patient_birth_date=f.text("PatientBirthDate", 8),
            accession_number=f.text("AccessionNumber", 16),
            study_date=f.text("StudyDate", 8),
            study_description=f.text("StudyDescription", 64),
            modality=f.text("Modality", 16),
            series_number=f.text("SeriesNumber", 12),
            series_description=f.text("SeriesDescription", 64),
            instance_number=f.text("InstanceNumber", 12),
            dataset_offset=offset,
            pixels=declared_size({k: f.count(k) for k in _PIXEL_KEYWORDS}),
            calling_ae=ae_title(meta[_SENDING_AE]) or ae_title(meta[_SOURCE_AE]),
            called_ae=ae_title(meta[_RECEIVING_AE]),
            peer_host=presentation_host(meta[_SENDING_ADDRESS]),
        )
    except BadDataset:
        raise
    except RecursionError:
        raise BadDataset(f"sequences are nested more than {MAX_DEPTH} deep") from None
    except Exception as exc:
        # pydicom raises many types on bad input; the message may quote values, so
        # only the type is kept.
        raise BadDataset(f"the dataset cannot be parsed ({type(exc).__name__})") from None
    return header

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
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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


def _meta(fh: BinaryIO, size: int, meta: dict[int, bytes] | None = None) -> tuple[str, int]:
    """Return (transfer syntax UID, offset of the dataset) from a Part-10 file.

    The values of the meta elements whose element numbers are keys of ``meta`` are
    stored there (raw bytes).
    """
    head = fh.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise BadDataset("no DICOM file meta information")
    offset = 132
    ts = ""
    while offset + 8 <= size:
        fh.seek(offset)
        raw = fh.read(8)
        group, elem, vr = struct.unpack("<HH2s", raw[:6])
        if group != 0x0002:
            break
        if vr in _LONG_VRS:
            length = struct.unpack("<L", fh.read(4))[0]
            start = offset + 12
        else:
            length = struct.unpack("<H", raw[6:8])[0]
            start = offset + 8
        if start + length > size:
            raise BadDataset("file meta information is truncated")
        if elem == 0x0010:
            fh.seek(start)
            ts = fh.read(length).rstrip(b"\x00 ").decode("ascii", "replace")
        elif meta is not None and elem in meta and length <= 1024:
            fh.seek(start)
            meta[elem] = fh.read(length)
        offset = start + length
    if not ts:
        raise BadDataset("no transfer syntax in the file meta information")
    return ts, offset


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
    size = path.stat().st_size
    with open(path, "rb") as fh:
        ts, offset = _meta(fh, size, meta)
        if ts == DeflatedExplicitVRLittleEndian:
            return ts, offset  # compressed stream: checked by the full parse instead
        little = ts != ExplicitVRBigEndian
        implicit0 = ts == ImplicitVRLittleEndian
        _walk(fh, offset, size, little, implicit0, wanted)
    return ts, offset


def _walk(
    fh: BinaryIO,
    offset: int,
    size: int,
    little: bool,
    implicit0: bool,
    wanted: dict[int, RawDataElement | None] | None = None,
) -> None:
    end = "<" if little else ">"
    tag_fmt = struct.Struct(end + "HH")
    u16 = struct.Struct(end + "H")
    u32 = struct.Struct(end + "L")
    # Each frame: (kind, implicit, end offset or None when undefined length)
    stack: list[tuple[str, bool, int | None]] = [("dataset", implicit0, size)]
    while True:
        kind, implicit, limit = stack[-1]
        if limit is not None and offset >= limit:
            if offset > limit:
                raise BadDataset("an element runs past the end of its container")
            if len(stack) == 1:
                return
            stack.pop()
            continue
        fh.seek(offset)
        raw = fh.read(8)
        if len(raw) < 8:
            raise BadDataset("the dataset ends in the middle of an element")
        group, elem = tag_fmt.unpack(raw[:4])
        tag = (group << 16) | elem
        if group == 0xFFFE:
            length = u32.unpack(raw[4:8])[0]
            offset += 8
            if tag == _ITEM and kind == "seq":
                if length == _UNDEFINED:
                    stack.append(("item", implicit, None))
                else:
                    stack.append(("item", implicit, offset + length))
                    if offset + length > size:
                        raise BadDataset("an item runs past the end of the file")
            elif tag == _ITEM and kind == "frags":
                # Encapsulated pixel data: items hold opaque fragments.
                if length == _UNDEFINED or offset + length > size:
                    raise BadDataset("a pixel data fragment runs past the end of the file")
                offset += length
            elif (tag == _ITEM_END and kind == "item" and limit is None) or (
                tag == _SEQ_END and kind in ("seq", "frags") and limit is None
            ):
                stack.pop()
            else:
                raise BadDataset("a sequence or item delimiter is out of place")
            if len(stack) > MAX_DEPTH:
                raise BadDataset(f"sequences are nested more than {MAX_DEPTH} deep")
            continue
        if kind in ("seq", "frags"):
            raise BadDataset("a sequence holds something other than items")
        if implicit:
            vr = b"UN"
            length = u32.unpack(raw[4:8])[0]
            start = offset + 8
        else:
            vr = raw[4:6]
            if vr in _LONG_VRS:
                more = fh.read(4)
                if len(more) < 4:
                    raise BadDataset("the dataset ends in the middle of an element")
                length = u32.unpack(more)[0]
                start = offset + 12
            elif vr.isalpha() and vr.isupper():
                length = u16.unpack(raw[6:8])[0]
                start = offset + 8
            else:
                raise BadDataset("an element has an invalid value representation")
        if length == _UNDEFINED:
            if vr in (b"OB", b"OW"):
                stack.append(("frags", implicit, None))  # encapsulated pixel data
            elif vr in (b"SQ", b"UN"):
                # Undefined-length UN holds implicit VR little endian (PS3.5 6.2.2).
                stack.append(("seq", implicit or vr == b"UN", None))
            else:
                raise BadDataset("an element of undefined length is not a sequence")
            if len(stack) > MAX_DEPTH:
                raise BadDataset(f"sequences are nested more than {MAX_DEPTH} deep")
            offset = start
            continue
        if start + length > size:
            raise BadDataset("an element's value runs past the end of the file")
        if wanted is not None and len(stack) == 1 and tag in wanted and length <= 1024:
            fh.seek(start)
            wanted[tag] = RawDataElement(
                BaseTag(tag),
                None if implicit else vr.decode("ascii"),
                length,
                fh.read(length),
                start,
                implicit,
                little,
            )
        if vr == b"SQ" and length:
            stack.append(("seq", implicit, start + length))
            if len(stack) > MAX_DEPTH:
                raise BadDataset(f"sequences are nested more than {MAX_DEPTH} deep")
            offset = start
            continue
        offset = start + length


_CONTROL: dict[int, None] = dict.fromkeys(range(0x20), None)
_CONTROL.pop(0x1B)  # ESC starts ISO 2022 character set switches in names
# Bidi controls: embeddings/overrides, isolates, and the direction marks.
_CONTROL.update(dict.fromkeys(text.BIDI_CONTROLS, None))
_US = {None, "US"}  # Rows, Columns, SamplesPerPixel, BitsAllocated: implicit VR or US


class _Fields:
    """The indexed attributes: plain ASCII values read straight from their bytes (the
    common case, and fast); anything else decoded by pydicom with the dataset's
    Specific Character Set."""

    def __init__(self, raws: dict[int, RawDataElement | None], ds: Dataset | None) -> None:
        self._raws = raws
        self._ds = ds

    def _dataset(self) -> Dataset:
        if self._ds is None:
            self._ds = Dataset({BaseTag(t): r for t, r in self._raws.items() if r is not None})
        return self._ds

    def get(self, keyword: str) -> str | None:
        tag = _TAGS[keyword]
        raw = self._raws.get(tag)
        if raw is not None and isinstance(raw.value, bytes) and raw.value.isascii():
            return raw.value.decode("ascii")
        if raw is None and self._ds is None:
            return None
        value = self._dataset().get(keyword)
        return None if value is None else str(value)

    def text(self, keyword: str, limit: int) -> str:
        """The value for the index: control characters (NUL!) removed, trimmed.

        PostgreSQL refuses NUL in text, and no attribute we index may contain one.
        """
        value = self.get(keyword)
        return "" if value is None else value.translate(_CONTROL).strip()[:limit]

    def count(self, keyword: str) -> object:
        """A numeric pixel-description value (US read from its two bytes, IS from its
        text), or pydicom's reading of anything else; None when absent."""
        raw = self._raws.get(_TAGS[keyword])
        if raw is not None and isinstance(raw.value, bytes):
            if raw.VR in _US and len(raw.value) == 2:
                return int.from_bytes(raw.value, "little" if raw.is_little_endian else "big")
            if keyword == "NumberOfFrames" and raw.value.isascii():
                return raw.value.decode("ascii").strip("\x00 ")
        if raw is None and self._ds is None:
            return None
        return self._dataset().get(keyword)

    def uid(self, keyword: str) -> str | None:
        value = self.get(keyword)
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
# The host of a Sending Presentation Address: dicom://HOST[:PORT][/] (PS3.10 7.1.1.1).
_ADDRESS = re.compile(
    r"dicom://(\[[0-9A-Fa-f:.]+(?:%25[A-Za-z0-9._~-]+)?\]|[^/:\[\]@?#]+)(?::(\d{1,5}))?/?",
    re.ASCII | re.IGNORECASE,
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
    """The host of a Sending Presentation Address (UR), e.g. ``dicom://10.1.2.3:104``.

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
    match = _ADDRESS.fullmatch(text)
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


def read_header(path: Path) -> Header:
    """Check the structure and read the indexed attributes in one pass.

    Raises :class:`BadDataset`. The values are decoded by pydicom (with the dataset's
    Specific Character Set); deflated datasets are parsed by pydicom whole.
    """
    wanted: dict[int, RawDataElement | None] = dict.fromkeys(_WANTED)
    meta: dict[int, bytes] = dict.fromkeys(_PEER_ELEMENTS, b"")
    ts, offset = check_structure(path, wanted, meta)
    try:
        full = None
        if ts == DeflatedExplicitVRLittleEndian:
            full = pydicom.dcmread(path, stop_before_pixels=True, defer_size=4096)
        f = _Fields(wanted, full)
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

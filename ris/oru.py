"""HL7 v2 ``ORU^R01`` in, ``ACK`` out: what Courier reads of a radiology result message.

Pure (no store, no network): :func:`read_oru` turns the bytes of one MLLP block into an
:class:`OruReport` or raises :class:`Refused` with the ACK code (``AR``: the message as a
whole is rejected; ``AE``: it was understood but cannot be used), an HL7 table 0357 error
code and a reason that never holds patient data. :func:`ack` builds the answer. The
fields read are listed in docs/ris.md. The text of the message is untrusted: it is kept
as written (escapes decoded) and escaped wherever it is shown.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import hl7

from ris.settings import AccessionField

#: MSH-18 values Courier decodes, and the codec for each.
CHARSETS = {
    "": None,  # the node's ris.default_charset
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "8859/1": "latin-1",
}
#: OBR-25 result status → Report.status.
STATUSES = {"F": "final", "C": "corrected", "P": "preliminary"}
TEXT_TYPES = ("TX", "FT", "ST")
STUDY_UID_CODE = "113014"  # DCM "Study Instance UID" (IHE Radiology Results Distribution)

_SEGMENT_RE = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_SAFE_RE = re.compile(r"[^A-Za-z0-9 ._:-]")


class Refused(Exception):
    """The message cannot be taken: answered ``code`` (AR or AE), nothing stored."""

    def __init__(self, code: str, error: str, reason: str, header: Header | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.error = error  # HL7 table 0357
        self.reason = reason
        self.header = header


@dataclass(frozen=True)
class Header:
    """What an ACK echoes of the message it answers (ASCII-safe but ``control_id``)."""

    control_id: str = ""  # MSH-10 as sent (unescaped, capped): escaped again in MSA-2
    sending_application: str = ""
    sending_facility: str = ""
    receiving_facility: str = ""
    trigger: str = "R01"
    version: str = "2.5.1"
    processing_id: str = "P"


@dataclass
class OruReport:
    """One report as the RIS sent it."""

    header: Header
    accession: str
    status: str  # final | corrected | preliminary
    patient_ids: list[str]
    study_uid: str = ""
    title: str = ""
    reported_at: str = ""  # OBR-22 (or OBR-7) as sent
    text: str = ""  # the report text, lines joined by "\n" (kind text)
    pdf: bytes | None = None  # the PDF as received (kind pdf)
    charset: str = "utf-8"
    notes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "pdf" if self.pdf is not None else "text"

    @property
    def control_key(self) -> str:
        """Who sent it and its MSH-10: a retransmission has the same key."""
        h = self.header
        cid = h.control_id
        if _SAFE_RE.search(cid) or len(cid) > 64:  # never sanitised: 'A/1' is not 'A+1'
            cid = "#" + hashlib.sha256(cid.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{h.sending_application}|{h.sending_facility}|{cid}"[:200]


def _safe(value: str, limit: int = 64) -> str:
    """A header value fit to echo in an ACK: visible ASCII, our separators removed."""
    return _SAFE_RE.sub("", value)[:limit]


_ACK_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "~": "\\R\\", "&": "\\T\\"}


def _escape(value: str) -> str:
    """``value`` for a field of our ACK (``|^~\\&``): delimiters as HL7 escapes, anything
    but printable ASCII as ``\\Xhh\\``."""
    out: list[str] = []
    for c in value:
        if c in _ACK_ESCAPES:
            out.append(_ACK_ESCAPES[c])
        elif " " <= c <= "~":
            out.append(c)
        else:
            code = c.encode("latin-1") if ord(c) < 256 else c.encode("utf-8", "surrogatepass")
            out.append(f"\\X{code.hex().upper()}\\")
    return "".join(out)


def _header_fields(text: str) -> tuple[str, str, list[str]]:
    """(field separator, encoding characters, MSH fields) or :class:`Refused` (AR)."""
    first = text.split("\r", 1)[0]
    if not first.startswith("MSH") or len(first) < 8:
        raise Refused("AR", "100", "the message does not begin with an MSH segment")
    sep = first[3]
    fields = first.split(sep)
    enc = fields[1] if len(fields) > 1 else ""
    chars = [sep, *enc]
    if (
        len(enc) not in (4, 5)
        or len(set(chars)) != len(chars)
        or any(c.isalnum() or c.isspace() for c in chars)
    ):
        raise Refused("AR", "102", "invalid field separator or encoding characters (MSH-1, MSH-2)")
    # fields[0] is "MSH", fields[1] MSH-2: MSH-n is fields[n - 1].
    return sep, enc, fields


def _component(value: str, enc: str, n: int = 1) -> str:
    reps = value.split(enc[1])
    comps = reps[0].split(enc[0]) if reps else [""]
    return comps[n - 1] if len(comps) >= n else ""


def _getter(fields: list[str]) -> Callable[[int], str]:
    """MSH-n of the split MSH line (``fields[0]`` is "MSH", ``fields[1]`` MSH-2)."""

    def get(n: int) -> str:
        return fields[n - 1] if len(fields) >= n else ""

    return get


def read_header(raw: bytes) -> Header:
    """The MSH of a message, read leniently (ASCII only), for the ACK of a refusal."""
    text = raw.decode("latin-1").replace("\r\n", "\r").replace("\n", "\r").lstrip()
    try:
        sep, enc, f = _header_fields(text)
    except Refused:
        return Header()
    get = _getter(f)
    return Header(
        control_id=unescape(get(10), sep, enc)[:199],
        sending_application=_safe(_component(get(3), enc)),
        sending_facility=_safe(_component(get(4), enc)),
        receiving_facility=_safe(_component(get(6), enc)),
        trigger=_safe(_component(get(9), enc, 2), 3) or "R01",
        version=_safe(_component(get(12), enc), 10) or "2.5.1",
        processing_id=_safe(_component(get(11), enc), 1) or "P",
    )


def unescape(value: str, sep: str, enc: str) -> str:
    """HL7 escapes (chapter 2.7) decoded; unknown ones dropped; never raises or logs."""
    comp, rep, esc, sub = enc[0], enc[1], enc[2], enc[3]
    if esc not in value:
        return value
    simple = {"F": sep, "S": comp, "R": rep, "E": esc, "T": sub, ".br": "\n", ".sp": "\n"}
    out: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        end = value.find(esc, i + 1) if c == esc else -1
        if end == -1:
            out.append(c)
            i += 1
            continue
        seq = value[i + 1 : end]
        i = end + 1
        if seq in simple:
            out.append(simple[seq])
        elif seq.startswith(".sp") or seq.startswith(".br"):
            out.append("\n")
        elif seq.startswith("X") and len(seq) % 2 == 1:
            with contextlib.suppress(ValueError):
                out.append(bytes.fromhex(seq[1:]).decode("latin-1"))
        # H, N (highlighting), .in/.ti/.fi/.nf/.ce, Z (local) and anything else: dropped
    return "".join(out)


def read_oru(raw: bytes, *, accession_field: AccessionField, default_charset: str) -> OruReport:
    """Read one ORU^R01; raises :class:`Refused` (nothing may be stored then)."""
    header = read_header(raw)
    lenient = raw.decode("latin-1").replace("\r\n", "\r").replace("\n", "\r").strip()
    sep, enc, f = _header_fields(lenient)
    get = _getter(f)
    if not header.control_id.strip():
        raise Refused("AR", "101", "MSH-10 (message control ID) is missing", header)
    charset_name = get(18).split(enc[1])[0].strip().upper()
    if charset_name not in CHARSETS:
        raise Refused("AR", "103", "unsupported character set (MSH-18)", header)
    charset = CHARSETS[charset_name] or default_charset
    try:
        text = raw.decode(charset)
    except UnicodeDecodeError:
        raise Refused("AR", "102", f"the message is not valid {charset}", header) from None
    if "\x00" in text:
        raise Refused("AR", "102", "the message holds NUL characters", header)
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip()
    for line in text.split("\r"):
        if not line:
            continue
        if not _SEGMENT_RE.match(line[:3]) or (len(line) > 3 and line[3] != sep):
            raise Refused("AR", "100", "a segment is malformed (no three-character id)", header)
    message_type = get(9)
    if (_component(message_type, enc, 1), _component(message_type, enc, 2)) != ("ORU", "R01"):
        raise Refused("AR", "200", "unsupported message type (only ORU^R01)", header)
    if not _component(get(12), enc).startswith("2."):
        raise Refused("AR", "203", "unsupported version (HL7 v2.x only)", header)
    try:
        msg = hl7.parse(text)
    except Exception:  # the library's own view of a message we thought well formed
        raise Refused("AR", "102", "the message could not be parsed", header) from None
    return _read_body(msg, header, sep, enc, accession_field, charset)


def _raw(seg: hl7.Segment, n: int) -> str:
    """Field ``n`` of a (non-MSH) segment as written, "" when absent."""
    try:
        return str(seg[n]) if len(seg) > n else ""
    except (IndexError, ValueError):
        return ""


def _read_body(
    msg: hl7.Message,
    header: Header,
    sep: str,
    enc: str,
    accession_field: AccessionField,
    charset: str,
) -> OruReport:
    def refuse(error: str, reason: str) -> Refused:
        return Refused("AE", error, reason, header)

    obrs = [s for s in msg if str(s[0]) == "OBR"]
    if not obrs:
        raise refuse("101", "no OBR segment")
    obr = obrs[0]
    number = int(accession_field.split("-")[1])
    accession = unescape(_component(_raw(obr, number), enc), sep, enc).strip()
    if not accession:
        raise refuse("101", f"no accession number in {accession_field}")
    if len(accession) > 16:
        raise refuse("102", f"accession number in {accession_field} longer than 16 characters")
    for other in obrs[1:]:
        other_acc = unescape(_component(_raw(other, number), enc), sep, enc).strip()
        if other_acc != accession:
            raise refuse("205", "more than one accession number in one message")
    status_code = _component(_raw(obr, 25), enc).strip().upper()
    if status_code not in STATUSES:
        raise refuse("103", "result status (OBR-25) is not F, C or P")
    patient_ids: list[str] = []
    pids = [s for s in msg if str(s[0]) == "PID"]
    if pids:
        for rep in _raw(pids[0], 3).split(enc[1]):
            value = unescape(rep.split(enc[0])[0], sep, enc).strip()
            if value:
                patient_ids.append(value)
    report = OruReport(
        header=header,
        accession=accession,
        status=STATUSES[status_code],
        patient_ids=patient_ids,
        title=unescape(_component(_raw(obr, 4), enc, 2) or _component(_raw(obr, 4), enc), sep, enc)[
            :200
        ],
        reported_at=_safe(_component(_raw(obr, 22), enc) or _component(_raw(obr, 7), enc), 40),
        charset=charset,
    )
    lines: list[str] = []
    for seg in msg:
        sid = str(seg[0])
        if sid == "ZDS" and not report.study_uid:
            uid = _component(_raw(seg, 1), enc)
            if _UID_RE.match(uid) and len(uid) <= 64:
                report.study_uid = uid
        if sid != "OBX":
            continue
        vtype = _component(_raw(seg, 2), enc).strip().upper()
        code = _component(_raw(seg, 3), enc).strip()
        value = _raw(seg, 5)
        if code == STUDY_UID_CODE:
            uid = _component(value, enc)
            if not (_UID_RE.match(uid) and len(uid) <= 64):
                raise refuse("102", "Study Instance UID (OBX 113014) is not a UID")
            report.study_uid = uid
        elif vtype in TEXT_TYPES:
            for rep in value.split(enc[1]):
                lines.append(unescape(rep, sep, enc))
        elif vtype == "ED" and report.pdf is None:
            report.pdf = _read_pdf(value, enc, refuse)
    report.text = "\n".join(lines).strip("\n")
    if report.pdf is None and not report.text.strip():
        raise refuse("101", "no report in OBX-5 (TX, FT, ST text or an ED PDF)")
    return report


def _read_pdf(value: str, enc: str, refuse: Callable[[str, str], Refused]) -> bytes:
    comps = value.split(enc[1])[0].split(enc[0])
    if len(comps) < 5:
        raise refuse("102", "ED OBX-5 needs 5 components (source^type^subtype^encoding^data)")
    subtype, encoding, data = comps[2].strip().upper(), comps[3].strip().upper(), comps[4]
    if subtype != "PDF":
        raise refuse("103", "ED OBX-5 data subtype is not PDF")
    if encoding not in ("BASE64", "A"):
        raise refuse("103", "ED OBX-5 encoding is not Base64")
    try:
        pdf = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise refuse("102", "ED OBX-5 data is not valid Base64") from None
    if not pdf.startswith(b"%PDF-"):
        raise refuse("102", "ED OBX-5 data is not a PDF")
    return pdf


def ack(
    header: Header,
    code: str,
    *,
    application: str,
    reason: str = "",
    error: str = "",
    control_id: str,
    now: datetime | None = None,
) -> bytes:
    """The ``ACK`` answering ``header`` (original mode): MSA-1 ``code``, MSA-2 the
    message's control ID, MSA-3 and ERR the reason of an AE/AR (no patient data)."""
    when = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    msh = "|".join(
        [
            "MSH",
            "^~\\&",
            application,
            header.receiving_facility,
            header.sending_application,
            header.sending_facility,
            when,
            "",
            f"ACK^{header.trigger}^ACK",
            control_id,
            header.processing_id,
            header.version,
        ]
    )
    segments = [msh, f"MSA|{code}|{_escape(header.control_id)}|{_safe(reason, 80)}"]
    if code != "AA":
        segments.append(f"ERR|||{error or '207'}^{_safe(reason, 80)}^HL70357|E")
    return ("\r".join(segments) + "\r").encode("ascii")

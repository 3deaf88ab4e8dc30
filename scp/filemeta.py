"""The File Meta Information of a received file, and the file's content digest.

Every received file starts with a File Meta Information group (PS3.10 7.1) that
Courier encodes itself (:func:`file_meta`), and it names who sent it, with the elements
the standard has for that (Table 7.1-1):

- (0002,0016) Source Application Entity Title and (0002,0017) Sending Application
  Entity Title: the calling AE title;
- (0002,0018) Receiving Application Entity Title: the called AE title;
- (0002,0027) Sending Presentation Address (UR): ``dicom:<host>:<port>`` of the
  sender's end of the connection (PS3.10 7.1.1.1: "the scheme dicom followed by a colon,
  then either the fully qualified host name or IP address, followed by a colon and then
  the port number"; an IPv6 address is written in brackets, ``dicom:[::1]:104``).

So the file alone says who sent it: start-up recovery re-creates a lost index row with
the same peer the rules matched on (``scp.header`` reads the elements back).

The values come from the association (untrusted): AE titles keep printable ASCII
without a backslash, at most 16 characters, padded to an even length with a space;
the host is written only when it is an IP address. A value that is empty afterwards
is left out, never written malformed.

The content digest (:func:`store.filemeta.content_sha256`, re-exported here, and
:meth:`scp.spool.SpoolFile.write_meta` while a file arrives) is the SHA-256 of the file
as if those sender elements were not in it: the same dataset sent again, by another
sender or on another connection (another port), is the same content. A file without
them (written by a version before these elements) digests as its plain bytes, so index
rows written before keep matching. Copies that leave the hospital go without the sender
elements (:class:`store.filemeta.OutgoingFile`).
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from dataclasses import dataclass
from typing import Any

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

# The meta walk and the digest live in store (delivery and portal strip the sender too).
from store.filemeta import PREAMBLE, SENDER_ELEMENTS, content_sha256, meta_group, without_sender

__all__ = [
    "PREAMBLE",
    "SENDER_ELEMENTS",
    "FileMeta",
    "ae_value",
    "content_sha256",
    "file_meta",
    "peer_elements",
    "presentation_address",
    "sender_elements",
    "without_sender",
]

_AE_MAX = 16


@dataclass(frozen=True)
class FileMeta:
    """One file's meta group: the bytes written, and the bytes its digest covers."""

    written: bytes  # group length + elements, the sender's included
    digested: bytes  # the same without the sender's elements (group length to match)


def _short(element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _long(element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value


def _uid_bytes(uid: object) -> bytes:
    raw = str(uid).encode("ascii", "replace")[:64]
    return raw + b"\0" if len(raw) % 2 else raw


def _padded(raw: bytes) -> bytes:
    return raw + b" " if len(raw) % 2 else raw


def ae_value(title: object) -> bytes:
    """An AE title as the AE VR allows it (PS3.5 6.2): printable ASCII, no backslash,
    no leading or trailing space, at most 16 characters; b"" when nothing is left."""
    kept = "".join(c for c in str(title) if " " <= c <= "~" and c != "\\").strip()
    return kept[:_AE_MAX].rstrip().encode("ascii")


def presentation_address(host: object, port: object) -> bytes:
    """``dicom:<host>:<port>`` (PS3.10 7.1.1.1), IPv6 in brackets; b"" when ``host`` is
    not an IP address or ``port`` not a port number."""
    try:
        address = ipaddress.ip_address(str(host))
        number = int(str(port))
    except ValueError:
        return b""
    if not 0 < number < 65536 or getattr(address, "scope_id", None):
        return b""
    # Written as the association gave it (Peer.host is that same text), not normalised.
    text = f"[{host}]" if address.version == 6 else str(host)
    return f"dicom:{text}:{number}".encode("ascii")


@functools.lru_cache(maxsize=256)
def sender_elements(calling_ae: str, called_ae: str, host: str, port: object) -> bytes:
    """The encoded (0002,0016)-(0002,0027) elements for one association's peer.

    Cached: every C-STORE of an association asks again with the same values.
    """
    calling, called = ae_value(calling_ae), ae_value(called_ae)
    address = presentation_address(host, port)
    parts = []
    if calling:
        parts.append(_short(0x0016, b"AE", _padded(calling)))
        parts.append(_short(0x0017, b"AE", _padded(calling)))
    if called:
        parts.append(_short(0x0018, b"AE", _padded(called)))
    if address:
        parts.append(_long(0x0027, b"UR", _padded(address)))
    return b"".join(parts)


def peer_elements(assoc: Any) -> bytes:
    """:func:`sender_elements` for an acceptor association (b"" for None)."""
    if assoc is None:
        return b""
    requestor, acceptor = assoc.requestor, assoc.acceptor
    return sender_elements(
        str(requestor.ae_title), str(acceptor.ae_title), str(requestor.address), requestor.port
    )


def file_meta(
    sop_class_uid: object, sop_instance_uid: object, transfer_syntax: object, peer: bytes = b""
) -> FileMeta:
    """The File Meta Information group (PS3.10 7.1), encoded directly, with ``peer``
    (from :func:`peer_elements`) after the implementation's elements.

    Equivalent to pydicom's ``create_file_meta`` + ``write_file_meta_info``, which cost
    about a millisecond per instance on the receive path; this costs microseconds.
    """
    version = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    body = b"".join(
        (
            struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
            _short(0x0002, b"UI", _uid_bytes(sop_class_uid)),
            _short(0x0003, b"UI", _uid_bytes(sop_instance_uid)),
            _short(0x0010, b"UI", _uid_bytes(transfer_syntax)),
            _short(0x0012, b"UI", _uid_bytes(PYNETDICOM_IMPLEMENTATION_UID)),
            _short(0x0013, b"SH", _padded(version)),
        )
    )
    digested = meta_group(body)
    return FileMeta(meta_group(body + peer) if peer else digested, digested)

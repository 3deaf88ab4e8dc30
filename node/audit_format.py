"""Audit events as the world reads them: DICOM audit message XML, RFC 5424, JSON lines.

- :func:`audit_xml`: the PS3.15 A.5.1 ``AuditMessage`` (coded values as ``csd-code``,
  ``codeSystemName``, ``originalText``): EventIdentification, the active participants
  (the actor as requestor, Courier as the application), AuditSourceIdentification and one
  ParticipantObjectIdentification per study (Study Instance UID, 110180) and for the
  request (a local code). There is no Patient participant object on purpose: Courier
  never puts a patient's ID or name in the trail or its copies.
- :func:`syslog_message`: ``<85>1 TIMESTAMP HOST APP PROCID DICOM+RFC3881 [SD] BOM XML``.
  PRI 85 is facility 10 (security/authorization) at severity 5 (notice), as ATNA
  collectors expect. Structured data uses the IANA-registered SD-IDs of RFC 5424 §7:
  ``meta sequenceId`` is the event's row id (a collector can drop a repeat after a
  crash between sending and recording the watermark) and ``origin`` names the software.
- :func:`octet_counted`: RFC 6587 / RFC 5425 framing, ``MSG-LEN SP SYSLOG-MSG``.
- :func:`json_line`: one JSON object, the row's fields.
"""

from __future__ import annotations

import json
import re
from datetime import UTC
from typing import Any
from xml.etree import ElementTree as ET

from node import __version__
from store.audit import KINDS, Outcome, studies_of
from store.models import AuditEvent

MSGID = "DICOM+RFC3881"
PRI = 10 * 8 + 5
BOM = b"\xef\xbb\xbf"
_LOCAL = "99COURIER"  # a private coding scheme (DICOM: designators starting 99)
_NOT_PRINTABLE = re.compile(r"[^\x21-\x7e]")


def _coded(parent: ET.Element, tag: str, code: str, scheme: str, meaning: str) -> None:
    ET.SubElement(
        parent, tag, {"csd-code": code, "codeSystemName": scheme, "originalText": meaning}
    )


def _stamp(event: AuditEvent) -> str:
    return event.at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def audit_xml(event: AuditEvent, *, source: str, process: str) -> str:
    """The DICOM audit message of ``event`` (no XML declaration: RFC 5424 MSG text).

    ``source`` is the AuditSourceID (the node's name), ``process`` our process id.
    """
    kind = KINDS[event.kind]
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": event.action,
            "EventDateTime": _stamp(event),
            "EventOutcomeIndicator": str(Outcome(event.outcome).value),
        },
    )
    _coded(ident, "EventID", event.event_id, "DCM", kind.event_name)
    if event.event_type:
        _coded(ident, "EventTypeCode", event.event_type, "DCM", kind.type_name)
    if event.detail:
        ET.SubElement(ident, "EventOutcomeDescription").text = event.detail
    received = event.kind == "instances-stored"
    requestor = {"UserID": event.actor, "UserIsRequestor": "true"}
    if event.host:
        requestor |= {"NetworkAccessPointID": event.host, "NetworkAccessPointTypeCode": "2"}
    if event.actor != "node":
        actor = ET.SubElement(root, "ActiveParticipant", requestor)
        if received:  # the PACS sent: it is the source, we are the destination
            _coded(actor, "RoleIDCode", "110153", "DCM", "Source Role ID")
    app = ET.SubElement(
        root,
        "ActiveParticipant",
        {
            "UserID": source,
            "AlternativeUserID": process,
            "UserIsRequestor": "true" if event.actor == "node" else "false",
        },
    )
    if received:
        _coded(app, "RoleIDCode", "110152", "DCM", "Destination Role ID")
    else:
        _coded(app, "RoleIDCode", "110150", "DCM", "Application")
    ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source})
    for uid in studies_of(event):
        obj = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": uid,
                "ParticipantObjectTypeCode": "2",  # system object
                "ParticipantObjectTypeCodeRole": "3",  # report (DICOM: a study)
            },
        )
        _coded(obj, "ParticipantObjectIDTypeCode", "110180", "DCM", "Study Instance UID")
    if event.request_ref:
        obj = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": event.request_ref,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "20",  # job
            },
        )
        _coded(obj, "ParticipantObjectIDTypeCode", "request", _LOCAL, "Release request reference")
    return ET.tostring(root, encoding="unicode")


def _header_field(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII, at most ``limit``, or ``-``."""
    cleaned = _NOT_PRINTABLE.sub("", value)[:limit]
    return cleaned or "-"


def syslog_message(
    event: AuditEvent, *, hostname: str, app_name: str, source: str, process: str
) -> bytes:
    """``event`` as one RFC 5424 message (UTF-8, the MSG starting with a BOM)."""
    header = " ".join(
        (
            f"<{PRI}>1",
            _stamp(event),
            _header_field(hostname, 255),
            _header_field(app_name, 48),
            _header_field(process, 128),
            MSGID,
        )
    )
    sd = (
        f'[meta sequenceId="{_sequence(event.id)}"]'
        f'[origin software="courier" swVersion="{__version__}"]'
    )
    xml = audit_xml(event, source=source, process=process)
    return f"{header} {sd} ".encode("ascii") + BOM + xml.encode("utf-8")


def _sequence(row_id: int) -> int:
    # RFC 5424 §7.3.1: 1..2147483647, wrapping to 1.
    return (row_id - 1) % 2147483647 + 1


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 §3.4.1 / RFC 5425 §4.3 framing: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


def event_dict(event: AuditEvent) -> dict[str, Any]:
    """The row as plain data (``courier audit --json``, JSON lines)."""
    kind = KINDS[event.kind]
    return {
        "id": event.id,
        "at": _stamp(event),
        "type": event.kind,
        "event_id": {"code": event.event_id, "meaning": kind.event_name},
        "event_type": (
            {"code": event.event_type, "meaning": kind.type_name} if event.event_type else None
        ),
        "action": event.action,
        "outcome": event.outcome,
        "actor": event.actor,
        "host": event.host or None,
        "request": event.request_ref or None,
        "studies": studies_of(event),
        "detail": event.detail,
    }


def json_line(event: AuditEvent, *, source: str) -> bytes:
    """``event`` as one JSON line (with the node's name as ``source``)."""
    data = {**event_dict(event), "source": source}
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"

"""``courier conformance``: the DICOM Conformance Statement, generated from the code.

Hospitals ask for a conformance statement (PS3.2) before they connect a PACS. One
written by hand goes stale the day a setting, a status code or pydicom's list of
transfer syntaxes changes, so :func:`statement` builds it, in the layout of PS3.2
Annex A, from the tables the node itself runs on:

- the presentation contexts the SCP accepts: :func:`scp.server.storage_contexts`
  (pynetdicom's storage SOP classes, pydicom's transfer syntaxes);
- the statuses and their meanings: :class:`scp.ingest.Status` and the status
  constants of :mod:`scp.commitment_scp`, :mod:`scp.pacs`, :mod:`scp.storescu`, with
  the comment beside each in the source (:func:`commented_codes`);
- the association rejections of :mod:`scp.server`, the limits and their defaults in
  :class:`scp.settings.ScpSettings`, the TLS versions of :mod:`scp.tls`, the audit
  transports of :mod:`node.audit_settings`, the character sets pydicom decodes.

The output is deterministic (no date, no host, nothing from the machine's OpenSSL):
``docs/conformance.md`` is this output, and ``tests/test_conformance.py`` regenerates it
and compares. After a change: run ``courier conformance --write`` (or ``courier
conformance > docs/conformance.md``); the command is :mod:`node.cli_conformance`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, get_args

import pydicom
import pydicom.charset
import pynetdicom
from pydicom.uid import UID
from pynetdicom import _globals
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from node import __version__
from node.audit_settings import DEFAULT_PORTS, SyslogSettings
from scp import commitment_scp, pacs, server, storescu, tls
from scp.commitment_reports import STORAGE_COMMITMENT
from scp.ingest import Status
from scp.settings import ScpSettings

#: Where the statement lives in the repository (``--write`` writes it there).
DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "conformance.md"

# `NAME = 0xABCD  # meaning` (a status code) or `NAME = (0x01, 0x01, 0x03)  # meaning`.
_CODE_LINE = re.compile(r"^\s*([A-Z][A-Z0-9_]*)\s*=\s*\(?0x[0-9A-Fa-f]+[^#]*#\s*(.+?)\s*$")


def commented_codes(
    owner: Any, prefix: str = "", hex_digits: int = 4, exclude: str = "\0"
) -> list[tuple[str, str]]:
    """(code, meaning) for each ``NAME = 0x…  # meaning`` line in ``owner``'s source
    (a module or a class), in source order: the value is read from ``owner`` itself, the
    meaning from the comment the code keeps beside it. Only names starting with
    ``prefix`` and not with ``exclude``, and values written with ``hex_digits`` hex
    digits (4: a DIMSE status, not e.g. an association result 0x01); a tuple is shown
    element by element."""
    digits = re.compile(rf"=\s*\(?0x[0-9A-Fa-f]{{{hex_digits}}}\b")
    out = []
    for line in inspect.getsource(owner).splitlines():
        m = _CODE_LINE.match(line)
        if not m or not digits.search(line):
            continue
        name = m.group(1)
        if not name.startswith(prefix) or name.startswith(exclude):
            continue
        value = getattr(owner, name)
        values = value if isinstance(value, tuple) else (value,)
        code = ", ".join(f"0x{int(v):0{hex_digits}X}" for v in values)
        out.append((code, m.group(2)))
    return out


def _uid_name(uid: str) -> str:
    return UID(uid).name or uid


def _table(head: Iterable[str], rows: Iterable[Iterable[object]]) -> list[str]:
    head = list(head)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return [*lines, ""]


def _default(value: Any) -> str:
    if value is None:
        return "(empty)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _settings_rows(keys: Iterable[str]) -> list[tuple[str, str, str]]:
    fields = ScpSettings.model_fields
    defaults = ScpSettings()
    return [
        (
            f"`scp.{k}`",
            str(getattr(defaults, k)) if "port" in k else _default(getattr(defaults, k)),
            fields[k].description or "",
        )
        for k in keys
    ]


def _transfer_syntax_groups() -> list[tuple[list[str], list[str]]]:
    """The SCP's presentation contexts grouped by their transfer syntax lists:
    (abstract syntaxes, transfer syntaxes), in the order the SCP offers them."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for cx in server.storage_contexts(commitment=True):
        groups.setdefault(tuple(cx.transfer_syntax), []).append(str(cx.abstract_syntax))
    return [(abstracts, list(syntaxes)) for syntaxes, abstracts in groups.items()]


def statement() -> str:
    """The whole conformance statement, as Markdown."""
    s = ScpSettings()
    contexts = server.storage_contexts(commitment=True)
    storage = [
        str(cx.abstract_syntax)
        for cx in contexts
        if str(cx.abstract_syntax) not in (Verification, STORAGE_COMMITMENT)
    ]
    groups = _transfer_syntax_groups()
    ae = server.build_ae(s)  # what the SCP answers with (nothing listens)
    impl_uid, impl_name = ae.implementation_class_uid, ae.implementation_version_name
    out: list[str] = [
        f"# DICOM Conformance Statement: Courier {__version__}",
        "",
        "<!-- Generated by `courier conformance` from the code's own tables; do not edit.",
        "     After a change: `courier conformance --write`. A test compares. -->",
        "",
        "Layout of DICOM PS3.2 Annex A. Built on "
        f"pynetdicom {pynetdicom.__version__} and pydicom {pydicom.__version__}.",
        "",
        "## 1 Overview",
        "",
        "Courier is a DICOM node that receives studies from a PACS or modality and gives "
        "patients their images by secure link instead of on CD. It stores what it "
        "receives unchanged, answers storage commitment for it, queries and retrieves "
        "from one PACS, and can send studies on to another hospital's DICOM node.",
        "",
        *_table(
            ["SOP Classes", "User of Service (SCU)", "Provider of Service (SCP)"],
            [
                ("**Transfer**", "", ""),
                (f"Storage: {len(storage)} SOP Classes (3.2.1, 3.2.4)", "Yes", "Yes"),
                ("Storage Commitment Push Model", "Yes", "Yes"),
                ("**Query/Retrieve**", "", ""),
                ("Study Root Query/Retrieve Information Model - FIND", "Yes", "No"),
                ("Study Root Query/Retrieve Information Model - MOVE", "Yes", "No"),
                ("**Verification**", "", ""),
                ("Verification", "Yes", "Yes"),
            ],
        ),
        "No Media Storage Application Profile is claimed here (discs written by "
        "`courier export-iso` follow IHE PDI and are described in docs/portal.md).",
        "",
        "## 2 Introduction",
        "",
        "- **Audience**: PACS and network administrators connecting Courier.",
        "- **Remarks**: Courier does not create, change or coerce any received instance: "
        "what it stores, packages and sends on is the bytes it received (the File Meta "
        "Information is its own, and names the sender: (0002,0016) Source and (0002,0017) "
        "Sending Application Entity Title = the calling AE title, (0002,0018) Receiving "
        "Application Entity Title = the called AE title, (0002,0027) Sending Presentation "
        "Address = `dicom:<host>:<port>` of the connection, as PS3.10 7.1.1.1 gives it; "
        "copies that leave the hospital, packages, discs and WADO-RS, go without these "
        "sender elements, every other byte as stored). "
        "Every value below is the shipped default; each is a setting in `node.yaml` (3.4).",
        "",
        "## 3 Networking",
        "",
        "### 3.1 Implementation model",
        "",
        "#### 3.1.1 Application data flow",
        "",
        "```",
        "PACS / modality --C-STORE--> [COURIER SCP] --> durable file + index --> rules",
        "PACS --N-ACTION (commitment)--> [COURIER SCP] --N-EVENT-REPORT--> PACS",
        "[COURIER SCU] --C-FIND/C-MOVE (study root)--> PACS --C-STORE--> [COURIER SCP]",
        "[COURIER SCU] --C-STORE + N-ACTION--> other hospital --N-EVENT-REPORT--> Courier",
        "[COURIER SCU] --C-ECHO--> PACS (`courier pacs echo`, `courier doctor`)",
        "```",
        "",
        "#### 3.1.2 Functional definition of the Application Entity",
        "",
        f"One AE title (default `{s.ae_title}`, `scp.ae_title`) for every role. It listens "
        f"on TCP port {s.port} (`scp.port`) and, with TLS configured, on `scp.tls_port`. "
        "A C-STORE is answered 0x0000 only once the instance is written to disk, "
        "fsynced, renamed into place and indexed in a committed database transaction. "
        "As SCU it queries the configured PACS (`pacs:` section) and moves studies to "
        "its own AE title, and sends released studies to another hospital's node.",
        "",
        "#### 3.1.3 Sequencing of real-world activities",
        "",
        "A study is released to a patient only after it is *stable*: no instance for "
        f"`scp.stable_after_s` ({_default(s.stable_after_s)} s). Storage commitment may be "
        "asked at any time after the C-STOREs; its report says what is durably stored "
        "at that moment.",
        "",
        "### 3.2 AE specification: the Courier AE",
        "",
        "#### 3.2.1 SOP classes",
        "",
        *_table(
            ["SOP Class Name", "SOP Class UID", "SCU", "SCP"],
            [
                (_uid_name(Verification), Verification, "Yes", "Yes"),
                (_uid_name(STORAGE_COMMITMENT), STORAGE_COMMITMENT, "Yes", "Yes"),
                (
                    _uid_name(StudyRootQueryRetrieveInformationModelFind),
                    StudyRootQueryRetrieveInformationModelFind,
                    "Yes",
                    "No",
                ),
                (
                    _uid_name(StudyRootQueryRetrieveInformationModelMove),
                    StudyRootQueryRetrieveInformationModelMove,
                    "Yes",
                    "No",
                ),
                *((_uid_name(uid), uid, "Yes", "Yes") for uid in storage),
            ],
        ),
        "As SCU, Storage is used for the SOP classes of the instances being sent on "
        "(whatever was received).",
        "",
        "#### 3.2.2 Association policies",
        "",
        "**General.** Application Context Name "
        f"`{_globals.APPLICATION_CONTEXT_NAME}`. Maximum PDU size received: "
        f"{s.max_pdu_size:,} bytes as SCP (`scp.max_pdu_size`; a peer's PDU longer than "
        "that is refused and the association aborted; DICOM's 0, unlimited, is refused), "
        f"{_globals.DEFAULT_MAX_LENGTH:,} bytes as SCU.",
        "",
        "**Number of associations.** Only established associations count; a connection "
        "still negotiating holds no slot. Over the limit the association is rejected "
        "(transient, local limit exceeded). With `scp.workers` processes each takes its "
        "share of each limit.",
        "",
        *_table(
            ["Setting", "Default", "Meaning"],
            _settings_rows(
                (
                    "max_associations",
                    "reserved_for_allowed",
                    "max_connections_per_host",
                    "max_associate_rq_bytes",
                    "workers",
                    "acse_timeout_s",
                    "network_timeout_s",
                    "idle_timeout_s",
                    "dimse_timeout_s",
                )
            ),
        ),
        "As SCU: one association at a time per pull or send.",
        "",
        "**Asynchronous nature.** Not supported: an Asynchronous Operations Window is "
        "not answered, so one operation is outstanding at a time (window 1/1), as SCP "
        "and as SCU.",
        "",
        "**Implementation identifying information.**",
        "",
        *_table(
            ["Implementation Class UID", "Implementation Version Name"],
            [(impl_uid, impl_name)],
        ),
        "#### 3.2.3 Association initiation policy",
        "",
        "- **Query and pull** (`courier request create … --pull`, `courier pacs find`): "
        "C-FIND at STUDY level (Study Root) on the patient's ID, then C-MOVE of the "
        "chosen studies with Courier's own AE title as the move destination; the "
        "instances arrive on the SCP. Proposed with pynetdicom's default transfer "
        "syntaxes:",
        *(f"  - {_uid_name(ts)} `{ts}`" for ts in _globals.DEFAULT_TRANSFER_SYNTAXES),
        "- **Verification**: C-ECHO to the PACS (`courier pacs echo`, `courier doctor`).",
        "- **Sending on to another hospital**: one presentation context per (SOP class, "
        "transfer syntax) pair exactly as stored (no conversion), at most "
        f"{storescu.MAX_CONTEXTS} per association, plus Storage Commitment Push Model "
        "unless the destination's commitment is off; the N-EVENT-REPORT is accepted on "
        "that association or on a new one to the SCP.",
        "- **Storage commitment reports** (SCP side) on a new association, when the "
        "requester's association is closed: to its AE title at the host and port "
        "listed for it in `scp.allowed_calling_aes`, tried "
        f"`scp.commitment_report_attempts` ({s.commitment_report_attempts}) times, "
        f"waits from `scp.commitment_retry_s` ({_default(s.commitment_retry_s)} s), "
        "doubling.",
        "",
        "Statuses Courier understands as SCU:",
        "",
        *_table(
            ["Operation", "Status", "Meaning (and what Courier does)"],
            [
                *(("C-FIND / C-MOVE", c, m) for c, m in commented_codes(pacs)),
                *(("C-STORE", c, m) for c, m in commented_codes(storescu)),
            ],
        ),
        "Any other C-STORE status is a failure of that instance: it is reported unsent "
        "and the send is retried by the delivery outbox.",
        "",
        "#### 3.2.4 Association acceptance policy",
        "",
        "An association is rejected with the standard reasons (PS3.8 Table 9-21) when:",
        "",
        *_table(
            ["Result, source, reason", "When"],
            commented_codes(server, prefix="REJECT_", hex_digits=2),
        ),
        "- `scp.allowed_calling_aes` empty (the shipped default): any calling AE is "
        "accepted; entries name AE titles, optionally pinned to a host address.",
        f"- `scp.check_called_ae` ({_default(s.check_called_ae)}): the called AE must be "
        "`scp.ae_title`.",
        "",
        "**Presentation contexts accepted.** For each proposed context Courier accepts "
        "the first transfer syntax in the requester's list that it supports; it never "
        "converts. Role selection for Storage Commitment: SCU and SCP roles accepted "
        "(a peer may take the SCP role to bring the report of a commitment Courier "
        "asked for).",
        "",
    ]
    for abstracts, syntaxes in groups:
        if set(abstracts) <= set(storage):
            what = f"Each of the {len(abstracts)} storage SOP classes of 3.2.1"
        else:
            what = " and ".join(f"{_uid_name(a)} (`{a}`)" for a in abstracts)
        out += [f"{what}, as SCP, with any of:", ""]
        out += _table(["Transfer Syntax", "UID"], ((_uid_name(ts), f"`{ts}`") for ts in syntaxes))
    out += [
        "**C-STORE SCP statuses** (the sub-codes are Courier's, within the standard's "
        "ranges, PS3.4 B.2.3). A byte-identical re-send of a stored instance succeeds; "
        "the same SOP Instance UID with other bytes is kept aside and flagged to staff.",
        "",
        *_table(["Status", "Meaning"], commented_codes(Status)),
        "**Storage Commitment Push Model SCP** (PS3.4 Annex J; "
        f"`scp.storage_commitment`: {_default(s.storage_commitment)}). The N-ACTION "
        "(action type 1) is answered at once; each instance is then checked: indexed "
        "under the same SOP class, its file present with the recorded size and, with "
        f"`scp.commitment_verify_digest` ({_default(s.commitment_verify_digest)}), the "
        "recorded SHA-256. The N-EVENT-REPORT (event type "
        f"{commitment_scp.ALL_COMMITTED}: all committed; {commitment_scp.SOME_FAILED}: "
        "failures exist) goes on the same association when it is open and the requester "
        "took the SCU/SCP role there, otherwise on a new association (3.2.3). At most "
        f"{commitment_scp.MAX_REFERENCES:,} references per request.",
        "",
        *_table(
            ["N-ACTION status", "Meaning"],
            commented_codes(commitment_scp, exclude="REASON_")
            + [
                (c, f"{m.removeprefix('N-ACTION: ')} (with `scp.storage_commitment: false`)")
                for c, m in commented_codes(server, prefix="SOP_CLASS")
            ],
        ),
        *_table(
            ["Failure Reason in the report", "Meaning"],
            commented_codes(commitment_scp, prefix="REASON_"),
        ),
        "**Verification SCP**: C-ECHO is answered 0x0000 (Success) on any accepted association.",
        "",
        "### 3.3 Network interfaces",
        "",
        "TCP/IP (IPv4 or IPv6; `scp.host` is the listening address, default "
        f"`{s.host}`). TCP_NODELAY on every accepted socket and on every association "
        "Courier opens. DICOM over TLS on a second port (`scp.tls_port`), same AE, policy "
        "and limits (6.1).",
        "",
        "### 3.4 Configuration",
        "",
        "AE title and port mapping: the SCP's own title and port are `scp.ae_title` and "
        "`scp.port`; the PACS Courier queries is the `pacs:` section (its AE title, "
        "host, port; Courier's calling AE and move destination default to "
        "`scp.ae_title`); another hospital's node is given per request. The PACS must "
        "know Courier's AE title, host and port as a move destination.",
        "",
        "Every `scp:` setting with its default:",
        "",
        *_table(
            ["Setting", "Default", "Meaning"],
            _settings_rows(k for k in ScpSettings.model_fields if k != "allowed_calling_aes"),
        ),
        "`scp.allowed_calling_aes` (default empty: any calling AE): "
        f"{ScpSettings.model_fields['allowed_calling_aes'].description}",
        "",
        "## 4 Media interchange",
        "",
        "Not covered by this statement.",
        "",
        "## 5 Support of character sets",
        "",
        "Every Specific Character Set (0008,0005) defined term below is decoded (by "
        f"pydicom {pydicom.__version__}, including ISO 2022 code extensions) for the "
        "attributes Courier indexes and shows: patient name and ID, birth date, "
        "accession number, study and series description, modality, dates and numbers. "
        "Decoded text is kept as Unicode; control characters and Unicode bidi controls "
        "are removed from the index, and every such value is escaped where it is shown "
        "(web pages, terminals). The instances themselves are never re-encoded. An "
        "unknown term is read with pydicom's default "
        f"(`{pydicom.charset.default_encoding}`). C-FIND queries send only the "
        "patient's ID, in the default repertoire.",
        "",
        *_table(
            ["Defined term", "Decoded as (Python codec)"],
            (
                (f"`{term}`" if term else "(absent: default repertoire)", f"`{codec}`")
                for term, codec in sorted(pydicom.charset.python_encoding.items())
            ),
        ),
        "## 6 Security",
        "",
        "### 6.1 Security profiles",
        "",
        f"- **{(tls.__doc__ or '').splitlines()[0].rstrip('.')}**: TLS "
        f"{' or '.join(sorted(tls._VERSIONS))} as the floor (`scp.tls_min_version`, "
        f"default {s.tls_min_version}), Python's server defaults (no compression, "
        "forward-secret AEAD ciphers at OpenSSL security level 2); client certificates "
        "checked against `scp.tls_ca_file`, required with "
        "`scp.tls_require_client_cert`.",
        "- **Audit Trail Message Format Profile** (PS3.15 A.5): every audited event as "
        "the DICOM audit message (PS3.15 A.5.1), without any patient participant object.",
        "- **Audit Trail Message Transmission**: RFC 5424 syslog over "
        + ", ".join(
            f"{t} (default port {DEFAULT_PORTS[t]})"
            for t in get_args(SyslogSettings.model_fields["transport"].annotation)
        )
        + " (PS3.15 A.6 SYSLOG-TLS, A.7 SYSLOG-UDP), or a JSON-lines file (`audit:`).",
        "",
        "### 6.2 Association level security",
        "",
        "Calling AE allow-list with optional host pinning (`scp.allowed_calling_aes`), "
        "called AE check, association slots reserved for pinned callers, a per-host "
        "connection cap, bounded A-ASSOCIATE-RQ and PDU sizes and timeouts at every "
        "step (3.2.2).",
        "",
        "### 6.3 Application level security",
        "",
        "No patient data in any log line (UIDs, AE titles, addresses and status codes "
        "only; pynetdicom's identifier logging is off). Pixel data declared beyond "
        f"`scp.max_pixels` ({s.max_pixels:,}) is refused before anything decodes it.",
        "",
    ]
    return "\n".join(out).rstrip("\n") + "\n"

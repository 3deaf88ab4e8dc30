"""The ``audit:`` section of node.yaml: where copies of the audit trail are sent.

The trail itself is always kept in the index database (``courier audit`` lists it).
Exporters copy it out: ``syslog`` (RFC 5424 over UDP, TCP or TLS, the DICOM audit
message XML of PS3.15 A.5.1 as each message) and ``jsonl`` (one JSON object per line
appended to a file). Either, both, or none (the default).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")
DEFAULT_PORTS = {"udp": 514, "tcp": 601, "tls": 6514}


class SyslogSettings(BaseModel):
    """An RFC 5424 syslog collector (an IHE ATNA Audit Record Repository)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transport: Literal["udp", "tcp", "tls"] = Field(
        default="tls",
        description="udp (RFC 5426, one message a datagram; no delivery guarantee), tcp "
        "(RFC 6587 octet counting) or tls (RFC 5425, the collector's certificate checked). "
        "Default tls.",
    )
    host: str = Field(min_length=1, max_length=253, description="The collector's address.")
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Empty: 514 for udp, 601 for tcp, 6514 for tls. Default empty.",
    )
    ca_file: Path | None = Field(
        default=None,
        description="tls: PEM file of the CA that signed the collector's certificate, "
        "relative to this file. Empty: the system's trusted CAs. Default empty.",
    )
    cert_file: Path | None = Field(
        default=None,
        description="tls: our client certificate (PEM, relative to this file) for "
        "collectors that authenticate nodes (IHE ATNA). Default empty.",
    )
    key_file: Path | None = Field(
        default=None, description="tls: the private key of cert_file. Default empty."
    )
    app_name: str = Field(
        default="courier",
        max_length=48,
        description="RFC 5424 APP-NAME (printable ASCII, no spaces). Default courier.",
    )
    timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Seconds to connect and to send; a collector slower than this is "
        "retried on the next pass (nothing is lost). Default 10.",
    )

    @field_validator("app_name")
    @classmethod
    def _app_name(cls, v: str) -> str:
        if not _PRINTABLE.match(v):
            raise ValueError("printable ASCII without spaces, e.g. courier")
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not _PRINTABLE.match(v.strip()):
            raise ValueError("a host name or IP address, e.g. audit.hospital.example")
        return v.strip()

    @property
    def effective_port(self) -> int:
        """``port``, or the transport's registered port."""
        return self.port or DEFAULT_PORTS[self.transport]


class JsonlSettings(BaseModel):
    """A JSON-lines file (one event per line, appended, fsynced after each pass)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Field(
        description="The file; relative paths are under node.data_dir (e.g. audit.jsonl)."
    )

    @field_validator("path")
    @classmethod
    def _file(cls, v: Path) -> Path:
        if str(v).strip() in ("", "."):
            raise ValueError("give a file name, e.g. audit.jsonl")
        return v


class AuditSettings(BaseModel):
    """Exporters of the audit trail, and how often they run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    syslog: SyslogSettings | None = Field(
        default=None, description="Send each event to a syslog collector. Default none."
    )
    jsonl: JsonlSettings | None = Field(
        default=None, description="Append each event to a JSON-lines file. Default none."
    )
    ship_interval_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds between passes of the exporters; a failed pass is retried on "
        "the next one, from the first event not yet sent. Default 10.",
    )

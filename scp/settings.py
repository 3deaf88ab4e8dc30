"""The ``scp:`` section of node.yaml: Courier's DICOM Storage SCP."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from store.netaddr import ListenAddress

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII except backslash


def check_ae_title(value: str) -> str:
    """Return ``value`` stripped, or raise ValueError naming what a valid AE title is."""
    stripped = value.strip()
    if not stripped or not _AE_RE.match(value) or len(stripped) > 16:
        raise ValueError(
            f"{value!r} is not an AE title: 1-16 printable ASCII characters, no backslash"
        )
    return stripped


AeTitle = Annotated[str, Field(min_length=1, max_length=16)]


class AllowedPeer(BaseModel):
    """A calling AE title that may associate, optionally pinned to a host address.

    ``port`` is the peer's own DICOM port: Courier needs it (and the host, pinned here or
    the address the association came from) to send a storage commitment report on a new
    association.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ae_title: AeTitle
    host: str | None = Field(
        default=None, description="IP address the association must come from; empty: any."
    )
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="The peer's own DICOM port, for storage commitment reports sent on a "
        "new association. Empty: reports go only on the requesting association.",
    )

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return check_ae_title(v)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address") from None


class ScpSettings(BaseModel):
    """The Storage SCP. Timeouts are in seconds; sizes in bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ae_title: AeTitle = Field(default="COURIER", description="Our AE title (called AE).")
    host: ListenAddress = Field(
        default="127.0.0.1", description="Address to listen on; 0.0.0.0 = all."
    )
    port: int = Field(default=11112, ge=1, le=65535, description="DICOM port.")
    allowed_calling_aes: list[AllowedPeer] = Field(
        default_factory=list,
        description="Who may send. Empty: anyone. Entries: an AE title, or {ae_title, host, port}.",
    )
    check_called_ae: bool = Field(
        default=True, description="Refuse associations whose called AE is not ae_title."
    )
    max_associations: int = Field(
        default=16,
        ge=1,
        le=1000,
        description="Concurrent established associations (over all workers); connections "
        "still negotiating do not count.",
    )
    reserved_for_allowed: int = Field(
        default=4,
        ge=0,
        le=999,
        description="Of max_associations, slots only callers matching an allowed_calling_aes "
        "entry that pins a host may take (at most max_associations - 1). Held only while some "
        "entry pins a host.",
    )
    max_connections_per_host: int = Field(
        default=16,
        ge=1,
        le=1000,
        description="Open TCP connections from one IP address (negotiating or associated, "
        "over all workers); the next is closed at once.",
    )
    max_associate_rq_bytes: int = Field(
        default=262_144,
        ge=4096,
        le=16_777_216,
        description="Largest A-ASSOCIATE-RQ accepted; a longer announcement is closed at once.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Receiving processes (children of the node process, about 80 MB each) "
        "sharing the port (SO_REUSEPORT); 2 uses both cores.",
    )
    fast_store: bool = Field(
        default=True,
        description="Receive C-STORE on Courier's own path (command set and response from "
        "bytes, the dataset streamed to the spool); false: pynetdicom's (slower, same "
        "statuses).",
    )
    stable_after_s: float = Field(
        default=60.0,
        gt=0,
        le=7 * 24 * 3600,
        description="A study is stable when no instance arrived for this long (like StableAge).",
    )
    stability_check_s: float = Field(
        default=5.0, gt=0, le=3600, description="How often to look for studies that are stable."
    )
    max_pdu_size: int = Field(
        default=1_048_576,
        ge=4096,
        le=16_777_216,
        description="Largest PDU we accept; bounds memory per association. DICOM's 0 is refused.",
    )
    network_timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="Time one PDU has to arrive in full."
    )
    idle_timeout_s: float = Field(
        default=60.0,
        ge=1,
        le=3600,
        description="An association that sends no PDU for this long is aborted (slot freed).",
    )
    acse_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="A new connection's time to deliver its whole A-ASSOCIATE-RQ (TLS "
        "handshake included); also association release.",
    )
    dimse_timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="Waiting for the next DIMSE message."
    )
    tls_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Second port that speaks DICOM over TLS (BCP 195), same AE and policy. "
        "Empty: no TLS listener.",
    )
    tls_cert_file: str | None = Field(
        default=None,
        description="Our certificate chain (PEM), relative to node.data_dir or absolute.",
    )
    tls_key_file: str | None = Field(
        default=None,
        description="The certificate's private key (PEM, unencrypted, readable only by the "
        "node), relative to node.data_dir or absolute. The key itself never stands here.",
    )
    tls_ca_file: str | None = Field(
        default=None,
        description="CA certificates (PEM) that client certificates must chain to. Empty: "
        "client certificates are not asked for.",
    )
    tls_require_client_cert: bool = Field(
        default=False,
        description="Refuse TLS clients without a certificate from tls_ca_file.",
    )
    tls_min_version: Literal["1.2", "1.3"] = Field(
        default="1.2", description="Oldest TLS version accepted (BCP 195: never below 1.2)."
    )
    storage_commitment: bool = Field(
        default=True,
        description="Answer Storage Commitment Push Model requests (N-ACTION/N-EVENT-REPORT).",
    )
    commitment_verify_digest: bool = Field(
        default=True,
        description="Re-read each file and compare its SHA-256 before committing it "
        "(false: presence and size only).",
    )
    commitment_report_attempts: int = Field(
        default=5,
        ge=1,
        le=50,
        description="Tries to deliver one commitment report on a new association.",
    )
    commitment_retry_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="Wait before the second try; doubles after each, up to 10 minutes.",
    )
    max_pixels: int = Field(
        default=1_000_000_000,
        ge=1_000_000,
        le=1_000_000_000_000,
        description="Pixel values one instance may declare (Rows x Columns x NumberOfFrames x "
        "SamplesPerPixel); more is refused with 0xC003 before it is stored.",
    )

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return check_ae_title(v)

    @field_validator("tls_min_version", mode="before")
    @classmethod
    def _tls_version(cls, v: object) -> object:
        # YAML reads an unquoted 1.2 as a float.
        return f"{v:.1f}" if isinstance(v, float) else v

    @model_validator(mode="after")
    def _tls(self) -> ScpSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("give tls_cert_file and tls_key_file together, or neither")
        if self.tls_port is not None:
            if self.tls_cert_file is None:
                raise ValueError("tls_port needs tls_cert_file and tls_key_file")
            if self.tls_port == self.port:
                raise ValueError("tls_port must differ from port")
        if self.tls_require_client_cert and self.tls_ca_file is None:
            raise ValueError("tls_require_client_cert needs tls_ca_file (the clients' CA)")
        return self

    @field_validator("allowed_calling_aes", mode="before")
    @classmethod
    def _peers(cls, v: object) -> object:
        # A bare string is shorthand for {ae_title: STRING}.
        if isinstance(v, list):
            return [{"ae_title": x} if isinstance(x, str) else x for x in v]
        return v

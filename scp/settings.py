"""The ``scp:`` section of node.yaml: Courier's DICOM Storage SCP."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
    """A calling AE title that may associate, optionally pinned to a host address."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ae_title: AeTitle
    host: str | None = Field(
        default=None, description="IP address the association must come from; empty: any."
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
        description="Who may send. Empty: anyone. Entries: an AE title, or {ae_title, host}.",
    )
    check_called_ae: bool = Field(
        default=True, description="Refuse associations whose called AE is not ae_title."
    )
    max_associations: int = Field(
        default=16, ge=1, le=1000, description="Concurrent associations (over all workers)."
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Receiving processes sharing the port (SO_REUSEPORT); 2 uses both cores.",
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
        default=60.0, gt=0, le=3600, description="Idle connection, and the time to read one PDU."
    )
    acse_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="Association negotiation and release."
    )
    dimse_timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="Waiting for the next DIMSE message."
    )

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return check_ae_title(v)

    @field_validator("allowed_calling_aes", mode="before")
    @classmethod
    def _peers(cls, v: object) -> object:
        # A bare string is shorthand for {ae_title: STRING}.
        if isinstance(v, list):
            return [{"ae_title": x} if isinstance(x, str) else x for x in v]
        return v

"""The ``pacs:`` section of node.yaml: the PACS Courier queries (C-FIND) and pulls from
(C-MOVE to Courier's own AE). Optional: without it, ``courier pacs`` and
``request create --pull`` refuse with a message naming this section.

Timeouts are in seconds. ``calling_ae_title`` and ``move_destination`` default to the
SCP's own AE title (``scp.ae_title``): the node composes that default
(:func:`with_scp_defaults`), since this package's settings do not know the others'.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from scp.settings import AeTitle, check_ae_title


class PacsSettings(BaseModel):
    """Where the PACS is, who we are to it, how long we wait, and how pulls are retried."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ae_title: AeTitle = Field(description="The PACS's AE title (the called AE).")
    host: str = Field(min_length=1, max_length=253, description="The PACS's address.")
    port: int = Field(ge=1, le=65535, description="The PACS's DICOM port.")
    calling_ae_title: AeTitle | None = Field(
        default=None, description="Our AE title towards the PACS; empty: scp.ae_title."
    )
    move_destination: AeTitle | None = Field(
        default=None,
        description="The AE the PACS sends pulled studies to (C-MOVE destination; the PACS "
        "must know it with Courier's address and port); empty: scp.ae_title.",
    )
    connect_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="TCP connect and association negotiation."
    )
    find_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="Waiting for each C-FIND response."
    )
    move_timeout_s: float = Field(
        default=600.0,
        gt=0,
        le=24 * 3600,
        description="Waiting for each C-MOVE response (the PACS answers after sending "
        "each instance, or only at the end: allow for a whole study).",
    )
    max_attempts: int = Field(
        default=5, ge=1, le=50, description="C-MOVE attempts per study before staff are told."
    )
    retry_backoff_s: float = Field(
        default=30.0, gt=0, le=24 * 3600, description="Wait before the 2nd attempt; doubles."
    )
    retry_backoff_max_s: float = Field(
        default=1800.0, gt=0, le=7 * 24 * 3600, description="Longest wait between attempts."
    )

    @field_validator("ae_title", "calling_ae_title", "move_destination")
    @classmethod
    def _ae(cls, v: str | None) -> str | None:
        return None if v is None else check_ae_title(v)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        v = v.strip()
        if not v or any(c.isspace() or c in "/\\@" for c in v):
            raise ValueError(f"{v!r} is not a host name or IP address")
        return v

    @model_validator(mode="after")
    def _backoff_bounds(self) -> PacsSettings:
        if self.retry_backoff_max_s < self.retry_backoff_s:
            raise ValueError(
                "retry_backoff_max_s must be at least retry_backoff_s "
                f"({self.retry_backoff_max_s:g} < {self.retry_backoff_s:g})"
            )
        return self

    @property
    def calling(self) -> str:
        """Our calling AE title (set once composed with the SCP's)."""
        return self.calling_ae_title or "COURIER"

    @property
    def destination(self) -> str:
        """The C-MOVE destination AE title (set once composed with the SCP's)."""
        return self.move_destination or "COURIER"

    def backoff_s(self, attempts: int) -> float:
        """Wait after ``attempts`` failed attempts: ``retry_backoff_s * 2**(attempts-1)``,
        at most ``retry_backoff_max_s``."""
        exponent = min(max(attempts, 1) - 1, 30)
        return float(min(self.retry_backoff_max_s, self.retry_backoff_s * 2**exponent))


def with_scp_defaults(data: Any, scp_ae_title: Any) -> Any:
    """``data`` (the raw ``pacs:`` mapping) with empty AE titles defaulting to
    ``scp_ae_title``; anything else is returned unchanged for validation to report."""
    if not isinstance(data, dict) or not isinstance(scp_ae_title, str):
        return data
    out = dict(data)
    for key in ("calling_ae_title", "move_destination"):
        if out.get(key) in (None, ""):
            out[key] = scp_ae_title
    return out

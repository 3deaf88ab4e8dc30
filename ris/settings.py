"""The ``ris:`` section of node.yaml: the HL7 v2 (MLLP) listener for radiology reports."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from store.netaddr import ListenAddress

AccessionField = Literal["OBR-2", "OBR-3", "OBR-18", "OBR-19", "OBR-20"]


class RisSettings(BaseModel):
    """Where Courier listens for the RIS's ``ORU^R01`` reports (docs/ris.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        default=False,
        description="Listen for HL7 v2 ORU^R01 reports over MLLP (off: no port opened).",
    )
    host: ListenAddress = Field(
        default="127.0.0.1",
        description="Address to listen on; 127.0.0.1 unless the RIS is on another host.",
    )
    port: int = Field(default=2575, ge=0, le=65535, description="MLLP port (2575: HL7's own).")
    accession_field: AccessionField = Field(
        default="OBR-3",
        description="The OBR field holding the accession number (first component): "
        "OBR-3 filler order number, or OBR-18 placer field 1, as the RIS sends it.",
    )
    max_message_bytes: int = Field(
        default=5_000_000,
        ge=10_000,
        le=100_000_000,
        description="A larger message is answered AR and dropped (a base64 PDF is 4/3 of the PDF).",
    )
    default_charset: Literal["utf-8", "latin-1", "ascii"] = Field(
        default="utf-8",
        description="How a message without MSH-18 is decoded.",
    )
    idle_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="A connection silent this long (mid-message or between messages) is closed.",
    )
    max_connections: int = Field(
        default=8, ge=1, le=256, description="Concurrent MLLP connections accepted."
    )
    application: str = Field(
        default="COURIER",
        max_length=40,
        pattern=r"^[A-Za-z0-9 ._-]+$",
        description="MSH-3 of Courier's ACKs (sending application).",
    )

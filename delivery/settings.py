"""The ``delivery:`` section of node.yaml (what exists so far: request deadlines)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DeliverySettings(BaseModel):
    """Delivery timing. Hours are wall-clock hours from the request's creation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    overdue_after_h: float = Field(
        default=72.0,
        gt=0,
        le=24 * 365,
        description="A request still missing studies this long after creation is overdue: "
        "staff are alerted and it becomes a CD candidate.",
    )

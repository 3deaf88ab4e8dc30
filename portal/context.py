"""Everything the portal's pages need, built once by the node and handed to ``create_app``.

The pages (patient, clinician, staff) read and change grants, sessions and requests in
the database, queue messages in the outbox (codes, "your shared link was used"), and
stream packages from ``package_dir``. With the content store (``content``), a request's
studies can also be downloaded one by one (see :mod:`portal.studyzip`); without it,
only the package is offered. The clock and the rate limiter are injected so tests
control time and limits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from delivery.grants import GrantKeys
from delivery.outbox import Outbox
from delivery.settings import DeliverySettings
from portal.ratelimit import RateLimiter
from portal.settings import PortalSettings
from release.requests import RequestBook
from store.content import ContentStore
from store.models import utcnow


@dataclass
class PortalContext:
    """The portal's dependencies (one per app)."""

    sessions: sessionmaker[Session]
    keys: GrantKeys
    outbox: Outbox
    delivery: DeliverySettings
    portal: PortalSettings
    package_dir: Path
    hospital: str = "Courier"
    clock: Callable[[], datetime] = utcnow
    limiter: RateLimiter = field(default_factory=RateLimiter)
    content: ContentStore | None = None  # the stored instances (per-study downloads)

    @property
    def book(self) -> RequestBook:
        """The request book on the same sessions and clock."""
        return RequestBook(self.sessions, self.clock)

    @property
    def contact(self) -> str:
        """Who patients contact (``delivery.contact``), or a generic line."""
        return self.delivery.contact

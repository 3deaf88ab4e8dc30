"""Everything the portal's pages need, built once by the node and handed to ``create_app``.

The pages (patient, clinician, staff) read and change grants, sessions and requests in
the database, queue messages in the outbox (codes, "your shared link was used"), and
stream packages from ``package_dir``. With the content store (``content``), a request's
studies can also be downloaded one by one (see :mod:`portal.studyzip`); without it,
only the package is offered. The clock and the rate limiter are injected so tests
control time and limits.

With a PACS, the New request page also lists the patient's studies on it
(``pacs_find``, a C-FIND waited for at most ``pacs_timeout_s``) and a request made
with some of them queues their pulls (``queue_pulls(request_id, [(study_uid,
expected_instances), ...])``, idempotent, returns how many were new). Both are None
without a ``pacs:`` section, and the page then offers no PACS.
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
from portal.staff_studies import PacsFind
from release.phonepolicy import PhonePolicy
from release.reports import studies_with_reports, withheld_for_request
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
    pacs_find: PacsFind | None = None  # the patient's studies on the PACS (C-FIND)
    queue_pulls: Callable[[int, list[tuple[str, int | None]]], int] | None = None
    pacs_timeout_s: float = 60.0  # the longest a page waits for pacs_find
    phones: PhonePolicy = field(default_factory=PhonePolicy)  # who may get SMS
    # identity.check: False puts a permanent banner on the staff dashboard.
    identity_check: bool = True
    # store.retention_days: "Ask for more time" does not reopen a request whose studies
    # are purged or about to be (portal.more_time); None: that purge is not counted.
    retention_days: int | None = None
    # The request's studies whose policy is reports: with_images (the node passes its
    # rules-aware one); None: delivery.reports alone, as for a study staff attached.
    report_studies: Callable[[Session, int], list[str]] | None = None
    # The viewer's audits already recorded in this process, (request id, reason): no
    # database query per image (portal.viewer._audit_view; cleared when large).
    viewed: set[tuple[int, str]] = field(default_factory=set)

    def withheld(self, s: Session, request_id: int) -> set[int]:
        """The request's report instances the recipient may not see (viewer, DICOMweb,
        per-study download): :func:`release.reports.withheld_for_request`."""
        return withheld_for_request(s, request_id, self.report_studies_of(s, request_id))

    def report_studies_of(self, s: Session, request_id: int) -> list[str]:
        """``report_studies``, or ``delivery.reports`` alone without it."""
        if self.report_studies is not None:
            return self.report_studies(s, request_id)
        return studies_with_reports(s, request_id, None, self.delivery.reports)

    @property
    def book(self) -> RequestBook:
        """The request book on the same sessions and clock."""
        return RequestBook(self.sessions, self.clock, phones=self.phones)

    @property
    def contact(self) -> str:
        """Who patients contact (``delivery.contact``), or a generic line."""
        return self.delivery.contact

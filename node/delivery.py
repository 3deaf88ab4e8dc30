"""Delivery in the running node: the batch, the scheduler and the outbox relay, wired.

``DeliveryService`` is built once in ``courier serve`` (and by ``courier deliver``):

- at start, packaging interrupted by a crash is swept and its requests go back to
  ``ready``, and what interrupted disc image writes left (the image and its offline
  viewer's spool) is removed (:func:`delivery.disc_images.sweep_leftovers`, run by the
  sweep job too, for a killed writer's claim that outlived the start); then the
  scheduler starts (nightly window, urgent path, sweeps) and catches up a missed night;
- the relay runs in its own thread with its own asyncio loop (the channels are async),
  polling the outbox every ``RELAY_POLL_S``;
- the sweep job expires requests whose links ran out and deletes their packages
  ``delivery.purge_grace_days`` later;
- the reminders job queues one reminder per link about to expire with nothing
  downloaded (:mod:`delivery.reminders`);
- the release policy (:class:`release.embargo.ReleaseKeeper`, ``keeper``) holds ready
  requests (an embargo, the wait for the final report): the batch's claim asks its
  gate, the worker's sweeps apply it as requests become ready;
- requests to a DICOM destination go out through :func:`scp.storescu.attempt` as
  Courier's AE title. A storage-commitment report reaches the sender either way the
  peer sends it: on the sending association, or on a new association to the main SCP
  (Orthanc does this), whose receiving processes record it in the database
  (:class:`scp.commitment.ReportBook`) while the sender polls for its Transaction UID,
  up to its commitment timeout. A report that comes later is applied when the
  request's next attempt starts (see :mod:`delivery.dicomsend`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import cast

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from delivery.batch import DeliveryBatch
from delivery.channel import Channel, build_channels
from delivery.compose import Branding, Composer
from delivery.dicomsend import AttemptReport, DicomDelivery, Target
from delivery.disc_images import sweep_leftovers
from delivery.grants import GrantKeys, load_secret
from delivery.outbox import Outbox
from delivery.packaging.package import PackageItem
from delivery.relay import Relay, RetryPolicy
from delivery.reminders import send_reminders
from delivery.report_updates import ReportUpdates
from delivery.schedule import DeliveryScheduler
from delivery.smsbreaker import SmsBreaker
from imaging import RenderLimits
from node.config import Config
from node.pulls import PullQueue, Wanted
from portal.context import PortalContext
from portal.staff_studies import PacsLookupFailed, PacsStudy
from release.embargo import RULE_MISSING, ReleaseKeeper, Verdict
from release.phonepolicy import PhonePolicy
from release.reports import studies_with_reports
from release.requests import RequestBook
from rules.matcher import RuleSet
from scp.commitment import CommitmentReports, ReportBook
from scp.pacs import PacsError, find_studies
from scp.pacs_settings import PacsSettings
from scp.storescu import ScuSettings, attempt
from store.catalog import guarded
from store.claims import turn
from store.content import ContentStore
from store.models import ReleaseRequest, utcnow

log = logging.getLogger("courier.node.delivery")

#: The periodic disc-leftover sweep leaves what changed in this many seconds (a write in
#: progress whose claim's lease ran out keeps changing its files).
DISC_QUIET_S = 600.0
RELAY_POLL_S = 1.0


def message_domain(cfg: Config) -> str:
    """The right-hand side of our Message-IDs: the sender's domain."""
    return cfg.email.from_address.rpartition("@")[2] or "courier.invalid"


class DeliveryService:
    """Owns the batch, the scheduler and the relay thread of one node."""

    def __init__(
        self,
        cfg: Config,
        sessions: sessionmaker[Session],
        content: ContentStore,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.cfg = cfg
        self._sessions = sessions
        self._content = content
        self._clock = clock
        # This run's start (built before the web app serves): a disc image's leftovers
        # older than it are an earlier run's, swept in start().
        self._started = time.time()
        d = cfg.delivery
        self.book = RequestBook(sessions, clock)
        self.keys = GrantKeys(load_secret(cfg.data_dir / "secret.key"))
        self.outbox = Outbox(domain=message_domain(cfg), staff_email=d.staff_email, clock=clock)
        self.package_dir = d.packages_path(cfg.data_dir)
        # Same-association reports in process; new-association ones through the
        # database, written by the receiving processes (scp.server).
        self.commitment_reports = CommitmentReports(ReportBook(sessions))
        scu = ScuSettings(calling_ae_title=cfg.scp.ae_title)

        def send(
            target: Target, items: Sequence[PackageItem], commit_also: Sequence[PackageItem]
        ) -> AttemptReport:
            return attempt(
                target,
                items,
                settings=scu,
                commit_also=commit_also,
                reports=self.commitment_reports,
            )

        self.dicom = DicomDelivery(
            sessions,
            content,
            self.book,
            self.outbox,
            send,
            clock=clock,
            report_studies=self.report_studies,  # report instances: the package's rule
        )
        # The running rules' release: blocks; a worker's Sweeps points this at its
        # hot-reloaded rulebook.
        self.rules: Callable[[], RuleSet | None] = lambda: cfg.ruleset
        self.keeper = ReleaseKeeper(
            sessions,
            self.book,
            rules=lambda: self.rules(),
            default=d.release,
            zone=d.timezone,
            clock=clock,
            on_staff_hold=self.release_held_alert,
            on_expected=self.release_expected_email,
        )
        self.batch = DeliveryBatch(
            sessions,
            content,
            self.book,
            self.outbox,
            self.keys,
            self.package_dir,
            contact=d.contact,
            max_part_bytes=d.max_package_mb * 1_000_000 if d.max_package_mb else None,
            preview_limits=RenderLimits(
                d.preview_max_pixels, d.preview_memory_mb, d.preview_timeout_s
            ),
            viewer=d.offline_viewer_options(),
            purge_grace_days=d.purge_grace_days,
            clock=clock,
            dicom=self.dicom,
            gate=self.keeper.gate,  # the release policy: embargo, wait for the report
            report_studies=self.report_studies,  # delivery.reports and rules' reports:
        )
        # A report after delivery: a new part and an email (run by the worker's sweep).
        self.report_updates = ReportUpdates(
            sessions, content, self.outbox, self.package_dir, self.report_studies, clock=clock
        )
        self.composer = Composer(
            self.keys,
            Branding(
                public_url=cfg.portal.public_url,
                hospital=cfg.hospital_name,
                sms_sender=cfg.sms.sender_name,
                contact=d.contact,
            ),
            clock,
        )
        self.policy = RetryPolicy(d.retry_base_s, d.retry_cap_s, d.max_attempts)
        self.phones = PhonePolicy(frozenset(cfg.sms.allowed_countries))
        self.scheduler: DeliveryScheduler | None = None
        self._stop = threading.Event()
        self._relay_thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Recover interrupted packaging, start the scheduler and the relay thread."""
        moved = self.batch.recover()
        if moved:
            log.warning("%d request(s) were mid-packaging at start: back to ready", len(moved))
        self._sweep_disc_leftovers(self._started, periodic=False)
        self.scheduler = DeliveryScheduler(
            self.cfg.delivery,
            batch=lambda: self.batch.run(job="batch"),
            urgent=lambda: self.batch.run(urgent_only=True),
            sweep=self.expire,
            last_batch_at=lambda: self.batch.last_run("batch"),
            reminders=self.remind,
        )
        self.scheduler.start()
        self._relay_thread = threading.Thread(
            target=self._relay_main, name="courier-relay", daemon=True
        )
        self._relay_thread.start()

    def stop(self) -> None:
        """Stop triggering, let a running batch finish, stop the relay."""
        self._stop.set()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
        if self._relay_thread is not None:
            self._relay_thread.join(30)

    def make_relay(self) -> tuple[Relay, Callable[[], object]]:
        """A relay over fresh channels (build it inside the loop that will run it) and
        the coroutine factory that closes them."""
        email, sms = build_channels(self.cfg.email, self.cfg.sms, self.cfg.data_dir, os.environ)
        relay = Relay(
            self._sessions,
            self.outbox,
            {"email": cast(Channel, email), "sms": cast(Channel, sms)},
            self.composer,
            self.book,
            policy=self.policy,
            clock=self._clock,
            phones=self.phones,
            breaker=SmsBreaker(self.cfg.sms.max_per_hour, self.outbox, clock=self._clock),
        )

        async def close() -> None:
            for ch in (email, sms):
                with contextlib.suppress(Exception):
                    await ch.aclose()

        return relay, close

    def _relay_main(self) -> None:
        asyncio.run(self._relay_loop())

    async def _relay_loop(self) -> None:
        relay, close = self.make_relay()
        try:
            while not self._stop.is_set():
                try:
                    await relay.run_once()
                except Exception as exc:  # the relay must outlive any one failure
                    log.error("outbox relay pass failed (%s)", type(exc).__name__)
                await asyncio.sleep(RELAY_POLL_S)
        finally:
            await close()  # type: ignore[misc]

    async def drain(self, rounds: int = 3) -> int:
        """Send what is due now (``courier deliver --now``); returns how many were sent."""
        relay, close = self.make_relay()
        sent = 0
        try:
            for _ in range(rounds):
                n = await relay.run_once()
                sent += n
                if not n:
                    break
        finally:
            await close()  # type: ignore[misc]
        return sent

    def portal_context(self) -> PortalContext:
        """What the portal's pages need, sharing this service's keys and outbox; with a
        ``pacs:`` section, the New request page's C-FIND and pull queue too."""
        pacs = self.cfg.pacs
        return PortalContext(
            sessions=self._sessions,
            keys=self.keys,
            outbox=self.outbox,
            delivery=self.cfg.delivery,
            portal=self.cfg.portal,
            package_dir=self.package_dir,
            hospital=self.cfg.hospital_name,
            clock=self._clock,
            content=self._content,
            pacs_find=None if pacs is None else _pacs_find(pacs),
            queue_pulls=None if pacs is None else _queue_pulls(self._sessions, pacs, self._clock),
            pacs_timeout_s=60.0 if pacs is None else _pacs_wait_s(pacs),
            phones=self.phones,
            identity_check=self.cfg.identity.check,
            retention_days=self.cfg.store.retention_days,
            report_studies=self.report_studies,  # report instances: the package's rule
        )

    # -- sweeps -------------------------------------------------------------------------

    def expire(self) -> list[str]:
        """The sweep job: requests whose link ran out become ``expired`` (packages
        deleted), a missed night is caught up (a machine that slept through the
        window longer than the misfire grace delivers as soon as it wakes), and what
        interrupted disc image writes left is removed once no live claim covers it."""
        with turn(self._sessions.kw["bind"], "expire") as mine:  # one node at a time
            expired = self.batch.expire() if mine else []
        if self.scheduler is not None:
            self.scheduler.catch_up()
        # What a disc writer killed mid-way left, once its claim lapsed (on a shared
        # database the start-up sweep keeps it while the claim holds). Every node may
        # run it: live claims are kept, and so is whatever changed in the last
        # DISC_QUIET_S (a write outliving its claim's lease still writes, so its files
        # keep changing).
        self._sweep_disc_leftovers(time.time() - DISC_QUIET_S, periodic=True)
        return expired

    def _sweep_disc_leftovers(self, started: float, *, periodic: bool) -> None:
        try:
            sweep_leftovers(
                self._sessions, self._content, started, clock=self._clock, periodic=periodic
            )
        except OSError as exc:  # the folder unreadable: the next sweep tries again
            log.warning("disc images: leftovers not swept (%s)", type(exc).__name__)

    def remind(self) -> int:
        """The reminders job: one reminder per link about to expire with nothing
        downloaded (delivery.reminders claims each: every node may run it)."""
        return send_reminders(self._sessions, self.outbox, self.cfg.delivery, self._clock)

    def rules_failed(self) -> None:
        """Alert staff that a rules reload failed (the running rules stay in force)."""
        with guarded(self._sessions) as s, s.begin():
            self.outbox.alert(s, "rules_reload_failed", reference=None, request_id=None)

    def report_studies(self, s: Session, request_id: int) -> list[str]:
        """The request's studies whose reports go in its package (``delivery.reports``,
        overridden by the rule that attached each study)."""
        return studies_with_reports(s, request_id, self.rules(), self.cfg.delivery.reports)

    def release_held_alert(self, s: Session, req: ReleaseRequest) -> None:
        """Keeper hook: the release policy holds the request for staff (the final report
        did not come in time and the policy says ``hold_for_staff``, or a study's rule no
        longer exists: each its own alert); queued in the transaction that holds it."""
        kind = "release_rule_missing" if req.hold_kind == RULE_MISSING else "release_held"
        self.outbox.alert(s, kind, reference=req.reference, request_id=req.id)

    def release_expected_email(self, s: Session, req: ReleaseRequest, verdict: Verdict) -> None:
        """Keeper hook: tell the patient when to expect the link (staff asked for it at
        request time); queued in the transaction that first holds the request."""
        assert verdict.until is not None
        self.outbox.enqueue(
            s,
            kind="release_expected_email",
            channel="email",
            recipient=req.recipient_email,
            language=req.language,
            params={
                "until": verdict.until.isoformat(),
                "zone": self.cfg.delivery.timezone,
                "wait": verdict.kind,
            },
            request_id=req.id,
        )

    def overdue_alert(self, s: Session, req: ReleaseRequest) -> None:
        """Matcher hook: queue the overdue alert in the transaction of the move."""
        self.outbox.alert(s, "overdue", reference=req.reference, request_id=req.id)


def _pacs_find(settings: PacsSettings) -> Callable[[str], list[PacsStudy]]:
    """The portal's view of :func:`scp.pacs.find_studies` (its errors as the portal's)."""

    def find(patient_id: str) -> list[PacsStudy]:
        try:
            hits = find_studies(settings, patient_id)
        except PacsError as exc:
            raise PacsLookupFailed(str(exc)) from None
        except ValueError as exc:  # wildcards or backslashes in the Patient ID
            raise PacsLookupFailed(f"Patient ID: {exc}") from None
        return [
            PacsStudy(
                h.study_uid, h.study_date, h.description, h.modalities, h.accession, h.instances
            )
            for h in hits
        ]

    return find


def _pacs_wait_s(settings: PacsSettings) -> float:
    """The longest a page waits for a C-FIND: the TCP connect, the association, then the
    answers (pynetdicom bounds each of these on its own; this bounds the whole)."""
    return 2 * settings.connect_timeout_s + settings.find_timeout_s


def _queue_pulls(
    sessions: sessionmaker[Session], settings: PacsSettings, clock: Callable[[], datetime]
) -> Callable[[int, list[tuple[str, int | None]]], int]:
    """Queue a request's pulls as ``request create --pull`` does (:meth:`PullQueue.enqueue`)."""
    queue = PullQueue(sessions, settings, clock=clock)

    def queue_pulls(request_id: int, studies: list[tuple[str, int | None]]) -> int:
        return queue.enqueue(request_id, [Wanted(uid, n) for uid, n in studies])

    return queue_pulls


def pending_references(sessions: sessionmaker[Session], state: str) -> list[str]:
    """References of the requests in ``state`` (for the CLI)."""
    with guarded(sessions) as s:
        return list(
            s.scalars(select(ReleaseRequest.reference).where(ReleaseRequest.state == state))
        )

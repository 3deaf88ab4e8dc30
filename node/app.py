"""Composition root: build everything once at start-up, run, stop cleanly.

``Node`` wires the store (engine, migrations, content store, catalog), the web app, the
sweeps, the delivery scheduler, the RIS listener and the audit shipping, and starts the
Storage SCP in ``scp.workers`` receiving processes of its own (:mod:`node.receiver`,
supervised by :class:`node.receivers.Receivers`) listening on one port: one Python
process cannot use more than one core for DIMSE decoding, and a receiving process
imports only what receiving needs, so it stays small. This process never imports the
SCP's server side. Recovery and migrations run once, here, before any receiver starts.

Several nodes may share one PostgreSQL database and one data directory, each with a
role (``courier serve --role``, see :data:`ROLES`): ``scp`` receives (and recovers the
spool at start), ``web`` serves the portal and API, ``worker`` runs the sweeps, the
delivery scheduler and batch and the outbox relay; ``all`` (the default, and the only
role SQLite allows) is all three. Work is claimed row by row (:mod:`store.claims`); the
periodic sweeps run on one worker at a time (an advisory lock per round: whichever node
gets there first). Migrations wait for an advisory lock; packaging interrupted by a dead
node is recovered by any live worker (see :meth:`delivery.batch.DeliveryBatch.recover`);
with a shared database each node receives into its own ``spool/<node.name>`` and sweeps
only that at start.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Literal, get_args

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from delivery.discs import DiscQueue
from node import banner, runlock
from node.auditlog import AuditRun
from node.config import Config, ConfigError
from node.delivery import DeliveryService
from node.logs import TEXT_FORMAT as TEXT_FORMAT  # re-exported: its home was here
from node.logs import setup_logging as setup_logging  # re-exported: its home was here
from node.pulls import PullQueue, PullWorker
from node.receivers import ReceiverError, Receivers
from node.rulebook import Rulebook
from node.status import StatusFile
from node.stores import METRICS_DIR as METRICS_DIR  # re-exported: its home was here
from node.stores import metrics_dir, rules_record, shared_database, status_path, store_url
from node.stores import open_store as open_store  # re-exported: its home was here
from node.web import WebServer
from release.matching import Matcher
from release.purge import Purger
from release.requests import RequestBook
from ris.dicom import DicomReports
from ris.reports import ReportBook
from ris.server import RisServer
from scp.recovery import recover
from scp.stability import StabilitySweep
from scp.tls import TlsSetupError, server_context
from store.catalog import Catalog
from store.claims import turn
from store.content import ContentStore
from store.errors import StoreError
from telemetry import metrics

log = logging.getLogger("courier.node")


#: How often the node process looks at the rules files (as :class:`Rulebook` does).
RULES_CHECK_S = 1.0

Role = Literal["all", "scp", "web", "worker"]
#: What each role runs (``courier serve --role``).
ROLES: tuple[Role, ...] = get_args(Role)


@dataclass
class Node:
    """A running node; ``stop()`` ends it. ``role`` says what it runs (:data:`ROLES`)."""

    cfg: Config
    stop_event: threading.Event = field(default_factory=threading.Event)
    port: int | None = None
    rulebook: Rulebook | None = None
    receivers: Receivers | None = None
    role: Role = "all"

    def reload_rules(self) -> None:
        """SIGHUP: reload the rules here; the receiving processes take up the version
        accepted here as soon as it is (:meth:`run` tells them)."""
        if self.rulebook is not None:
            self.rulebook.reload_requested.set()

    def run(self) -> None:
        """Start what the role runs (SCP, web, worker) and sweep until stopped.

        Raises :class:`node.runlock.NodeRunning` at once when this node already runs."""
        lock = runlock.take(self.cfg, store_url(self.cfg))  # before anything is touched
        try:
            self._run()
        finally:
            runlock.release(lock)

    def _run(self) -> None:
        receives = self.role in ("all", "scp")
        works = self.role in ("all", "worker")
        if self.role != "all" and not shared_database(store_url(self.cfg)):
            raise ConfigError(
                [
                    f"{self.cfg.source}: --role {self.role} needs a PostgreSQL database "
                    "shared by the nodes (store.database_url); SQLite is one node: "
                    "run `courier serve` (role all)"
                ]
            )
        if receives:
            try:  # unreadable TLS files stop the node here, before anything listens
                server_context(self.cfg.scp, self.cfg.data_dir)
            except TlsSetupError as exc:
                raise ConfigError([f"{self.cfg.source}: {exc}"]) from None
        engine, sessions, content = open_store(self.cfg)
        # Before any receiver starts: they count into this folder too (telemetry.metrics).
        metrics.configure(metrics_dir(self.cfg, store_url(self.cfg)), clear=True)
        # This process leads the rules: it loads them, the sweeps match with them, it
        # reports reload errors (status, staff alert), and it records the version it
        # accepted, which the receivers take up (node.rulebook): one version in force.
        self.rulebook = Rulebook(
            self.cfg, role="lead", record=rules_record(self.cfg, store_url(self.cfg))
        )
        receivers = None
        if receives:
            with turn(engine, "spool-recovery") as mine:
                if mine:  # a node starting at the same moment does it otherwise
                    recover(content, sessions, Catalog(sessions))
                else:
                    # Its own spool is this node's alone (spool/<node.name> with a shared
                    # database): its leftovers go at every start, whoever re-indexes.
                    content.sweep_spool()
            assert self.cfg.source is not None, "load the config from a file"
            receivers = self.receivers = Receivers(
                self.cfg.source, self.cfg.scp.workers, port=self.cfg.scp.port
            )
            try:
                receivers.start(self.stop_event)
            except ReceiverError:
                engine.dispose()
                raise
            self.port = self.cfg.scp.port
        log.info("node %s ready role=%s scp_port=%s", self.cfg.node.name, self.role, self.port)
        delivery = DeliveryService(self.cfg, sessions, content)
        web = None
        if self.cfg.portal.enabled and self.role in ("all", "web"):
            web = WebServer(self.cfg, sessions, delivery.portal_context())
            web.start()
            log.info("web app listening port=%d", self.cfg.portal.port)
        ris = None
        if receives and self.cfg.ris.enabled:  # the RIS's reports (HL7 ORU^R01 over MLLP)
            ris = RisServer(self.cfg.ris, ReportBook(sessions, content))
            try:
                ris.start()
            except OSError as exc:
                raise ConfigError(
                    [f"{self.cfg.source}: ris.port {self.cfg.ris.port}: {exc.strerror}"]
                ) from None
            log.info("RIS MLLP listener port=%d", ris.port)
        banner.announce(self.cfg, self.role, self.port if receives else None, sessions)
        rulebook = self.rulebook
        sweeps: Sweeps | None = None
        pulls = None
        audit = None
        if works:
            delivery.start()
            sweeps = Sweeps(self.cfg, engine, sessions, content, rulebook, delivery)
            # C-MOVEs from the PACS (request create --pull) on a thread of their own: a
            # long move must not hold up stability and matching of what it sends.
            if self.cfg.pacs is not None:
                pulls = PullWorker(
                    PullQueue(sessions, self.cfg.pacs), self.cfg.scp.stability_check_s
                )
                pulls.start()
        audit = AuditRun(self.cfg, sessions)
        audit.start()
        alerted_error: str | None = None
        status = StatusFile(status_path(self.cfg, store_url(self.cfg)))
        web_port = self.cfg.portal.port if web is not None else None
        round_s = self.cfg.scp.stability_check_s
        # The rules are looked at about once a second (the receivers look for the
        # version accepted here as often), so the status and the staff alert follow
        # what they apply; the sweeps and the status heartbeat come every
        # stability_check_s.
        tick_s = min(round_s, RULES_CHECK_S)
        next_round = time.monotonic() + round_s
        written: tuple[int, str | None] | None = None
        written_at = 0.0
        died: tuple[int, int] | None = None
        accepted = rulebook.digest  # the receivers read it at their start
        try:
            while True:
                rules = rulebook.current()  # notices a changed rules file or a SIGHUP
                if rulebook.digest != accepted:  # a new version: the receivers take it up
                    accepted = rulebook.digest
                    if receivers is not None:
                        receivers.reload_rules()
                if rulebook.last_error and rulebook.last_error != alerted_error:
                    try:
                        delivery.rules_failed()  # staff hear of it once per new error
                        alerted_error = rulebook.last_error
                    except StoreError as exc:
                        log.warning("rules alert not queued: %s", exc)
                state = (len(rules), rulebook.last_error)
                if state != written or time.monotonic() - written_at >= round_s:
                    status.write(
                        scp_port=self.port,
                        web_port=web_port,
                        rules_count=state[0],
                        rules_error=state[1],
                    )
                    written, written_at = state, time.monotonic()
                if self.stop_event.wait(max(0.0, min(tick_s, next_round - time.monotonic()))):
                    break
                if time.monotonic() >= next_round:
                    next_round = time.monotonic() + round_s
                    if sweeps is not None:
                        sweeps.run()
                if self.stop_event.is_set():
                    # A stop asked for meanwhile (systemctl stop also signals the
                    # receivers, which exit 0): not a receiver dying.
                    break
                for pid, code in receivers.dead() if receivers is not None else ():
                    log.error("receiving process %d exited (%s); stopping", pid, code)
                    died = died or (pid, code)
                    self.stop_event.set()
        finally:
            if pulls is not None:
                pulls.stop()
            delivery.stop()
            if ris is not None:
                ris.stop()
            status.clear()
            if web is not None:
                web.stop()
            if receivers is not None:
                receivers.stop()
            audit.stop()
            engine.dispose()
            log.info("node stopped")
        if died is not None:
            # Not a clean stop: exit 1, so a supervisor (systemd Restart=on-failure)
            # starts the node again, and start-up recovery indexes what it left.
            raise ReceiverError(
                f"receiving process {died[0]} exited with status {died[1]}; the node stopped "
                "(its log lines above say why); start it again"
            )

    def stop(self) -> None:
        """Ask :meth:`run` to return."""
        self.stop_event.set()


class Sweeps:
    """A worker's periodic round: stability, matching, overdue, CD queue, purge, and
    (shared database) recovery of packaging whose node died. One worker at a time runs
    a round (advisory lock); the others skip it. Each step claims its rows anyway."""

    def __init__(
        self,
        cfg: Config,
        engine: Engine,
        sessions: sessionmaker[Session],
        content: ContentStore,
        rulebook: Rulebook,
        delivery: DeliveryService,
    ) -> None:
        self._cfg = cfg
        self._engine = engine
        self._sessions = sessions
        self._delivery = delivery
        delivery.rules = rulebook.current  # the release policy reads the running rules
        self._shared = engine.dialect.name == "postgresql"
        self._stability = StabilitySweep(sessions, cfg.scp.stable_after_s)
        self._matcher = Matcher(
            sessions,
            content,
            rulebook.current,
            RequestBook(sessions),
            on_overdue=delivery.overdue_alert,
            identity=cfg.identity,
            # Queued in the transaction that holds the study (release/ knows no outbox).
            on_mismatch=lambda s, req: delivery.outbox.alert(
                s, "identity_mismatch", reference=req.reference, request_id=req.id
            ),
        )
        self._reports = ReportBook(sessions, content)
        self._dicom_reports = DicomReports(sessions, content, self._reports)
        self._purger = Purger(
            sessions,
            content,
            cfg.store.unmatched_retention_days,
            retention_days=cfg.store.retention_days,
        )

    def run(self) -> None:
        """One round, if this node gets the turn; never raises."""
        cfg, matcher = self._cfg, self._matcher
        try:
            with turn(self._engine, "sweeps") as mine:
                if not mine:
                    return
                self._stability.run()
                self._dicom_reports.sweep()  # SR and PDF reports the PACS pushed
                self._reports.link_waiting(cfg.ris.accession_field, cfg.ris.default_charset)
                self._reports.drop_waiting(cfg.store.unmatched_retention_days)
                matcher.sweep_changed()
                matcher.on_stable(matcher.undecided())
                matcher.sweep_new_requests()
                matcher.sweep_overdue(cfg.delivery.overdue_after_h)
                self._delivery.keeper.sweep()  # holds of ready requests: embargo, report
                DiscQueue(
                    self._sessions,
                    self._delivery.outbox,
                    cd_after_h=cfg.delivery.cd_after_h,
                    data_dir=cfg.data_dir,
                ).sweep()  # CD candidates: failed, long overdue, link expired unopened
                self._purger.sweep()
                self._delivery.report_updates.sweep()  # reports after delivery: a new part
                if self._shared:  # a dead node's packaging, while this one runs
                    moved = self._delivery.batch.recover()
                    if moved:
                        log.warning("%d request(s) of a stopped node back to ready", len(moved))
        except StoreError as exc:
            log.warning("stability sweep skipped: %s", exc)
        except Exception as exc:  # a sweep must never stop the node
            log.error("stability/matching sweep failed (%s)", type(exc).__name__)


def serve(cfg: Config, role: Role = "all") -> int:
    """``courier serve``: run until SIGTERM/SIGINT; returns the exit status."""
    setup_logging(os.environ.get("COURIER_LOG_LEVEL", "INFO"), cfg.node.log_format)
    node = Node(cfg, role=role)
    signal.signal(signal.SIGTERM, lambda *_: node.stop())
    signal.signal(signal.SIGINT, lambda *_: node.stop())
    signal.signal(signal.SIGHUP, lambda *_: node.reload_rules())
    try:
        node.run()
    except ReceiverError as exc:
        log.error("%s", exc)
        return 1
    return 0

"""Composition root: build everything once at start-up, run, stop cleanly.

``Node`` wires the store (engine, migrations, content store, catalog), the SCP and the
periodic stability sweep. With ``scp.workers > 1`` the SCP runs in that many child
processes listening on one port (SO_REUSEPORT): one Python process cannot use more
than one core for DIMSE decoding. Recovery and migrations run once, in the parent,
before any receiver starts.

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
import multiprocessing
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from delivery.discs import DiscQueue
from node import banner
from node.auditlog import AuditRun
from node.config import Config, ConfigError, load_config
from node.delivery import DeliveryService
from node.pulls import PullQueue, PullWorker
from node.rulebook import Rulebook
from node.status import StatusFile
from node.stores import METRICS_DIR as METRICS_DIR  # re-exported: its home was here
from node.stores import metrics_dir, node_content, shared_database, store_url
from node.stores import open_store as open_store  # re-exported: its home was here
from node.web import WebServer
from release.matching import Matcher
from release.purge import Purger
from release.requests import RequestBook
from ris.dicom import DicomReports
from ris.reports import ReportBook
from ris.server import RisServer
from scp import spool
from scp.commitment_scp import StorageCommitmentScp
from scp.ingest import Ingest
from scp.recovery import recover
from scp.screen import RuleScreen
from scp.server import start_server
from scp.stability import StabilitySweep
from scp.tls import TlsSetupError, server_context
from store.catalog import Catalog
from store.claims import turn
from store.content import ContentStore
from store.db import make_engine, make_sessions
from store.errors import StoreError
from telemetry import metrics
from telemetry.jsonlog import JsonFormatter

log = logging.getLogger("courier.node")


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
Role = Literal["all", "scp", "web", "worker"]
#: What each role runs (``courier serve --role``).
ROLES: tuple[Role, ...] = get_args(Role)


def setup_logging(level: str = "INFO", log_format: str = "text") -> None:
    """One line per event on stderr, as text or as one JSON object (``node.log_format``);
    pynetdicom only above WARNING (it is chatty, never PHI-free). Calling it again
    replaces the handler it installed before (``courier serve`` learns the format from
    node.yaml after the command line set up logging)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "courier", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler()
    handler.courier = True  # type: ignore[attr-defined]
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # APScheduler logs "Running job"/"executed successfully" at INFO for every run of
    # every job (three lines every few seconds); our jobs log when they did something.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # Every job runs one instance at a time by design (max_instances=1): a sweep still
    # running at its next tick is simply not doubled, which APScheduler reports as a
    # WARNING each time. Nothing is lost (the database holds the work), so it is dropped.
    logging.getLogger("apscheduler.scheduler").addFilter(_not_overlap_skips)
    logging.getLogger("uvicorn").setLevel(logging.WARNING)


def _not_overlap_skips(record: logging.LogRecord) -> bool:
    """False for APScheduler's "skipped: maximum number of running instances reached"."""
    return "maximum number of running instances reached" not in record.getMessage()


@dataclass
class Node:
    """A running node; ``stop()`` ends it. ``role`` says what it runs (:data:`ROLES`)."""

    cfg: Config
    stop_event: threading.Event = field(default_factory=threading.Event)
    port: int | None = None
    rulebook: Rulebook | None = None
    procs: list[Any] = field(default_factory=list)
    role: Role = "all"

    def reload_rules(self) -> None:
        """SIGHUP: reload the rules here and in every receiving process."""
        if self.rulebook is not None:
            self.rulebook.reload_requested.set()
        for p in self.procs:
            if p.pid is not None:
                os.kill(p.pid, signal.SIGHUP)

    def run(self) -> None:
        """Start what the role runs (SCP, web, worker) and sweep until stopped."""
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
        server = None
        procs = self.procs
        self.rulebook = Rulebook(self.cfg)
        if receives:
            with turn(engine, "spool-recovery") as mine:
                if mine:  # a node starting at the same moment does it otherwise
                    recover(content, sessions, Catalog(sessions))
            workers = self.cfg.scp.workers
            if workers == 1:
                server, self.rulebook = _start_receiver(self.cfg, sessions, content, workers=1)
                self.port = int(server.server_address[1])
            else:
                # The parent keeps its own rulebook to report reload errors (status).
                ctx = multiprocessing.get_context("spawn")
                for _ in range(workers):
                    p = ctx.Process(target=_worker_main, args=(str(self.cfg.source),), daemon=True)
                    p.start()
                    procs.append(p)
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
        status = StatusFile(self.cfg.data_dir)
        web_port = self.cfg.portal.port if web is not None else None
        try:
            while True:
                rules = rulebook.current()  # notices a changed rules file or a SIGHUP
                if rulebook.last_error and rulebook.last_error != alerted_error:
                    try:
                        delivery.rules_failed()  # staff hear of it once per new error
                        alerted_error = rulebook.last_error
                    except StoreError as exc:
                        log.warning("rules alert not queued: %s", exc)
                status.write(
                    scp_port=self.port,
                    web_port=web_port,
                    rules_count=len(rules),
                    rules_error=rulebook.last_error,
                )
                if self.stop_event.wait(self.cfg.scp.stability_check_s):
                    break
                if sweeps is not None:
                    sweeps.run()
                for p in procs:
                    if not p.is_alive():
                        log.error("receiver process %d exited (%s); stopping", p.pid, p.exitcode)
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
            if server is not None:
                server.shutdown()
                server.server_close()
            for p in procs:
                p.terminate()
            for p in procs:
                p.join(10)
            audit.stop()
            engine.dispose()
            log.info("node stopped")

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


def _start_receiver(
    cfg: Config, sessions: sessionmaker[Session], content: ContentStore, workers: int
) -> tuple[Any, Rulebook]:
    spool.install(content.spool)
    rulebook = Rulebook(cfg)
    ingest = Ingest(
        content, Catalog(sessions), RuleScreen(rulebook.current), max_pixels=cfg.scp.max_pixels
    )
    commitment = StorageCommitmentScp(cfg.scp, sessions, content)
    server = start_server(
        cfg.scp, ingest, workers=workers, data_dir=cfg.data_dir, commitment=commitment
    )
    return server, rulebook


def _worker_main(config_path: str) -> None:
    """Entry point of one receiving process (spawned: builds its own engine)."""
    _die_with_parent()
    cfg = load_config(Path(config_path))
    setup_logging(os.environ.get("COURIER_LOG_LEVEL", "INFO"), cfg.node.log_format)
    url = store_url(cfg)
    metrics.configure(metrics_dir(cfg, url))  # the parent cleared it
    engine = make_engine(
        url, busy_timeout_s=cfg.store.busy_timeout_s, pool_size=cfg.store.pool_size
    )
    content = node_content(cfg, url)
    server, rulebook = _start_receiver(cfg, make_sessions(engine), content, workers=cfg.scp.workers)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGHUP, lambda *_: rulebook.reload_requested.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides
    done.wait()
    server.shutdown()
    server.server_close()


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies, even by kill -9 (no orphan receivers)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() == 1:
        os._exit(1)


def serve(cfg: Config, role: Role = "all") -> int:
    """``courier serve``: run until SIGTERM/SIGINT; returns the exit status."""
    setup_logging(os.environ.get("COURIER_LOG_LEVEL", "INFO"), cfg.node.log_format)
    node = Node(cfg, role=role)
    signal.signal(signal.SIGTERM, lambda *_: node.stop())
    signal.signal(signal.SIGINT, lambda *_: node.stop())
    signal.signal(signal.SIGHUP, lambda *_: node.reload_rules())
    node.run()
    return 0

"""Shipping the audit trail: exporters copy new events out, from a watermark.

Each exporter (``syslog``, ``jsonl``) has a row in ``audit_cursors`` holding the id of
the last event it handed over. A pass reads the events after it, oldest first, sends
them one by one, and moves the watermark past the ones sent, so:

- a collector that is down makes the pass stop at the first event it cannot take; the
  watermark stays there and the next pass (``audit.ship_interval_s`` later) starts from
  it: nothing is lost, nothing already sent is sent again. Recording events never waits
  for an exporter: they are rows in the database first.
- a crash between sending and moving the watermark sends those events again on restart
  (at least once); the syslog ``meta sequenceId`` is the event id, so a collector can
  tell. TCP/TLS have no acknowledgement (RFC 5425): bytes a dying collector accepted into
  its socket buffer are lost with it, as with any syslog sender.
- on PostgreSQL, ids come from a sequence and a transaction may commit after a later
  one: an id missing from the run is waited for (the pass stops before it) until the
  event after it is ``GAP_WAIT`` old, longer than any transaction may last; then it is
  taken for an id a rolled-back transaction used.

Sinks raise :class:`ShipError` (a :class:`ConnectionError`) when they cannot send.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import ssl
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from node import __version__
from node.audit_format import json_line, octet_counted, syslog_message
from node.audit_settings import AuditSettings, SyslogSettings
from node.config import Config
from store.audit import after, record_now
from store.catalog import guarded
from store.claims import turn
from store.content import DIR_MODE
from store.errors import StoreError
from store.models import AuditCursor, AuditEvent, utcnow

log = logging.getLogger("courier.node.audit")

BATCH = 500
GAP_WAIT = timedelta(minutes=2)


class ShipError(ConnectionError):
    """An exporter could not hand an event over; the pass stops and is retried later."""


class Sink(Protocol):
    """Where one exporter sends (a collector, a file)."""

    name: str

    def send(self, event: AuditEvent) -> None:
        """Hand ``event`` over; raises :class:`ShipError`."""

    def flush(self) -> None:
        """Make what was sent durable (a file's fsync); raises :class:`ShipError`."""

    def close(self) -> None:
        """Release the connection or file (never raises)."""


class SyslogSink:
    """RFC 5424 messages over UDP (RFC 5426), TCP (RFC 6587) or TLS (RFC 5425).

    A TCP/TLS connection is kept between passes, checked before each message (a
    collector that restarted closed it) and opened again after a failure.
    """

    name = "syslog"

    def __init__(
        self, settings: SyslogSettings, *, source: str, base: Path, hostname: str | None = None
    ) -> None:
        self._s = settings
        self._source = source
        self._host = hostname or socket.gethostname()
        self._pid = str(os.getpid())
        self._sock: socket.socket | None = None
        self._tls: ssl.SSLContext | None = None
        if settings.transport == "tls":
            ca = settings.ca_file
            self._tls = ssl.create_default_context(
                cafile=str(base / ca) if ca is not None else None
            )
            self._tls.minimum_version = ssl.TLSVersion.TLSv1_2
            if settings.cert_file is not None:
                key = settings.key_file
                self._tls.load_cert_chain(
                    base / settings.cert_file, base / key if key is not None else None
                )

    def _connect(self) -> socket.socket:
        s = self._s
        try:
            if s.transport == "udp":
                info = socket.getaddrinfo(s.host, s.effective_port, type=socket.SOCK_DGRAM)[0]
                sock = socket.socket(info[0], socket.SOCK_DGRAM)
                sock.settimeout(s.timeout_s)
                sock.connect(info[4])
                return sock
            raw = socket.create_connection((s.host, s.effective_port), timeout=s.timeout_s)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is None:
                return raw
            try:
                return self._tls.wrap_socket(raw, server_hostname=s.host)
            except BaseException:
                raw.close()
                raise
        except (OSError, ssl.SSLError) as exc:
            raise ShipError(
                f"syslog {s.transport}://{s.host}:{s.effective_port}: cannot connect "
                f"({type(exc).__name__}: {exc})"
            ) from None

    def send(self, event: AuditEvent) -> None:
        message = syslog_message(
            event,
            hostname=self._host,
            app_name=self._s.app_name,
            source=self._source,
            process=self._pid,
        )
        if self._sock is not None and self._s.transport != "udp" and _peer_closed(self._sock):
            self.close()  # the collector restarted: a send now would vanish into the RST
        if self._sock is None:
            self._sock = self._connect()
        try:
            if self._s.transport == "udp":
                self._sock.send(message)
            else:
                self._sock.sendall(octet_counted(message))
        except OSError as exc:
            self.close()
            raise ShipError(f"syslog: send failed ({type(exc).__name__}: {exc})") from None

    def flush(self) -> None:
        """Nothing to do: each message went out as it was sent."""

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def _peer_closed(sock: socket.socket) -> bool:
    """True when a kept connection has something to read: a collector never writes, so
    that is its FIN, RST or TLS close_notify."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class JsonlSink:
    """One JSON object per line, appended to a file and fsynced at the end of a pass."""

    name = "jsonl"

    def __init__(self, path: Path, *, source: str) -> None:
        self._path = path
        self._source = source
        self._fd: int | None = None

    def send(self, event: AuditEvent) -> None:
        line = json_line(event, source=self._source)
        try:
            if self._fd is None:
                self._path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
                self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.write(self._fd, line)
        except OSError as exc:
            self.close()
            raise ShipError(f"jsonl {self._path}: cannot write ({exc.strerror})") from None

    def flush(self) -> None:
        if self._fd is None:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self.close()
            raise ShipError(f"jsonl {self._path}: cannot fsync ({exc.strerror})") from None

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class Shipper:
    """Moves one sink's watermark along the audit trail (see the module docstring)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        sink: Sink,
        *,
        batch: int = BATCH,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self.sink = sink
        self._batch = batch
        self._clock = clock

    def ship(self, rounds: int = 20) -> int:
        """Send what is waiting (up to ``rounds`` batches); returns how many were sent.

        Raises :class:`ShipError` after recording the failure on the cursor (the
        events sent before it stay sent); :class:`StoreError` when the database is
        unavailable (nothing is sent then).
        """
        total = 0
        # Nodes sharing a database ship each sink by turns: one watermark, one sender.
        with turn(self._sessions.kw["bind"], f"audit:{self.sink.name}") as mine:
            if not mine:
                return 0
            for _ in range(rounds):
                sent, more = self._pass()
                total += sent
                if not more:
                    break
        return total

    def _pass(self) -> tuple[int, bool]:
        with guarded(self._sessions) as s:
            cursor = s.get(AuditCursor, self.sink.name)
            last = cursor.last_id if cursor is not None else 0
            pending = after(s, last, self._batch)
        ready = self._contiguous(last, pending)
        sent_to = last
        try:
            for event in ready:
                self.sink.send(event)
                sent_to = event.id
            self.sink.flush()
        except ShipError as exc:
            self._save(sent_to, error=str(exc))
            raise
        if sent_to != last:
            self._save(sent_to)
        return len(ready), len(ready) == self._batch

    def _contiguous(self, last: int, pending: list[AuditEvent]) -> list[AuditEvent]:
        """The events that can go now: up to the first fresh gap in the ids."""
        ready: list[AuditEvent] = []
        expected = last + 1
        now = self._clock()
        for event in pending:
            if event.id != expected and event.at > now - GAP_WAIT:
                break  # an earlier transaction may still commit the missing id
            ready.append(event)
            expected = event.id + 1
        return ready

    def _save(self, last_id: int, *, error: str = "") -> None:
        now = self._clock()
        with guarded(self._sessions) as s, s.begin():
            cursor = s.get(AuditCursor, self.sink.name)
            if cursor is None:
                cursor = AuditCursor(name=self.sink.name, last_id=0, last_error="")
                s.add(cursor)
            cursor.last_id = max(cursor.last_id, last_id)
            if error:
                cursor.failed_at, cursor.last_error = now, error[:1000]
            else:
                cursor.shipped_at, cursor.last_error = now, ""


def build_shippers(
    settings: AuditSettings,
    sessions: sessionmaker[Session],
    *,
    source: str,
    base: Path,
    data_dir: Path,
) -> list[Shipper]:
    """One shipper per configured exporter (none by default). ``base`` resolves the
    syslog CA and certificate files (the config file's folder), ``data_dir`` the JSON
    lines file."""
    shippers = []
    if settings.syslog is not None:
        shippers.append(Shipper(sessions, SyslogSink(settings.syslog, source=source, base=base)))
    if settings.jsonl is not None:
        shippers.append(Shipper(sessions, JsonlSink(data_dir / settings.jsonl.path, source=source)))
    return shippers


class ShipperThread:
    """Runs the shippers every ``interval_s`` on a thread of their own, so a slow
    collector never holds up the node's sweeps; :meth:`stop` makes a last pass."""

    def __init__(self, shippers: list[Shipper], interval_s: float) -> None:
        self._shippers = shippers
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="courier-audit", daemon=True)
        self._failing: set[str] = set()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop, after one last pass (the stop event goes out when it can)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if not self._thread.is_alive():  # never two passes at once
            self.run_once()
        for shipper in self._shippers:
            shipper.sink.close()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.run_once()

    def run_once(self) -> None:
        """One pass of every shipper; failures are logged once until they recover."""
        for shipper in self._shippers:
            name = shipper.sink.name
            try:
                shipper.ship()
            except (ShipError, StoreError) as exc:
                if name not in self._failing:
                    log.warning("audit export %s failed; retrying every pass: %s", name, exc)
                self._failing.add(name)
                continue
            except Exception as exc:  # an exporter must never stop the node
                log.error("audit export %s failed unexpectedly (%s)", name, type(exc).__name__)
                continue
            if name in self._failing:
                log.info("audit export %s recovered", name)
                self._failing.discard(name)


class AuditRun:
    """The node's part in the trail: ``application-start`` when it is ready, the
    exporters' thread, and ``application-stop`` (then a last export) when it stops."""

    def __init__(
        self,
        cfg: Config,
        sessions: sessionmaker[Session],
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._cfg = cfg
        self._sessions = sessions
        self._clock = clock
        base = cfg.source.parent if cfg.source is not None else Path.cwd()
        shippers = build_shippers(
            cfg.audit, sessions, source=cfg.node.name, base=base, data_dir=cfg.data_dir
        )
        self._thread = ShipperThread(shippers, cfg.audit.ship_interval_s) if shippers else None

    def start(self) -> None:
        """Record the start (a failure is logged: the node runs without it) and ship."""
        self._note("application-start", f"courier {__version__} started")
        if self._thread is not None:
            self._thread.start()

    def stop(self) -> None:
        """Record the stop and make a last export pass."""
        self._note("application-stop", f"courier {__version__} stopped")
        if self._thread is not None:
            self._thread.stop()

    def _note(self, kind: str, detail: str) -> None:
        try:
            record_now(
                self._sessions,
                kind,
                clock=self._clock,
                actor="node",
                detail=f"{detail} (node {self._cfg.node.name})",
            )
        except (StoreError, SQLAlchemyError) as exc:
            log.error("audit: %s not recorded (%s)", kind, type(exc).__name__)

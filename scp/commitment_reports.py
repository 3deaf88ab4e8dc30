"""Storage commitment reports on a new association (PS3.4 J.3.3): the SCP's delivery side.

When the requester did not take the SCP role on its own association (or that
association is gone), :class:`ReportSender` opens one to the requester's AE at the
host and port from ``scp.allowed_calling_aes``, proposing the SCP role for the SOP
class by role selection, and sends the N-EVENT-REPORT. One background thread per
receiving process works a bounded queue; each report is tried
``scp.commitment_report_attempts`` times with doubling waits (capped at 10 minutes),
then handed to ``on_undelivered``. Logs hold Transaction UIDs, AE titles, addresses
and attempt counts only.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, build_role
from pynetdicom.transport import AssociationSocket

from scp.settings import ScpSettings

log = logging.getLogger("courier.scp.commitment")

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"  # Storage Commitment Push Model SOP Class
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"  # its well-known SOP Instance
SUCCESS = 0x0000  # N-EVENT-REPORT response: Success (the peer took the report)

_MAX_RETRY_WAIT_S = 600.0
_msg_ids = itertools.count(1)


@dataclass(frozen=True)
class Report:
    """An N-EVENT-REPORT to deliver on a new association."""

    transaction_uid: str
    event_type: int
    information: Dataset
    called_ae: str
    host: str
    port: int
    study_ids: frozenset[int]


class ReportSender:
    """Delivers reports on new associations from one background thread, with retries.

    ``associate`` is injectable for tests; by default pynetdicom's ``AE.associate``.
    ``on_undelivered(report, why)`` is called once a report's last attempt failed.
    """

    def __init__(
        self,
        settings: ScpSettings,
        on_undelivered: Callable[[Report, str], None],
        *,
        max_pending: int = 256,
    ) -> None:
        self._settings = settings
        self._on_undelivered = on_undelivered
        self._queue: queue.Queue[Report] = queue.Queue(maxsize=max_pending)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, report: Report) -> bool:
        """Queue ``report``; False when too many are pending already."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="courier-commitment-reports", daemon=True
                )
                self._thread.start()
        try:
            self._queue.put_nowait(report)
        except queue.Full:
            return False
        return True

    def has_room(self) -> bool:
        return not self._queue.full()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop after the current attempt; pending reports are dropped (the PACS asks again)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                report = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._deliver(report)
            except Exception as exc:  # the thread must outlive one bad report
                log.error("storage commitment report failed (%s)", type(exc).__name__)

    def _deliver(self, report: Report) -> None:
        wait = self._settings.commitment_retry_s
        why = ""
        for attempt in range(1, self._settings.commitment_report_attempts + 1):
            if attempt > 1:
                if self._stop.wait(wait):
                    why = "node stopping"
                    break
                wait = min(wait * 2, _MAX_RETRY_WAIT_S)
            why = self.send_once(report)
            if not why:
                log.info(
                    "storage commitment report sent txn=%s to=%s host=%s port=%d attempt=%d",
                    report.transaction_uid,
                    report.called_ae,
                    report.host,
                    report.port,
                    attempt,
                )
                return
            log.warning(
                "storage commitment report txn=%s to=%s attempt %d/%d failed: %s",
                report.transaction_uid,
                report.called_ae,
                attempt,
                self._settings.commitment_report_attempts,
                why,
            )
        self._on_undelivered(report, why)

    def send_once(self, report: Report) -> str:
        """One new association carrying ``report``; returns '' or why it failed."""
        s = self._settings
        ae = _ReportAE(ae_title=s.ae_title)
        ae.connection_timeout = s.acse_timeout_s
        ae.acse_timeout = s.acse_timeout_s
        ae.dimse_timeout = s.dimse_timeout_s
        ae.network_timeout = s.network_timeout_s
        # We are the SCP of the SOP class sending its report: say so (role selection).
        role = build_role(STORAGE_COMMITMENT, scu_role=False, scp_role=True)
        assoc = ae.associate(
            report.host,
            report.port,
            contexts=[build_context(STORAGE_COMMITMENT)],
            ae_title=report.called_ae,
            ext_neg=[role],
        )
        try:
            if not assoc.is_established:
                return "association refused or peer unreachable"
            if not assoc.accepted_contexts:
                return "peer refused the storage commitment context"
            status, _reply = assoc.send_n_event_report(
                report.information,
                report.event_type,
                STORAGE_COMMITMENT,
                WELL_KNOWN_INSTANCE,
                msg_id=next_msg_id(),
            )
            code = int(status.Status) if "Status" in status else None
            if code != SUCCESS:
                return "no answer" if code is None else f"peer answered 0x{code:04X}"
            return ""
        finally:
            if assoc.is_established:
                assoc.release()
            _close(assoc)


class _ClosingSocket(AssociationSocket):
    """pynetdicom's socket, closed even when the connection was refused (pynetdicom
    3.0 calls shutdown() first, which fails on an unconnected socket, and never closes
    it: one leaked descriptor per failed attempt)."""

    def _shutdown_socket(self) -> None:
        sock = self.socket
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()


class _ReportAE(AE):
    def _create_socket(self, assoc: Any, address: Any, tls_args: Any) -> AssociationSocket:
        sock = _ClosingSocket(assoc, address=address)
        sock.tls_args = tls_args
        return sock


def next_msg_id() -> int:
    return next(_msg_ids) % 65535 + 1


def _close(assoc: Any) -> None:
    # pynetdicom leaves a requestor's socket open after a refused or broken association.
    sock = getattr(getattr(assoc, "dul", None), "socket", None)
    if sock is not None and getattr(sock, "socket", None) is not None:
        with contextlib.suppress(OSError):
            sock.socket.close()

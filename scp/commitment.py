"""Storage commitment results (Push Model, PS3.4 Annex J): waiting for N-EVENT-REPORTs.

After Courier's C-STOREs to another hospital, :mod:`scp.storescu` asks the peer to
commit (N-ACTION, action type 1, with a fresh Transaction UID) and waits for the
peer's N-EVENT-REPORT naming the same Transaction UID. The report comes on the same
association (some peers) or on a new association the peer opens to Courier (Orthanc
does this, to the address its ``DicomModalities`` gives for Courier's AE title).

:class:`CommitmentReports` is the meeting point for both: :meth:`~CommitmentReports.expect`
registers a transaction, :meth:`~CommitmentReports.handle` is an ``EVT_N_EVENT_REPORT``
handler to bind on the sending association *and* on whatever SCP receives the peer's
reports (:class:`CommitmentListener`, or Courier's own SCP), and
:meth:`~CommitmentWait.wait` returns the :class:`CommitmentResult`. A report for a
transaction nobody waits for (late, or another node's) is answered 0x0000 and dropped:
the next attempt asks again.

Log lines hold Transaction UIDs, counts and status codes only.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification  # type: ignore[attr-defined]

log = logging.getLogger("courier.scp.commitment")

# N-EVENT-REPORT statuses we answer (PS3.7 10.1.1.1.8; PS3.4 J.3.3.1.2).
SUCCESS = 0x0000  # Success: the report was received
PROCESSING_FAILURE = 0x0110  # Failure: the report could not be read
NO_SUCH_EVENT_TYPE = 0x0113  # Failure: not event type 1 or 2

ALL_COMMITTED = 1  # Event Type ID: Storage Commitment Request Successful
SOME_FAILED = 2  # Event Type ID: Storage Commitment Request Complete - Failures Exist


@dataclass(frozen=True)
class CommitmentResult:
    """What the peer's report said: the SOP Instance UIDs it committed, and those it
    did not with their Failure Reason (e.g. 0x0112 no such object instance)."""

    transaction_uid: str
    committed: frozenset[str]
    failed: dict[str, int] = field(default_factory=dict)


class CommitmentWait:
    """One transaction waiting for its report."""

    def __init__(self, reports: CommitmentReports, transaction_uid: str) -> None:
        self.transaction_uid = transaction_uid
        self._reports = reports
        self._done = threading.Event()
        self._result: CommitmentResult | None = None

    def _set(self, result: CommitmentResult) -> None:
        self._result = result
        self._done.set()

    def wait(self, timeout_s: float) -> CommitmentResult | None:
        """The result, or None when no report came within ``timeout_s``; stops waiting
        either way (a later report for this transaction is dropped)."""
        try:
            self._done.wait(timeout_s)
            return self._result
        finally:
            self._reports.forget(self.transaction_uid)


class CommitmentReports:
    """Transactions waiting for a report, by Transaction UID (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, CommitmentWait] = {}

    def expect(self, transaction_uid: str) -> CommitmentWait:
        """Register ``transaction_uid`` *before* the N-ACTION goes out (a fast peer may
        report before the N-ACTION response arrives)."""
        wait = CommitmentWait(self, transaction_uid)
        with self._lock:
            self._waiting[transaction_uid] = wait
        return wait

    def forget(self, transaction_uid: str) -> None:
        with self._lock:
            self._waiting.pop(transaction_uid, None)

    def handle(self, event: evt.Event) -> tuple[int, Dataset | None]:
        """``EVT_N_EVENT_REPORT`` handler: hand the report to whoever waits for it."""
        try:
            event_type = int(getattr(event.request, "EventTypeID", None) or 0)
            info = event.event_information
            uid = str(info.get("TransactionUID", ""))
            committed = frozenset(
                str(item.ReferencedSOPInstanceUID)
                for item in info.get("ReferencedSOPSequence", [])
                if "ReferencedSOPInstanceUID" in item
            )
            failed = {
                str(item.ReferencedSOPInstanceUID): int(item.get("FailureReason", 0x0110))
                for item in info.get("FailedSOPSequence", [])
                if "ReferencedSOPInstanceUID" in item
            }
        except Exception as exc:  # a malformed report must not kill the association
            log.warning("storage commitment report unreadable (%s)", type(exc).__name__)
            return PROCESSING_FAILURE, None  # Failure: processing failure
        if event_type not in (ALL_COMMITTED, SOME_FAILED):
            return NO_SUCH_EVENT_TYPE, None  # Failure: no such event type
        with self._lock:
            wait = self._waiting.pop(uid, None)
        log.info(
            "storage commitment report %s: %d committed, %d failed%s",
            uid,
            len(committed),
            len(failed),
            "" if wait else " (nobody waits for it: dropped)",
        )
        if wait is not None:
            wait._set(CommitmentResult(uid, committed, failed))
        return SUCCESS, None  # Success: report received


class CommitmentListener:
    """A small SCP that only takes storage commitment reports (and C-ECHO), for peers
    that report on a new association. Courier's main SCP may bind
    :meth:`CommitmentReports.handle` instead; this one serves a port of its own."""

    def __init__(self, reports: CommitmentReports, ae_title: str, host: str, port: int) -> None:
        self.reports = reports
        self.ae_title = ae_title
        self.address = (host, port)
        self._server: Any = None

    def __enter__(self) -> Self:
        ae = AE(ae_title=self.ae_title)
        # The reporting peer is the SCP of the SOP class; it may say so by role
        # selection (SCP role), which we accept.
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        ae.add_supported_context(Verification)
        self._server = ae.start_server(
            self.address,
            block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self.reports.handle)],
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

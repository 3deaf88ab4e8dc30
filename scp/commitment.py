"""Storage commitment results (Push Model, PS3.4 Annex J): waiting for N-EVENT-REPORTs.

After Courier's C-STOREs to another hospital, :mod:`scp.storescu` asks the peer to
commit (N-ACTION, action type 1, with a fresh Transaction UID) and waits for the
peer's N-EVENT-REPORT naming the same Transaction UID. The report comes on the same
association (some peers) or on a new association the peer opens to Courier (Orthanc
does this, to the address its ``DicomModalities`` gives for Courier's AE title, i.e.
Courier's main SCP port).

Two ways in, one wait:

- :class:`CommitmentReports` is the in-process meeting point: :meth:`~CommitmentReports.expect`
  registers a transaction, :meth:`~CommitmentReports.handle` is an ``EVT_N_EVENT_REPORT``
  handler bound on the sending association (tests also bind it on a small SCP of their
  own, ``tests.pynetdicom_peers.PynetdicomScp``, as Courier's AE for a peer's new association).
- :class:`ReportBook` is the durable one, for the main SCP: its receiving processes
  are not the sender's, so :meth:`ReportBook.handle` writes each report as a
  :class:`~store.models.CommitmentReport` row and answers 0x0000 only once it is
  committed (0x0110 when the database cannot take it: the peer may send it again).
  A report for a Transaction UID nobody asked for is recorded and answered 0x0000
  too: PS3.4 J.3.3.1.3 asks the SCU for the response status and leaves what it does
  with the report to its conformance statement (ours: keep it, change nothing).

:meth:`CommitmentWait.wait` returns the :class:`CommitmentResult` from whichever path
delivered it first, polling the :class:`ReportBook` (when the reports have one) every
``poll_s`` up to the timeout. A same-association report for a transaction nobody waits
for (late) is answered 0x0000 and dropped; one on a new association stays in the
book, where ``delivery.dicomsend`` applies it when the request's next attempt starts.

A report handed over by :meth:`CommitmentReports.handle` ends the wait only once our
N-EVENT-REPORT-RSP is on the socket (``EVT_PDU_SENT``), or the connection closed. The
handler runs before pynetdicom queues that response, and with the reactor marked
paused: a sender that released as soon as the handler had the report could queue its
A-RELEASE-RQ first, and pynetdicom refuses the response in the state that leaves
(InvalidEventError 'Evt9' in 'Sta7', in its own thread): the peer gets no answer (it
may report again) and the release waits for a timeout. The wait stays bounded by its
timeout; a report whose response never went out is still returned then.

Log lines hold Transaction UIDs, counts and status codes only.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.pdu import P_DATA_TF
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from store.catalog import guarded
from store.errors import StoreError
from store.models import CommitmentReport, utcnow

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


@dataclass(frozen=True)
class ParsedReport:
    event_type: int
    result: CommitmentResult


def read_report(event: evt.Event) -> ParsedReport | int:
    """The report an ``EVT_N_EVENT_REPORT`` carries, or the failure status to answer
    (0x0110 unreadable, 0x0113 not event type 1 or 2)."""
    try:
        event_type = int(getattr(event.request, "EventTypeID", None) or 0)
        info = event.event_information
        uid = str(info.get("TransactionUID", "") or "")
        committed = frozenset(
            str(item.ReferencedSOPInstanceUID)
            for item in info.get("ReferencedSOPSequence", None) or []
            if "ReferencedSOPInstanceUID" in item
        )
        failed = {
            str(item.ReferencedSOPInstanceUID): int(item.get("FailureReason", 0x0110))
            for item in info.get("FailedSOPSequence", None) or []
            if "ReferencedSOPInstanceUID" in item
        }
    except Exception as exc:  # a malformed report must not kill the association
        log.warning("storage commitment report unreadable (%s)", type(exc).__name__)
        return PROCESSING_FAILURE  # Failure: processing failure
    if event_type not in (ALL_COMMITTED, SOME_FAILED):
        return NO_SUCH_EVENT_TYPE  # Failure: no such event type
    if not uid or len(uid) > 64:
        log.warning("storage commitment report without a usable Transaction UID")
        return PROCESSING_FAILURE  # Failure: processing failure
    return ParsedReport(event_type, CommitmentResult(uid, committed, failed))


class ReportBook:
    """Storage commitment reports kept in the database (``commitment_reports``): the
    main SCP's ``EVT_N_EVENT_REPORT`` handler writes them, the sender reads them.

    Build it once per process (it holds the session factory, never an engine of its
    own). See the module docstring for the statuses it answers.
    """

    def __init__(
        self, sessions: sessionmaker[Session], *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._sessions = sessions
        self._clock = clock

    def handle(self, event: evt.Event) -> tuple[int, Dataset | None]:
        """``EVT_N_EVENT_REPORT`` handler: record the report, then answer."""
        parsed = read_report(event)
        if isinstance(parsed, int):
            return parsed, None
        result = parsed.result
        requestor: Any = event.assoc.requestor
        try:
            self.record(
                parsed.event_type,
                result,
                calling_ae=str(requestor.ae_title).strip(),
                host=str(requestor.address),
            )
        except StoreError as exc:
            log.warning(
                "storage commitment report %s not recorded (%s); answering 0x0110",
                result.transaction_uid,
                type(exc).__name__,
            )
            return PROCESSING_FAILURE, None  # Failure: processing failure (send it again)
        except Exception as exc:  # never let pynetdicom answer on its own
            log.error(
                "storage commitment report %s not recorded (%s)",
                result.transaction_uid,
                type(exc).__name__,
            )
            return PROCESSING_FAILURE, None  # Failure: processing failure
        log.info(
            "storage commitment report %s recorded: %d committed, %d failed",
            result.transaction_uid,
            len(result.committed),
            len(result.failed),
        )
        return SUCCESS, None  # Success: report received (and recorded)

    def record(
        self, event_type: int, result: CommitmentResult, *, calling_ae: str = "", host: str = ""
    ) -> int:
        """Write one report (committed when this returns); returns its row id. Raises
        :class:`~store.errors.StoreError` when the database is unavailable."""
        with guarded(self._sessions) as s, s.begin():
            row = CommitmentReport(
                transaction_uid=result.transaction_uid,
                event_type=event_type,
                calling_ae=calling_ae[:16],
                peer_host=host[:64],
                received_at=self._clock(),
                committed=json.dumps(sorted(result.committed)),
                failed=json.dumps(dict(sorted(result.failed.items()))),
            )
            s.add(row)
            s.flush()
            return int(row.id)

    def find(self, transaction_uid: str) -> CommitmentResult | None:
        """The latest report recorded for ``transaction_uid``, or None. Raises
        :class:`~store.errors.StoreError` when the database is unavailable."""
        with guarded(self._sessions) as s:
            row = s.scalars(
                select(CommitmentReport)
                .where(CommitmentReport.transaction_uid == transaction_uid)
                .order_by(CommitmentReport.id.desc())
                .limit(1)
            ).first()
            return None if row is None else as_result(row)


def as_result(row: CommitmentReport) -> CommitmentResult:
    """A recorded report as a :class:`CommitmentResult`."""
    failed = json.loads(row.failed or "{}")
    return CommitmentResult(
        row.transaction_uid,
        frozenset(json.loads(row.committed or "[]")),
        {str(uid): int(reason) for uid, reason in failed.items()},
    )


class CommitmentWait:
    """One transaction waiting for its report."""

    def __init__(self, reports: CommitmentReports, transaction_uid: str) -> None:
        self.transaction_uid = transaction_uid
        self._reports = reports
        self._done = threading.Event()
        self._result: CommitmentResult | None = None

    def _arrived(self, result: CommitmentResult, assoc: Any) -> None:
        """The report came on ``assoc`` (in its handler, before pynetdicom queued our
        response): keep it, and end the wait once that response was sent."""
        self._result = result
        after_response(assoc, self._done.set)

    def wait(self, timeout_s: float) -> CommitmentResult | None:
        """The result, or None when no report came within ``timeout_s``; stops waiting
        either way (a later report on this association is dropped; one on a new
        association stays in the book). With a :class:`ReportBook`, the book is read
        every ``poll_s`` meanwhile (a database that fails a read is read again)."""
        book = self._reports.book
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                remaining = deadline - time.monotonic()
                step = remaining if book is None else min(remaining, self._reports.poll_s)
                if self._done.wait(max(step, 0.0)):
                    return self._result
                if book is not None:
                    try:
                        found = book.find(self.transaction_uid)
                    except StoreError as exc:
                        log.warning("storage commitment reports unreadable (%s)", exc)
                        found = None
                    if found is not None:
                        return found
                if remaining <= step:
                    return self._result
        finally:
            self._reports.forget(self.transaction_uid)


class CommitmentReports:
    """Transactions waiting for a report, by Transaction UID (thread-safe).

    ``book``: where the main SCP records reports that came on a new association (the
    node's :class:`ReportBook`); read every ``poll_s`` seconds while waiting.
    """

    def __init__(self, book: ReportBook | None = None, *, poll_s: float = 0.5) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, CommitmentWait] = {}
        self.book = book
        self.poll_s = poll_s

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
        parsed = read_report(event)
        if isinstance(parsed, int):
            return parsed, None
        result = parsed.result
        uid = result.transaction_uid
        with self._lock:
            wait = self._waiting.pop(uid, None)
        log.info(
            "storage commitment report %s: %d committed, %d failed%s",
            uid,
            len(result.committed),
            len(result.failed),
            "" if wait else " (nobody waits for it: dropped)",
        )
        if wait is not None:
            wait._arrived(result, event.assoc)
        return SUCCESS, None  # Success: report received


def after_response(assoc: Any, then: Callable[[], None]) -> None:
    """Call ``then`` (once, in pynetdicom's DUL thread) when ``assoc`` has sent the end
    of the DIMSE response its running ``EVT_N_EVENT_REPORT`` handler is about to give, or
    when the connection closes first.

    Call it from that handler: nothing else is sent on the association meanwhile (its
    reactor is in the handler, our N-ACTION went out before the peer could report on
    it), so the next PDU carrying the last fragment of a command set is the response,
    which holds no data set (we answer ``(status, None)``).
    """
    fired = threading.Lock()

    def fire() -> None:
        if fired.acquire(blocking=False):
            assoc.unbind(evt.EVT_PDU_SENT, pdu_sent)
            assoc.unbind(evt.EVT_CONN_CLOSE, closed)
            then()

    def pdu_sent(event: evt.Event) -> None:
        if _ends_command(event.pdu):
            fire()

    def closed(_event: evt.Event) -> None:
        fire()

    assoc.bind(evt.EVT_PDU_SENT, pdu_sent)
    assoc.bind(evt.EVT_CONN_CLOSE, closed)


def _ends_command(pdu: object) -> bool:
    """True for a P-DATA-TF holding the last fragment of a command set (message control
    header bits xxxxxx11, PS3.8 E.2)."""
    return isinstance(pdu, P_DATA_TF) and any(
        item.presentation_data_value and item.presentation_data_value[0] & 0x03 == 0x03
        for item in pdu.presentation_data_value_items
    )

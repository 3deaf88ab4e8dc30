"""Storage commitment, SCP side (Push Model, PS3.4 Annex J): the PACS asks, we answer.

A PACS that sent us instances asks us to take responsibility for them with an N-ACTION
(action type 1) listing SOP Class and Instance UIDs under a Transaction UID. We answer
the N-ACTION at once (0x0000: request accepted), then check each instance against what
0x0000 promised: its index row exists with the same SOP Class, its file is there (not
flagged ``file_missing``) with the recorded size and, unless
``scp.commitment_verify_digest`` is off, the recorded SHA-256. The verdict goes back in
an N-EVENT-REPORT (event type 1: all committed; 2: failures exist, each with its Failure
Reason):

- **on the same association**, right after the N-ACTION response, when it is still open
  and the requester took the SCP role for the SOP class there (SCP/SCU role selection);
- **otherwise on a new association** to the requester's AE title, at the host pinned in
  ``scp.allowed_calling_aes`` (or the address it called from) and the ``port`` listed
  there, tried ``scp.commitment_report_attempts`` times with doubling waits, from one
  background thread with a bounded queue (:mod:`scp.commitment_reports`; a full
  queue answers the N-ACTION 0x0213).

Each request and its verdict are recorded as a :class:`~store.models.StudyEvent` of every
study it names (no state change), and so is a report that could not be delivered. Logs
hold Transaction UIDs, AE titles, addresses and counts only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pynetdicom import evt
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from scp.commitment_reports import (
    STORAGE_COMMITMENT,
    WELL_KNOWN_INSTANCE,
    Report,
    ReportSender,
    next_msg_id,
)
from scp.filemeta import content_sha256
from scp.settings import ScpSettings
from store.catalog import guarded
from store.content import ContentStore, check_uid
from store.errors import InvalidUID, StoreError
from store.models import Instance, Study, StudyEvent, utcnow

log = logging.getLogger("courier.scp.commitment")

REQUEST_COMMITMENT = 1  # Action Type ID: Request Storage Commitment
ALL_COMMITTED = 1  # Event Type ID: Storage Commitment Request Successful
SOME_FAILED = 2  # Event Type ID: Storage Commitment Request Complete - Failures Exist

# N-ACTION response statuses (PS3.7 10.1.4.1.10).
SUCCESS = 0x0000  # Success: request accepted; the verdict follows by N-EVENT-REPORT
PROCESSING_FAILURE = 0x0110  # Failure: processing failure
INVALID_ARGUMENT = 0x0115  # Failure: invalid argument value (no Transaction UID or list)
NO_SUCH_ACTION = 0x0123  # Failure: no such action (not action type 1)
RESOURCE_LIMITATION = 0x0213  # Failure: resource limitation (too many pending reports)

# Failure Reasons in the report (PS3.3 C.14.1.1).
REASON_PROCESSING = 0x0110  # Processing failure: file missing, changed, or unreadable
REASON_NO_SUCH_INSTANCE = 0x0112  # No such object instance: never stored here
REASON_CLASS_CONFLICT = 0x0119  # Class / Instance conflict: stored under another class
REASON_RESOURCES = 0x0213  # Resource limitation: the index could not be read

MAX_REFERENCES = 100_000  # per request: bounds the memory and time one request costs
_LOOKUP_CHUNK = 500  # UIDs per IN (...) query


@dataclass(frozen=True)
class Reference:
    """One SOP Instance named in a request."""

    sop_class: str
    sop_instance: str


@dataclass(frozen=True)
class CommitRequest:
    """A storage commitment request as it arrived (association facts, no patient data)."""

    transaction_uid: str
    references: tuple[Reference, ...]
    calling_ae: str
    host: str


@dataclass
class Verdict:
    """What we commit to: references committed, and the others with a Failure Reason."""

    committed: list[Reference] = field(default_factory=list)
    failed: list[tuple[Reference, int]] = field(default_factory=list)
    study_ids: set[int] = field(default_factory=set)

    @property
    def event_type(self) -> int:
        return SOME_FAILED if self.failed else ALL_COMMITTED

    def event_information(self, transaction_uid: str) -> Dataset:
        """The N-EVENT-REPORT's Event Information (PS3.4 Table J.3-2)."""
        ds = Dataset()
        ds.TransactionUID = transaction_uid
        if self.committed:
            ds.ReferencedSOPSequence = DicomSequence([_item(r) for r in self.committed])
        if self.failed:
            items = []
            for ref, reason in self.failed:
                item = _item(ref)
                item.FailureReason = reason
                items.append(item)
            ds.FailedSOPSequence = DicomSequence(items)
        return ds

    def summary(self) -> str:
        return f"{len(self.committed)} committed, {len(self.failed)} not"


def _item(ref: Reference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class
    item.ReferencedSOPInstanceUID = ref.sop_instance
    return item


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Ledger:
    """Checks references against the index and the content store; records study events."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        content: ContentStore,
        *,
        verify_digest: bool = True,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._content = content
        self._verify_digest = verify_digest
        self._clock = clock

    def verdict(self, references: Sequence[Reference]) -> Verdict:
        """Commit only what is durably stored; never raises (failures become reasons)."""
        verdict = Verdict()
        uids = sorted({r.sop_instance for r in references})
        rows: dict[str, Any] = {}
        i = Instance
        try:
            with guarded(self._sessions) as s:
                for chunk in _chunks(uids, _LOOKUP_CHUNK):
                    query = select(
                        i.sop_instance_uid,
                        i.sop_class_uid,
                        i.sha256,
                        i.size_bytes,
                        i.path,
                        i.file_missing,
                        i.study_id,
                    ).where(i.sop_instance_uid.in_(chunk))
                    rows.update((row.sop_instance_uid, row) for row in s.execute(query))
        except StoreError as exc:
            log.warning("storage commitment: index unreadable (%s); committing nothing", exc)
            verdict.failed = [(r, REASON_RESOURCES) for r in references]
            return verdict
        for ref in references:
            row = rows.get(ref.sop_instance)
            if row is None:
                verdict.failed.append((ref, REASON_NO_SUCH_INSTANCE))
                continue
            verdict.study_ids.add(int(row.study_id))
            if row.sop_class_uid != ref.sop_class:
                verdict.failed.append((ref, REASON_CLASS_CONFLICT))
            elif row.file_missing or not self._intact(row.path, row.size_bytes, row.sha256):
                verdict.failed.append((ref, REASON_PROCESSING))
            else:
                verdict.committed.append(ref)
        return verdict

    def _intact(self, relpath: str, size: int, sha256: str) -> bool:
        path = self._content.path(relpath)
        try:
            if path.stat().st_size != size:
                return False
            # The index keeps the content digest (the file without its sender elements).
            return not self._verify_digest or content_sha256(path)[0] == sha256
        except OSError:
            return False

    def record(self, study_ids: Iterable[int], reason: str) -> None:
        """Add ``reason`` to each study's timeline (its state unchanged); logs failures."""
        ids = sorted(set(study_ids))
        if not ids:
            return
        try:
            with guarded(self._sessions) as s, s.begin():
                states = s.execute(select(Study.id, Study.state).where(Study.id.in_(ids))).all()
                now = self._clock()
                for study_id, state in states:
                    s.add(
                        StudyEvent(
                            study_id=study_id,
                            at=now,
                            from_state=state,
                            to_state=state,
                            reason=reason[:500],
                        )
                    )
        except StoreError as exc:
            log.warning("storage commitment event not recorded: %s", exc)


class StorageCommitmentScp:
    """The ``EVT_N_ACTION`` handler and what follows it; one per receiving process."""

    def __init__(
        self,
        settings: ScpSettings,
        sessions: sessionmaker[Session],
        content: ContentStore,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._settings = settings
        self.sessions = sessions  # the main SCP's ReportBook shares them (scp.server)
        self.ledger = Ledger(
            sessions, content, verify_digest=settings.commitment_verify_digest, clock=clock
        )
        self.sender = ReportSender(settings, self._undelivered)

    def close(self) -> None:
        """Stop the report thread."""
        self.sender.close()

    def handle_n_action(self, event: evt.Event) -> tuple[int, Dataset | None]:
        """N-ACTION: accept a well-formed request and schedule its report."""
        assoc: Any = event.assoc
        try:
            request = self._parse(event)
        except _Refused as refused:
            log.warning("storage commitment request refused: %s", refused.why)
            return refused.status, None
        except Exception as exc:  # never let pynetdicom answer on its own
            log.error("storage commitment request unreadable (%s)", type(exc).__name__)
            return PROCESSING_FAILURE, None  # Failure: processing failure
        if not self.sender.has_room():
            log.warning("storage commitment: too many reports pending; answering 0x0213")
            return RESOURCE_LIMITATION, None  # Failure: resource limitation
        log.info(
            "storage commitment asked txn=%s by=%s host=%s instances=%d",
            request.transaction_uid,
            request.calling_ae,
            request.host,
            len(request.references),
        )
        context_id = int(event.context.context_id)
        follow_ups = getattr(assoc, "after_response", None)
        if isinstance(follow_ups, list):
            follow_ups.append(lambda: self.answer(request, assoc, context_id))
        else:  # an association we did not create: report on a new one
            self.answer(request, None, context_id)
        return SUCCESS, None  # Success: the verdict follows by N-EVENT-REPORT

    def _parse(self, event: evt.Event) -> CommitRequest:
        req: Any = event.request
        if int(req.ActionTypeID or 0) != REQUEST_COMMITMENT:
            raise _Refused(NO_SUCH_ACTION, f"action type {req.ActionTypeID}")
        info = event.action_information
        try:
            txn = check_uid(str(info.get("TransactionUID", "") or ""), "TransactionUID")
        except InvalidUID:
            raise _Refused(INVALID_ARGUMENT, "no valid Transaction UID") from None
        items = info.get("ReferencedSOPSequence") or []
        if not items:
            raise _Refused(INVALID_ARGUMENT, f"txn={txn}: empty Referenced SOP Sequence")
        if len(items) > MAX_REFERENCES:
            raise _Refused(RESOURCE_LIMITATION, f"txn={txn}: {len(items)} instances")
        refs = []
        for item in items:
            sop_class = str(item.get("ReferencedSOPClassUID", "") or "")
            sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "")
            if not sop_class or not sop_instance:
                raise _Refused(INVALID_ARGUMENT, f"txn={txn}: an item lacks its UIDs")
            refs.append(Reference(sop_class, sop_instance))
        assoc = event.assoc
        return CommitRequest(
            txn,
            tuple(refs),
            calling_ae=str(assoc.requestor.ae_title).strip(),
            host=str(assoc.requestor.address),
        )

    def answer(self, request: CommitRequest, assoc: Any, context_id: int) -> None:
        """Decide, record, and report: on ``assoc`` if it may carry it, else on a new one.

        Runs on the association's own thread once the N-ACTION response is on its way,
        so the report can never overtake it.
        """
        verdict = self.ledger.verdict(request.references)
        txn = request.transaction_uid
        log.info("storage commitment txn=%s by=%s: %s", txn, request.calling_ae, verdict.summary())
        self.ledger.record(
            verdict.study_ids,
            f"storage commitment {txn} asked by {request.calling_ae}: {verdict.summary()}",
        )
        information = verdict.event_information(txn)
        if assoc is not None and _may_report_on(assoc, context_id):
            try:
                status, _reply = assoc.send_n_event_report(
                    information,
                    verdict.event_type,
                    STORAGE_COMMITMENT,
                    WELL_KNOWN_INSTANCE,
                    msg_id=next_msg_id(),
                )
                code = int(status.Status) if "Status" in status else None
            except Exception as exc:  # the peer may have gone: fall back to a new association
                code = None
                log.warning("storage commitment report txn=%s failed (%s)", txn, exc)
            if code == SUCCESS:
                log.info("storage commitment report sent txn=%s on the same association", txn)
                return
            log.warning(
                "storage commitment report txn=%s not taken on the same association (%s)",
                txn,
                "no answer" if code is None else f"0x{code:04X}",
            )
        self._report_later(request, verdict, information)

    def _report_later(self, request: CommitRequest, verdict: Verdict, information: Dataset) -> None:
        txn = request.transaction_uid
        peer = next(
            (
                p
                for p in self._settings.allowed_calling_aes
                if p.ae_title == request.calling_ae
                and p.port is not None
                and (p.host is None or p.host == request.host)
            ),
            None,
        )
        if peer is None or peer.port is None:
            why = (
                f"no port for AE {request.calling_ae} in scp.allowed_calling_aes "
                "(needed to report on a new association)"
            )
            log.warning("storage commitment report txn=%s not sent: %s", txn, why)
            self.ledger.record(
                verdict.study_ids, f"storage commitment report {txn} not delivered: {why}"
            )
            return
        report = Report(
            transaction_uid=txn,
            event_type=verdict.event_type,
            information=information,
            called_ae=request.calling_ae,
            host=peer.host or request.host,
            port=peer.port,
            study_ids=frozenset(verdict.study_ids),
        )
        if not self.sender.submit(report):
            self._undelivered(report, "too many reports pending")

    def _undelivered(self, report: Report, why: str) -> None:
        log.warning(
            "storage commitment report txn=%s to=%s given up: %s",
            report.transaction_uid,
            report.called_ae,
            why,
        )
        self.ledger.record(
            report.study_ids,
            f"storage commitment report {report.transaction_uid} to {report.called_ae} "
            f"not delivered: {why}",
        )


class _Refused(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


def _may_report_on(assoc: Any, context_id: int) -> bool:
    """The association is open and the requester took the SCP role for the SOP class
    (so our side of the context may also act as SCU and send the report)."""
    if not assoc.is_established:
        return False
    for cx in assoc.accepted_contexts:
        if cx.context_id == context_id:
            return bool(cx.as_scu)
    return False

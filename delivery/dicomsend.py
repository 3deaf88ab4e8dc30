"""Hospital-to-hospital delivery: a ready request's studies sent to a DICOM destination.

A request whose recipient is a DICOM AE (:class:`~store.models.DicomDestination`) is
not packaged: :meth:`DicomDelivery.deliver` sends its instances by C-STORE, one
association per attempt, through an injected :class:`Sender` (the node passes
:func:`scp.storescu.attempt`; ``delivery`` may not import ``scp``). Per attempt:

1. claim the request, ``ready → packaging`` (here: "sending"; a conditional UPDATE)
   and count the attempt on the destination row, in one transaction, *before* any
   byte leaves;
2. send every instance not yet acknowledged (an instance the peer acknowledged in an
   earlier attempt, and did not later report as failed to commit, is never sent
   again), and ask for storage commitment as the destination says;
3. record one :class:`~store.models.DicomSend` row per instance tried (status, attempt,
   time; committed or failed where the peer reported) and the outcome, in one
   transaction with the request's move:

   - every instance acknowledged (and committed, when commitment is ``required``, or
     ``auto`` with a peer that offers it) → ``delivered`` (audited as an export);
   - a permanent failure (the peer refused the association for good; it accepts none
     of the instances' SOP class/transfer syntax pairs; nothing to send; a stored file
     could not be read, as when a package cannot be built: the others are sent and
     recorded, staff resend the request once the store is fixed) → ``failed`` and a
     staff alert in the outbox, like every other failed delivery;
   - anything else (peer down, busy, a failure status for some instances, no
     commitment when it is required, the sender failing unexpectedly) → back to
     ``ready`` with the next attempt due after :class:`~delivery.relay.RetryPolicy`'s
     backoff; after ``max_attempts``, ``failed`` and a staff alert.

   An exception out of the sender is such a failed attempt (nothing is recorded as
   acknowledged; the timeline says where it was raised): it never leaves
   :meth:`DicomDelivery.deliver`, so the request is not left ``packaging`` and the
   rest of the batch goes on. So is any other unexpected exception once the request is
   claimed (building the items, applying late reports, reading the progress, recording
   the outcome): if the request is still ``packaging``, the attempt is failed the
   same way (retry, or ``failed`` and a staff alert after ``max_attempts``), logged
   with the exception's type and file:line, never its message (it might quote a path
   or a value). Recording is one transaction, so a recording step that raised
   recorded nothing of the attempt: what it sent is not counted as acknowledged and
   is sent again (harmless to a PACS); the rows of earlier attempts stay as they were.
   A request no longer ``packaging`` (the step raised after its move was committed)
   is left as it is.

A stored file that is not the size the index recorded when it was received (cut short
inside its pixel data, or changed since) is not sent: the sender checks the size of
the file it opened against :attr:`PackageItem.size_bytes
<delivery.packaging.package.PackageItem>` and reports the instance ``unreadable``
(above). Only the size: hashing every file before it is sent would read it twice.

Each attempt's timeline entry says: sent N, acknowledged M, failed K, committed C. A
crash mid-attempt leaves the request ``packaging``; the batch's start-up recovery puts
it back to ``ready`` and the next attempt sends what was not recorded as acknowledged
(receiving an identical instance twice is harmless to a PACS).

Storage commitment ``auto`` with a peer that offers the SOP class but whose report
does not come in time, or that refuses the N-ACTION: delivered, and the timeline says
the commitment was not confirmed (``required`` retries instead).

Storage commitment reports reach the sender however the peer sends them: on the
sending association, or on a new association to Courier's main SCP, which records
them in ``commitment_reports`` (the sender polls it while it waits). Each instance
named in an N-ACTION carries that N-ACTION's Transaction UID on its
:class:`~store.models.DicomSend` row (the latest one, for an instance asked again), so
a report that comes in **after the sender stopped waiting** still counts: it is
applied to those rows when the request's next attempt starts (committed instances are
not asked again; failed ones are sent again), noted on the timeline, and marked
applied. A request that was already ``delivered`` (``auto`` without a report) has no
next attempt: its late report stays recorded, unapplied.

Log lines and timeline entries hold references, AE titles, counts and status codes:
no patient data.
"""

from __future__ import annotations

import json
import logging
import random
import traceback
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from delivery.outbox import Outbox
from delivery.packaging.errors import PackageError
from delivery.packaging.items import package_items
from delivery.packaging.package import PackageItem
from delivery.relay import RetryPolicy
from release.errors import InvalidTransition
from release.holds import is_free
from release.requests import RequestBook
from release.states import allowed
from store.audit import record
from store.catalog import guarded
from store.content import ContentStore
from store.models import (
    CommitmentMode,
    CommitmentReport,
    DicomDestination,
    DicomSend,
    ReleaseRequest,
    RequestEvent,
    RequestState,
    utcnow,
)

log = logging.getLogger("courier.delivery.dicomsend")
ACTOR = "delivery"

# C-STORE statuses that mean "stored" (PS3.4 B.2.3): success and the warnings.
_STORED = frozenset({0x0000, 0x0001, 0xB000, 0xB006, 0xB007})

DEFAULT_POLICY = RetryPolicy(base_s=60.0, cap_s=3600.0, max_attempts=8)

# What :meth:`DicomDelivery.deliver` returns for a request an attempt already moved.
_OUTCOMES = {
    RequestState.DELIVERED: "delivered",
    RequestState.READY: "retrying",
    RequestState.FAILED: "failed",
}


@dataclass(frozen=True)
class Target:
    """Where one attempt goes (a snapshot of the destination row)."""

    ae_title: str
    host: str
    port: int
    commitment: str

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


class AttemptReport(Protocol):
    """What the sender reports for one association (see :class:`scp.storescu.StoreReport`).

    ``statuses``: SOP Instance UID → the peer's C-STORE status (None: not answered).
    ``unsendable``: UIDs whose SOP class/transfer syntax the peer accepted no context
    for. ``unreadable``: UIDs not sent because their stored file could not be read.
    ``commitment``: ``off``, ``not-offered``, ``none-to-ask``, ``refused``,
    ``no-report`` or ``reported`` (then ``committed`` and ``commit_failed``).
    ``transaction_uid``: the N-ACTION's Transaction UID ("" when none was sent).
    ``error``/``permanent``: the association failed (after what ``statuses`` holds).
    """

    @property
    def statuses(self) -> Mapping[str, int | None]: ...
    @property
    def unsendable(self) -> AbstractSet[str]: ...
    @property
    def unreadable(self) -> AbstractSet[str]: ...
    @property
    def commitment(self) -> str: ...
    @property
    def committed(self) -> AbstractSet[str]: ...
    @property
    def commit_failed(self) -> Mapping[str, int]: ...
    @property
    def transaction_uid(self) -> str: ...
    @property
    def error(self) -> str: ...
    @property
    def permanent(self) -> bool: ...


class Sender(Protocol):
    """Sends ``items`` to ``target`` over one association and asks for commitment of
    those acknowledged plus ``commit_also``; never raises for network failures (they
    come back in the report). Should it raise anyway, the attempt counts as failed."""

    def __call__(
        self, target: Target, items: Sequence[PackageItem], commit_also: Sequence[PackageItem]
    ) -> AttemptReport: ...


def stored(status: int | None) -> bool:
    """True when a C-STORE status means the peer stored the instance."""
    return status is not None and status in _STORED


@dataclass(frozen=True)
class _Raised:
    """The report of an attempt whose sender raised: nothing known to be acknowledged."""

    error: str
    statuses: Mapping[str, int | None] = field(default_factory=dict)
    unsendable: AbstractSet[str] = frozenset()
    unreadable: AbstractSet[str] = frozenset()
    commitment: str = "off"
    committed: AbstractSet[str] = frozenset()
    commit_failed: Mapping[str, int] = field(default_factory=dict)
    transaction_uid: str = ""
    permanent: bool = False


def _where_raised(exc: BaseException) -> str:
    """The exception's type and the innermost line it came from (``scp/storescu.py:348``):
    enough to find it, and no message (it might name a file or a value)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    parts = Path(last.filename).parts
    return f"{type(exc).__name__} at {'/'.join(parts[-2:])}:{last.lineno}"


@dataclass(frozen=True)
class _Progress:
    """What earlier attempts achieved, per SOP Instance UID."""

    acked: dict[str, int]  # uid → id of the DicomSend row that recorded the ack
    committed: set[str]


class DicomDelivery:
    """Sends ready DICOM-destination requests; see the module docstring."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        content: ContentStore,
        book: RequestBook,
        outbox: Outbox,
        sender: Sender,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        report_studies: Callable[[Session, int], list[str]] | None = None,
    ) -> None:
        """``report_studies``: as the package's (:func:`package_items`): which report
        instances may go with the images; None: none."""
        self._report_studies = report_studies
        self._sessions = sessions
        self._content = content
        self._book = book
        self._outbox = outbox
        self._sender = sender
        self._policy = policy
        self._clock = clock
        self._rng = rng or random.SystemRandom()

    def deliver(self, reference: str) -> str:
        """One attempt for a ready request with a DICOM destination; returns
        ``delivered``, ``retrying``, ``failed`` or ``skipped`` (not due yet, or another
        run took it)."""
        claimed = self._claim(reference)
        if claimed is None:
            return "skipped"
        req_id, ref, target, attempt = claimed
        try:
            return self._attempt(req_id, ref, target, attempt)
        except Exception as exc:
            # Never out of the batch: the request would stay ``packaging`` and the
            # requests after it would wait (see the module docstring).
            return self._unexpected(req_id, ref, target, attempt, exc)

    def _attempt(self, req_id: int, ref: str, target: Target, attempt: int) -> str:
        """The claimed attempt: send, then record; returns as :meth:`deliver`."""
        try:
            items = package_items(
                self._sessions, self._content, req_id, report_studies=self._report_studies
            )
        except PackageError as exc:
            self._fail(req_id, f"nothing can be sent to {target}: {exc}", attempt)
            return "failed"
        self._apply_late_reports(req_id, ref)
        progress = self._progress(req_id)
        to_send = [i for i in items if i.sop_instance_uid not in progress.acked]
        commit_also: list[PackageItem] = []
        if target.commitment != CommitmentMode.OFF:
            commit_also = [
                i
                for i in items
                if i.sop_instance_uid in progress.acked
                and i.sop_instance_uid not in progress.committed
            ]
        log.info(
            "request %s: attempt %d to %s: %d to send, %d to commit",
            ref,
            attempt,
            target.ae_title,
            len(to_send),
            len(commit_also),
        )
        report = self._send(ref, target, to_send, commit_also)
        asked = {i.sop_instance_uid for i in commit_also}
        return self._record(req_id, ref, target, attempt, items, progress, asked, report)

    def _send(
        self,
        ref: str,
        target: Target,
        to_send: Sequence[PackageItem],
        commit_also: Sequence[PackageItem],
    ) -> AttemptReport:
        """The sender's report; a failed attempt's when it raised (see the module
        docstring): never an exception out of the batch."""
        try:
            return self._sender(target, to_send, commit_also)
        except Exception as exc:
            where = _where_raised(exc)
            log.error("request %s: the C-STORE sender to %s raised %s", ref, target.ae_title, where)
            return _Raised(
                f"the C-STORE sender to {target} failed unexpectedly ({where}); the attempt "
                "counts as failed and is tried again; if this repeats, report it with the "
                "node's log"
            )

    def _unexpected(
        self, req_id: int, ref: str, target: Target, attempt: int, exc: Exception
    ) -> str:
        """A claimed attempt that raised: failed through the usual path when the request
        is still ``packaging``; otherwise its state says what happened."""
        where = _where_raised(exc)
        log.error("request %s: the delivery to %s raised %s", ref, target.ae_title, where)
        why = (
            f"the delivery to {target} failed unexpectedly ({where}); nothing of this "
            "attempt was recorded as acknowledged, so it is tried again; if this repeats, "
            "report it with the node's log"
        )
        now = self._clock()
        with guarded(self._sessions) as s, s.begin():
            req = s.scalars(
                select(ReleaseRequest).where(ReleaseRequest.id == req_id).with_for_update()
            ).first()
            if req is None:
                return "skipped"
            if req.state != RequestState.PACKAGING or req.destination is None:
                # Moved before the step raised (the move is committed): leave it.
                return _OUTCOMES.get(RequestState(req.state), "skipped")
            req.destination.last_error = why[:2000]
            return self._retry_or_fail(s, req, ref, target, attempt, f"attempt {attempt}", why, now)

    # -- claiming ---------------------------------------------------------------------

    def _claim(self, reference: str) -> tuple[int, str, Target, int] | None:
        now = self._clock()
        with guarded(self._sessions) as s, s.begin():
            # Locked against staff holding it meanwhile (release.embargo locks it too).
            req = s.scalars(
                select(ReleaseRequest)
                .where(ReleaseRequest.reference == reference)
                .with_for_update()
            ).first()
            if req is None or req.destination is None or req.state != RequestState.READY:
                return None
            if not is_free(req, now):
                return None  # held (an embargo, the report, staff): not sent yet
            dest = req.destination
            if dest.next_attempt_at is not None and dest.next_attempt_at > now:
                return None
            target = Target(dest.ae_title, dest.host, dest.port, str(dest.commitment))
            attempt = dest.attempts + 1
            try:
                self._book.move(
                    s,
                    req,
                    RequestState.READY,
                    RequestState.PACKAGING,
                    ACTOR,
                    f"sending to {target} by C-STORE (attempt {attempt})",
                    now,
                )
            except InvalidTransition:
                return None  # another run took it
            dest.attempts = attempt
            dest.next_attempt_at = None
            return req.id, req.reference, target, attempt

    def _apply_late_reports(self, req_id: int, ref: str) -> None:
        """Apply the reports recorded for this request's Transaction UIDs that no
        attempt has applied yet (they came after the sender stopped waiting)."""
        now = self._clock()
        with guarded(self._sessions) as s, s.begin():
            asked = (
                select(DicomSend.transaction_uid)
                .where(DicomSend.request_id == req_id, DicomSend.transaction_uid != "")
                .distinct()
                .scalar_subquery()
            )
            reports = s.scalars(
                select(CommitmentReport)
                .where(
                    CommitmentReport.transaction_uid.in_(asked),
                    CommitmentReport.applied_at.is_(None),
                )
                .order_by(CommitmentReport.id)
            ).all()
            if not reports:
                return
            req = s.get(ReleaseRequest, req_id)
            assert req is not None
            for rep in reports:
                committed = set(json.loads(rep.committed or "[]"))
                failed = set(json.loads(rep.failed or "{}"))
                rows = s.scalars(
                    select(DicomSend).where(
                        DicomSend.request_id == req_id,
                        DicomSend.transaction_uid == rep.transaction_uid,
                    )
                ).all()
                n_committed = n_failed = 0
                for row in rows:
                    if row.sop_instance_uid in failed:
                        row.commitment = "failed"
                        n_failed += 1
                    elif row.sop_instance_uid in committed:
                        row.commitment = "committed"
                        n_committed += 1
                rep.applied_at = now
                s.add(
                    RequestEvent(
                        request_id=req_id,
                        at=now,
                        actor=ACTOR,
                        from_state=req.state,
                        to_state=req.state,
                        reason=f"storage commitment report {rep.transaction_uid} came after "
                        f"the wait: committed {n_committed}, commitment failed {n_failed}",
                    )
                )
                log.info(
                    "request %s: late storage commitment report %s applied "
                    "(%d committed, %d failed)",
                    ref,
                    rep.transaction_uid,
                    n_committed,
                    n_failed,
                )

    def _progress(self, req_id: int) -> _Progress:
        acked: dict[str, int] = {}
        committed: set[str] = set()
        with guarded(self._sessions) as s:
            rows = s.execute(
                select(
                    DicomSend.id, DicomSend.sop_instance_uid, DicomSend.status, DicomSend.commitment
                )
                .where(DicomSend.request_id == req_id)
                .order_by(DicomSend.id)
            ).all()
        for row_id, uid, status, commitment in rows:
            if stored(status):
                acked[uid] = row_id
            if commitment == "committed":
                committed.add(uid)
            elif commitment == "failed":
                # The peer says it does not hold it after all: send it again.
                acked.pop(uid, None)
                committed.discard(uid)
        return _Progress(acked, committed)

    # -- recording --------------------------------------------------------------------

    def _record(
        self,
        req_id: int,
        ref: str,
        target: Target,
        attempt: int,
        items: Sequence[PackageItem],
        progress: _Progress,
        commit_also: AbstractSet[str],
        report: AttemptReport,
    ) -> str:
        now = self._clock()
        statuses = dict(report.statuses)
        sent = len(statuses)
        acked_now = {uid for uid, st in statuses.items() if stored(st)}
        failed_now = sent - len(acked_now)
        reported = report.commitment == "reported"
        committed = set(report.committed) if reported else set()
        commit_failed = dict(report.commit_failed) if reported else {}
        all_uids = {i.sop_instance_uid for i in items}
        acked_all = (set(progress.acked) | acked_now) - set(commit_failed)
        committed_all = (progress.committed | committed) - set(commit_failed)
        with guarded(self._sessions) as s, s.begin():
            new_rows: dict[str, DicomSend] = {}
            for uid, status in statuses.items():
                row = DicomSend(
                    request_id=req_id,
                    attempt=attempt,
                    sop_instance_uid=uid,
                    status=status,
                    at=now,
                    commitment="",
                )
                s.add(row)
                new_rows[uid] = row
            s.flush()
            for uid in committed | set(commit_failed):
                row_id = new_rows[uid].id if uid in new_rows else progress.acked.get(uid)
                found = s.get(DicomSend, row_id) if row_id is not None else None
                if found is not None:
                    found.commitment = "committed" if uid in committed else "failed"
            if report.commitment == "no-report":
                for uid in acked_now:
                    new_rows[uid].commitment = "no-report"
            txn = report.transaction_uid
            if txn and report.commitment != "refused":
                # The N-ACTION named these: a report for it, however late, finds them.
                for uid in acked_now | set(commit_also):
                    named = new_rows.get(uid) or s.get(DicomSend, progress.acked.get(uid, -1))
                    if named is not None:
                        named.transaction_uid = txn
                if reported:
                    s.execute(
                        update(CommitmentReport)
                        .where(
                            CommitmentReport.transaction_uid == txn,
                            CommitmentReport.applied_at.is_(None),
                        )
                        .values(applied_at=now)
                    )
            unreadable = len(set(report.unreadable))
            counts = (
                f"sent {sent}, acknowledged {len(acked_now)}, failed {failed_now}, "
                f"committed {len(committed)}"
                + (f", commitment failed {len(commit_failed)}" if commit_failed else "")
                + (f", unreadable {unreadable}" if unreadable else "")
            )
            summary = f"attempt {attempt} to {target}: {counts}"
            outcome, why = self._judge(target, report, all_uids, acked_all, committed_all)
            req = s.get(ReleaseRequest, req_id)
            assert req is not None and req.destination is not None
            dest: DicomDestination = req.destination
            dest.last_error = "" if outcome == "delivered" else why[:2000]
            if outcome == "delivered":
                self._book.move(
                    s,
                    req,
                    RequestState.PACKAGING,
                    RequestState.DELIVERED,
                    ACTOR,
                    f"{summary}; delivered: {len(all_uids)} instance(s) acknowledged"
                    + (f" ({why})" if why else ""),
                    now,
                )
                record(
                    s,
                    "export",
                    actor=ACTOR,
                    studies=sorted({i.study_uid for i in items}),
                    request=ref,
                    detail=f"sent by C-STORE to {target}: {len(all_uids)} instance(s), "
                    f"{len(committed_all)} committed",
                    at=now,
                )
                log.info("request %s delivered to %s", ref, target.ae_title)
                return "delivered"
            if outcome == "retry":
                return self._retry_or_fail(s, req, ref, target, attempt, summary, why, now)
            self._fail_in(s, req, f"{summary}; {why}", now)
            return "failed"

    def _retry_or_fail(
        self,
        s: Session,
        req: ReleaseRequest,
        ref: str,
        target: Target,
        attempt: int,
        summary: str,
        why: str,
        now: datetime,
    ) -> str:
        """A failed attempt of a ``packaging`` request, in the caller's transaction:
        back to ``ready`` after the backoff, or ``failed`` and a staff alert after
        ``max_attempts``; returns ``retrying`` or ``failed``."""
        dest = req.destination
        assert dest is not None
        if attempt < self._policy.max_attempts:
            wait = self._policy.delay(attempt, self._rng, None)
            dest.next_attempt_at = now + timedelta(seconds=wait)
            self._book.move(
                s,
                req,
                RequestState.PACKAGING,
                RequestState.READY,
                ACTOR,
                f"{summary}; {why}; next attempt in {wait:.0f} s",
                now,
            )
            log.warning("request %s: attempt %d to %s failed", ref, attempt, target.ae_title)
            return "retrying"
        why = f"gave up after {attempt} attempts; last: {why}"
        self._fail_in(s, req, f"{summary}; {why}", now)
        return "failed"

    def _judge(
        self,
        target: Target,
        report: AttemptReport,
        all_uids: set[str],
        acked_all: set[str],
        committed_all: set[str],
    ) -> tuple[str, str]:
        """(``delivered``, note) or (``retry``/``failed``, why)."""
        if report.permanent:
            return "failed", report.error
        missing = all_uids - acked_all
        if missing:
            if report.error:
                return "retry", report.error
            unreadable = set(report.unreadable) & missing
            if unreadable:
                return "failed", (
                    f"{len(unreadable)} stored file(s) could not be read and were not sent "
                    "(the log names the instances); check the content store, then send "
                    "the request again"
                )
            unsendable = set(report.unsendable)
            if unsendable and unsendable >= missing:
                return "failed", (
                    f"{target.ae_title} accepts none of the SOP class/transfer syntax pairs "
                    f"of {len(unsendable)} instance(s); ask its admin to accept them"
                )
            return "retry", f"{len(missing)} instance(s) not acknowledged"
        mode = CommitmentMode(target.commitment)
        if mode is CommitmentMode.OFF:
            return "delivered", ""
        uncommitted = all_uids - committed_all
        if not uncommitted:
            return "delivered", f"{len(all_uids)} committed"
        if report.error:
            return "retry", report.error
        state = report.commitment
        if state == "not-offered":
            if mode is CommitmentMode.REQUIRED:
                return "retry", (
                    f"storage commitment is required and {target.ae_title} does not offer it"
                )
            return "delivered", "the peer does not offer storage commitment"
        if state == "reported":
            return "retry", f"{len(uncommitted)} instance(s) not committed"
        if mode is CommitmentMode.REQUIRED:
            return "retry", f"storage commitment not confirmed ({state})"
        return "delivered", f"storage commitment not confirmed ({state})"

    def _fail(self, req_id: int, why: str, attempt: int) -> None:
        with guarded(self._sessions) as s, s.begin():
            req = s.get(ReleaseRequest, req_id)
            assert req is not None
            self._fail_in(s, req, why, self._clock())

    def _fail_in(self, s: Session, req: ReleaseRequest, why: str, now: datetime) -> None:
        """``packaging → failed`` and a staff alert, in the caller's transaction."""
        log.error("request %s: delivery to a DICOM destination failed", req.reference)
        if req.destination is not None:
            req.destination.last_error = why[:2000]
        state = RequestState(req.state)
        if not allowed(state, RequestState.FAILED):
            return
        self._book.move(s, req, state, RequestState.FAILED, ACTOR, why[:2000], now)
        self._outbox.alert(s, "failed", reference=req.reference, request_id=req.id)

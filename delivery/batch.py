"""The delivery batch: ready requests become packages, grants and queued link emails.

For each ready request (urgent ones only, on the urgent path):

1. claim it, ``ready → packaging`` (:meth:`DeliveryBatch.claim_next`: ``FOR UPDATE SKIP
   LOCKED`` on PostgreSQL, so workers on several nodes take different requests, and a
   conditional UPDATE: two batches never take one);
2. build its package from the stored instances of its attached studies into
   ``<package_dir>/<reference>/`` (written under a temporary name, renamed when whole);
3. in one transaction: the package row, a grant for the recipient, ``packaging →
   notified`` and the link email in the outbox.

A ready request its release policy holds (an embargo until a time, the wait for the
final report, a staff hold: :mod:`release.embargo`) stays ``ready`` and is not taken,
on the urgent path too; the ``gate`` applies the policy in the claim's transaction to a
request the policy's sweep has not seen yet.

A package that cannot be built (an instance file missing or unreadable) moves the
request to ``failed`` and alerts staff in one transaction: never a partial release. A
crash mid-build leaves the request in ``packaging``; :meth:`DeliveryBatch.recover`
sweeps the half-written files and puts such requests back to ``ready``, so the next
run rebuilds them. A builder holds an advisory lock on the request while it works,
which PostgreSQL drops when its node dies: recovery touches only requests whose lock
is free, so it is safe while other nodes are packaging.

A request whose recipient is a DICOM destination (hospital-to-hospital) is not
packaged: :meth:`DeliveryBatch.deliver` hands it to :class:`delivery.dicomsend.DicomDelivery`
(C-STORE with retries, storage commitment, per-instance records). Once its first
attempt was made, it is retried on the urgent path as soon as its next attempt is due,
whatever its urgency (a hospital that was down for an hour should not wait a night).

A built package is audited as an ``export`` (PS3.15 "Export") in the transaction that
records it. When every link of a request has run out it becomes ``expired``
(:meth:`DeliveryBatch.expire`); its package files are deleted ``purge_grace_days``
later (:meth:`DeliveryBatch.purge_packages`; those of a cancelled request that long
after the cancellation), and each deletion is audited as ``package-deleted``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Connection, Engine, Select, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from delivery.dicomsend import DicomDelivery
from delivery.grants import GrantKeys, new_grant
from delivery.outbox import Outbox
from delivery.packaging.errors import PackageError
from delivery.packaging.items import package_items
from delivery.packaging.package import (
    PackageInfo,
    PackageResult,
    Progress,
    build_package,
    sweep_partial,
)
from delivery.packaging.preview import RenderLimits
from delivery.packaging.viewer import ViewerOptions
from delivery.report_render import ReportFile, report_files
from release.embargo import releasable
from release.errors import InvalidTransition
from release.requests import RequestBook, study_uids
from store.audit import record
from store.catalog import guarded
from store.claims import holding, is_postgres, lock_connection, skip_locked, try_lock, unlock
from store.content import DIR_MODE, ContentStore
from store.errors import DatabaseUnavailable
from store.models import (
    DicomDestination,
    Grant,
    JobRun,
    Package,
    ReleaseRequest,
    ReportDelivery,
    RequestEvent,
    RequestState,
    Urgency,
    utcnow,
)
from telemetry import metrics

log = logging.getLogger("courier.delivery.batch")
ACTOR = "delivery"
#: The advisory lock a builder holds on a request while it packages it (store.claims).
PACKAGING_LOCK = "packaging"


@dataclass
class BatchReport:
    """What one run did, by request reference."""

    notified: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)  # sent to a DICOM destination
    retrying: list[str] = field(default_factory=list)  # a DICOM send to try again later


class DeliveryBatch:
    """Packages ready requests and queues their link emails."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        content: ContentStore,
        book: RequestBook,
        outbox: Outbox,
        keys: GrantKeys,
        package_dir: Path,
        *,
        contact: str = "",
        max_part_bytes: int | None = None,
        preview_limits: RenderLimits | None = None,
        viewer: ViewerOptions | None = None,
        purge_grace_days: int = 0,
        clock: Callable[[], datetime] = utcnow,
        dicom: DicomDelivery | None = None,
        gate: Callable[[Session, ReleaseRequest, datetime], bool] | None = None,
        report_studies: Callable[[Session, int], list[str]] | None = None,
    ) -> None:
        """``gate(session, request, now)`` runs in the claim's transaction and says
        whether a ready request may be packaged now (the release policy:
        :meth:`release.embargo.ReleaseKeeper.gate`); None: every ready request may.
        ``report_studies(session, request_id)``: the request's studies whose current
        reports go in ``REPORT/`` (``delivery.reports`` and the rules'
        ``reports:``, :func:`release.reports.studies_with_reports`); None: no reports."""
        self._gate = gate
        self._report_studies = report_studies
        self._sessions = sessions
        self._dicom = dicom
        self._grace = timedelta(days=purge_grace_days)
        self._content = content
        self._book = book
        self._outbox = outbox
        self._keys = keys
        self._dir = package_dir
        self._contact = contact
        self._max_part = max_part_bytes
        self._preview_limits = preview_limits
        self._viewer = viewer  # the offline viewer in every package (None: none)
        self._clock = clock

    def recover(self) -> list[str]:
        """Requests whose packaging was interrupted go back to ``ready`` (their
        half-built files swept first), so a run rebuilds them. Returns their references.

        "Interrupted" means nobody holds the request's packaging lock: a builder holds
        it (:func:`store.claims.holding`) from before its claim commits until the
        request has moved on, and PostgreSQL drops it when the builder's connection
        dies. So on PostgreSQL this is safe at any time, while other nodes package
        (the node runs it at start-up and in its worker sweeps), and touches only the
        work of dead nodes; the lock is held while the folder is swept and the request
        moved. On SQLite (one node) every lock is free: call it at start-up only.
        """
        self._dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        with guarded(self._sessions) as s:
            stuck = list(
                s.execute(
                    select(ReleaseRequest.id, ReleaseRequest.reference).where(
                        ReleaseRequest.state == RequestState.PACKAGING
                    )
                )
            )
            single = not is_postgres(s.connection())
        if single:  # the only node: leftovers anywhere are its own
            for folder in [self._dir, *(p for p in self._dir.iterdir() if p.is_dir())]:
                sweep_partial(folder)
        moved = []
        with lock_connection(self._engine()) as conn:
            for rid, ref in stuck:
                with holding(conn, PACKAGING_LOCK, rid) as free:
                    if not free:
                        continue  # a live node is building it
                    sweep_partial(self._dir / ref)
                    try:
                        self._book.transition(
                            ref,
                            RequestState.READY,
                            ACTOR,
                            "packaging was interrupted (its node stopped); it will be rebuilt",
                            from_state=RequestState.PACKAGING,
                        )
                        moved.append(ref)
                    except InvalidTransition:
                        pass  # it finished in between
        return moved

    def _engine(self) -> Engine:
        with self._sessions() as s:
            bind = s.get_bind()
        return bind if isinstance(bind, Engine) else bind.engine

    def _ready_query(self, *, urgent_only: bool) -> Select[ReleaseRequest]:
        q = (
            select(ReleaseRequest)
            .outerjoin(DicomDestination, DicomDestination.request_id == ReleaseRequest.id)
            .where(
                ReleaseRequest.state == RequestState.READY,
                releasable(self._clock()),  # not held by its release policy or staff
                or_(
                    DicomDestination.next_attempt_at.is_(None),
                    DicomDestination.next_attempt_at <= self._clock(),
                ),
            )
        )
        if urgent_only:
            q = q.where(or_(ReleaseRequest.urgency == Urgency.NOW, DicomDestination.attempts > 0))
        return q.order_by(ReleaseRequest.updated_at, ReleaseRequest.id)

    def ready(self, *, urgent_only: bool = False) -> list[str]:
        """References of the requests a run would take, oldest first (a DICOM send only
        once its next attempt is due)."""
        q = self._ready_query(urgent_only=urgent_only)
        with guarded(self._sessions) as s:
            return [r.reference for r in s.scalars(q)]

    def claim_next(
        self, conn: Connection, *, urgent_only: bool = False, passed: set[int] | None = None
    ) -> tuple[int, str, bool] | None:
        """Claim the oldest ready request nobody else is claiming: ``(id, reference,
        packaging)``; None when there is none.

        The SELECT takes ``FOR UPDATE SKIP LOCKED`` (concurrent workers get different
        requests); in the same transaction the packaging lock is taken on ``conn`` and
        the request moved ``ready → packaging`` by the conditional move (the
        exactly-once guard, and what decides on SQLite). The caller builds the package
        and then must :func:`store.claims.unlock` ``conn``. A request to a DICOM
        destination is returned unmoved (``packaging`` False: :class:`DicomDelivery`
        claims it itself); put its id in ``passed`` so the next call skips it.
        """
        skip = passed if passed is not None else set()
        while True:
            q = self._ready_query(urgent_only=urgent_only).limit(1)
            if skip:
                q = q.where(ReleaseRequest.id.not_in(skip))
            locked = False
            try:
                with guarded(self._sessions) as s, s.begin():
                    req = s.scalars(skip_locked(q, ReleaseRequest)).first()
                    if req is None:
                        return None
                    rid, ref = req.id, req.reference
                    if self._gate is not None and not self._gate(s, req, self._clock()):
                        skip.add(rid)  # held: its hold commits with this transaction
                        continue
                    if req.destination is not None:
                        return rid, ref, False
                    locked = try_lock(conn, PACKAGING_LOCK, rid)
                    if not locked:
                        skip.add(rid)  # a recovery pass holds it this instant
                        continue
                    now = self._clock()
                    self._book.move(
                        s, req, RequestState.READY, RequestState.PACKAGING, ACTOR, "packaging", now
                    )
            except InvalidTransition:
                unlock(conn, PACKAGING_LOCK, rid)
                continue  # another worker took it first (SQLite): it left ready
            except BaseException:
                if locked:
                    unlock(conn, PACKAGING_LOCK, rid)
                raise
            return rid, ref, True

    def run(
        self,
        *,
        urgent_only: bool = False,
        progress: Callable[[str], Progress | None] | None = None,
        job: str | None = None,
    ) -> BatchReport:
        """Deliver every ready (or, with ``urgent_only``, every urgent ready) request.

        ``progress(reference)`` may return a per-package ``(done, total)`` callback (the
        CLI's progress bar). ``job`` names the run in ``job_runs`` (e.g. ``batch``).
        """
        started = self._clock()
        report = BatchReport()
        passed: set[int] = set()  # DICOM sends handed over this run (they may stay ready)
        with lock_connection(self._engine()) as conn:
            while got := self.claim_next(conn, urgent_only=urgent_only, passed=passed):
                rid, ref, packaging = got
                if packaging:
                    try:
                        outcome = self._build(ref, progress(ref) if progress else None)
                    finally:
                        unlock(conn, PACKAGING_LOCK, rid)
                else:
                    passed.add(rid)
                    outcome = self._send_dicom(ref)
                getattr(report, outcome).append(ref)
        if job:
            self._mark(job, started)
        if report.notified or report.failed:
            log.info(
                "batch: %d notified, %d failed, %d skipped",
                len(report.notified),
                len(report.failed),
                len(report.skipped),
            )
        return report

    def deliver(self, reference: str, progress: Progress | None = None) -> str:
        """Package one ready request; returns ``notified``, ``failed`` or ``skipped``
        (a DICOM destination's: ``delivered``, ``retrying``, ``failed`` or ``skipped``)."""
        req = self._book.get(reference)
        if self._gate is not None:
            with guarded(self._sessions) as s, s.begin():
                fresh = s.get(ReleaseRequest, req.id)
                held = fresh is not None and fresh.state == RequestState.READY
                if fresh is None or (held and not self._gate(s, fresh, self._clock())):
                    return "skipped"  # held by its release policy or by staff
        if req.destination is not None:
            return self._send_dicom(reference)
        with (
            lock_connection(self._engine()) as conn,
            holding(conn, PACKAGING_LOCK, req.id) as free,
        ):
            if not free:
                return "skipped"  # another worker is claiming or recovering it
            try:
                self._book.transition(
                    reference,
                    RequestState.PACKAGING,
                    ACTOR,
                    "packaging",
                    from_state=RequestState.READY,
                )
            except InvalidTransition:
                return "skipped"  # another run took it, or it changed
            return self._build(reference, progress)

    def _build(self, reference: str, progress: Progress | None) -> str:
        """Build the package of a request this worker claimed (``packaging``)."""
        req = self._book.get(reference)
        now = self._clock()
        started = time.monotonic()
        try:
            items = package_items(
                self._sessions, self._content, req.id, report_studies=self._report_studies
            )
            reports = self._reports(req)
            result = build_package(
                items,
                self._dir / req.reference,
                info=PackageInfo(
                    reference=req.reference,
                    language=req.language,
                    contact=self._contact,
                    created=now,
                    reports=tuple((r.name, r.data) for r in reports),
                ),
                max_part_bytes=self._max_part,
                progress=progress,
                preview_limits=self._preview_limits,
                viewer=self._viewer,
            )
        except (PackageError, OSError) as exc:
            self._fail(req, f"package could not be built: {exc}")
            return "failed"
        metrics.package_built(time.monotonic() - started)
        self._notify(
            req, result, now, sorted({i.study_uid for i in items}), [r.report_id for r in reports]
        )
        return "notified"

    def _reports(self, req: ReleaseRequest) -> list[ReportFile]:
        """The ``REPORT/`` files of the request (none when its policy sends none). A
        report that cannot be read raises OSError: the package fails, never silently
        without the report the policy promised."""
        if self._report_studies is None:
            return []
        with guarded(self._sessions) as s:
            uids = self._report_studies(s, req.id)
            if not uids:
                return []
            try:
                return report_files(s, self._content, uids, req.language)
            except (ValueError, AttributeError, KeyError) as exc:  # pydicom on a bad file
                raise OSError(f"a report of the request could not be read ({exc})") from None

    def _send_dicom(self, reference: str) -> str:
        if self._dicom is None:
            # A node built without a DICOM sender: leave the request ready, say why.
            log.warning("request %s: no DICOM sender configured; not sent", reference)
            return "skipped"
        # Held like a package build, so no recovery sweep takes a send in progress (its
        # ``packaging`` can last the whole commitment wait) back to ready.
        rid = self._book.get(reference).id
        with (
            lock_connection(self._engine()) as conn,
            holding(conn, PACKAGING_LOCK, rid) as free,
        ):
            if not free:
                return "skipped"  # another worker is sending or recovering it
            return self._dicom.deliver(reference)

    def _notify(
        self,
        req: ReleaseRequest,
        result: PackageResult,
        now: datetime,
        studies: list[str],
        report_ids: Sequence[int] = (),
    ) -> None:
        with guarded(self._sessions) as s, s.begin():
            fresh = s.get(ReleaseRequest, req.id)
            assert fresh is not None
            package = Package(
                request_id=req.id,
                folder=req.reference,
                parts=json.dumps(
                    [
                        {"name": p.name, "size": n, "sha256": h}
                        for p, n, h in zip(
                            result.parts, result.part_bytes, result.part_sha256, strict=True
                        )
                    ]
                ),
                studies=result.studies,
                instances=result.instances,
                size_bytes=result.total_bytes,
                built_at=now,
            )
            s.add(package)
            s.flush()
            for report_id in report_ids:  # what a later correction is compared with
                s.add(
                    ReportDelivery(
                        report_id=report_id,
                        request_id=req.id,
                        package_id=package.id,
                        delivered_at=now,
                    )
                )
            grant = new_grant(
                s, self._keys, fresh, package_id=package.id, link_days=fresh.link_days, now=now
            )
            self._book.move(
                s,
                fresh,
                RequestState.PACKAGING,
                RequestState.NOTIFIED,
                ACTOR,
                f"package built ({result.instances} instances, {len(result.parts)} part(s), "
                f"{result.total_bytes / 1e6:.1f} MB); link email queued, valid "
                f"{fresh.link_days} days",
                now,
            )
            self._outbox.enqueue(
                s,
                kind="link_email",
                channel="email",
                recipient=fresh.recipient_email,
                language=fresh.language,
                request_id=fresh.id,
                grant_id=grant.id,
            )
            record(
                s,
                "export",
                actor=ACTOR,
                studies=studies,
                request=fresh.reference,
                detail=f"package built for the patient's link: {result.instances} instances, "
                f"{len(result.parts)} part(s), {result.total_bytes} bytes",
                at=now,
            )

    def _fail(self, req: ReleaseRequest, why: str) -> None:
        log.error("request %s: packaging failed", req.reference)
        with guarded(self._sessions) as s, s.begin():
            fresh = s.get(ReleaseRequest, req.id)
            assert fresh is not None
            try:
                self._book.move(
                    s,
                    fresh,
                    RequestState.PACKAGING,
                    RequestState.FAILED,
                    ACTOR,
                    why[:1000],
                    self._clock(),
                )
            except InvalidTransition:
                return
            self._outbox.alert(s, "failed", reference=fresh.reference, request_id=fresh.id)

    def _mark(self, job: str, started: datetime) -> None:
        """Record a completed run of ``job`` (its start and end)."""
        with guarded(self._sessions) as s, s.begin():
            row = s.get(JobRun, job) or JobRun(name=job)
            row.started_at = started
            row.finished_at = self._clock()
            s.add(row)

    def last_run(self, job: str = "batch") -> datetime | None:
        """When the last *completed* run of ``job`` started (a run that crashed does not
        count, so the scheduler's catch-up runs it again)."""
        with guarded(self._sessions) as s:
            row = s.get(JobRun, job)
            return None if row is None else row.started_at

    def expire(self) -> list[str]:
        """Requests whose every link has run out become ``expired`` (nobody can download
        from then on); then packages past their grace are purged (see
        :meth:`purge_packages`). Returns the references that expired.

        A link extended (or its request reopened) after the due list was read is not
        expired: each move locks the request's links (on PostgreSQL it waits for an
        extension in flight, on any node, and reads its commit) and its UPDATE requires,
        besides the state, that no link of the request expires after now."""
        now = self._clock()
        expired = []
        days = self._grace.days
        for rid, reference, state in self._expiring(now):
            try:
                moved = self._expire_one(rid, state, now, days)
            except DatabaseUnavailable as exc:
                # E.g. PostgreSQL's lock_timeout behind a slow extension of this request:
                # the next sweep tries it again; the other requests go on.
                log.warning("request %s not expired this sweep: %s", reference, exc)
                continue
            if moved:
                expired.append(reference)
        self.purge_packages()
        return expired

    def _expire_one(self, rid: int, state: str, now: datetime, days: int) -> bool:
        """Move one request to ``expired`` if no link of it is live; False if it was not."""
        with guarded(self._sessions) as s, s.begin():
            req = s.get(ReleaseRequest, rid)
            assert req is not None
            # PostgreSQL: wait for whoever holds a link's row lock (an extension,
            # portal.grantsession.lock_grant) to commit. SQLite: nothing; its UPDATE
            # below runs under the database's one write lock and sees the last commit.
            s.execute(select(Grant.id).where(Grant.request_id == rid).with_for_update())
            live_link = (
                select(Grant.id).where(Grant.request_id == rid, Grant.expires_at > now).exists()
            )
            try:
                self._book.move(
                    s,
                    req,
                    RequestState(state),
                    RequestState.EXPIRED,
                    ACTOR,
                    f"the link's life ended; package files are deleted after {days} days",
                    now,
                    provided=~live_link,
                )
            except InvalidTransition:
                return False
        return True

    def _expiring(self, now: datetime) -> list[tuple[int, str, str]]:
        """The live requests whose every link has run out by ``now``: (id, reference,
        state). Only a list: :meth:`expire` checks each again as it moves it."""
        live = (RequestState.NOTIFIED, RequestState.DOWNLOADED)
        with guarded(self._sessions) as s:
            return [
                (rid, reference, state)
                for rid, reference, state in s.execute(
                    select(ReleaseRequest.id, ReleaseRequest.reference, ReleaseRequest.state)
                    .join(Grant, Grant.request_id == ReleaseRequest.id)
                    .where(ReleaseRequest.state.in_(live))
                    .group_by(ReleaseRequest.id, ReleaseRequest.reference, ReleaseRequest.state)
                    .having(func.max(Grant.expires_at) <= now)
                )
            ]

    def purge_packages(self) -> list[str]:
        """Delete the files of packages whose grace has passed: ``purge_grace_days``
        after the request's last link expired (an expired request) or after it was
        cancelled. The package row stays with ``deleted_at`` set, and a
        ``package-deleted`` audit event names the request and its studies; the files go
        after that commit (a crash in between leaves files the next sweep cannot see,
        never a row claiming files that are gone). Returns the references purged."""
        now = self._clock()
        with guarded(self._sessions) as s:
            expiry = dict(
                s.execute(
                    select(Grant.request_id, func.max(Grant.expires_at))
                    .join(ReleaseRequest, ReleaseRequest.id == Grant.request_id)
                    .where(ReleaseRequest.state == RequestState.EXPIRED)
                    .group_by(Grant.request_id)
                ).all()
            )
            cancelled = dict(
                s.execute(
                    select(RequestEvent.request_id, func.min(RequestEvent.at))
                    .join(ReleaseRequest, ReleaseRequest.id == RequestEvent.request_id)
                    .where(
                        ReleaseRequest.state == RequestState.CANCELLED,
                        RequestEvent.to_state == RequestState.CANCELLED,
                    )
                    .group_by(RequestEvent.request_id)
                ).all()
            )
            packages = list(
                s.execute(
                    select(Package.id, Package.request_id, Package.folder, ReleaseRequest.reference)
                    .join(ReleaseRequest, ReleaseRequest.id == Package.request_id)
                    .where(
                        Package.deleted_at.is_(None),
                        ReleaseRequest.state.in_([RequestState.EXPIRED, RequestState.CANCELLED]),
                    )
                    .order_by(Package.id)
                )
            )
        purged = []
        for package_id, rid, folder, reference in packages:
            ended = expiry.get(rid) or cancelled.get(rid)
            if ended is None or ended + self._grace > now:
                continue
            with guarded(self._sessions) as s, s.begin():
                studies = study_uids(s, rid)
                done = s.execute(  # type: ignore[attr-defined]
                    update(Package)
                    .where(Package.id == package_id, Package.deleted_at.is_(None))
                    .values(deleted_at=now)
                ).rowcount
                if not done:
                    continue  # another sweep took it
                record(
                    s,
                    "package-deleted",
                    actor="node",
                    studies=studies,
                    request=reference,
                    detail=f"package files deleted {self._grace.days} days after the link ended",
                    at=now,
                )
            shutil.rmtree(self._dir / folder, ignore_errors=True)
            purged.append(reference)
        return purged

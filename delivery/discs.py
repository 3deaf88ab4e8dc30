"""The CD burn queue: requests that get a disc because the secure link did not do.

Public surface: :class:`DiscQueue` (the sweep the node runs on its housekeeping cadence,
and the staff actions :meth:`~DiscQueue.queue`, :meth:`~DiscQueue.burned`,
:meth:`~DiscQueue.cancel`, each in the caller's transaction), :func:`open_job`,
:data:`WHY_TEXT`, and the error :class:`DiscRefused`. Writing the image is
:mod:`delivery.disc_images`.

A request becomes a **candidate** (a :class:`~store.models.DiscJob`) automatically when

- ``failed``: its delivery failed permanently (state ``failed``);
- ``overdue``: it has been ``overdue`` for ``delivery.cd_after_h`` hours;
- ``unopened``: its patient's newest link ran out (not revoked) and no patient link of
  it was ever opened;

and when staff press "Mark for CD" (``staff``). Each automatic job is written in one
transaction with a ``queued for CD: <why>`` note on the request's timeline and a
``disc`` staff alert in the outbox (staff queuing it themselves need no alert).

**Idempotent**: the database allows one open job per request (a partial unique index),
and the sweep never queues a request that has an open job, or any job queued since its
reason began (entering ``failed``/``overdue``, the link's expiry). So a job staff
cancelled stays cancelled while the same episode lasts; a *new* failure queues again.

**Recovery**: an automatic job whose reason no longer holds is cancelled by the sweep,
with a note (a duplicate release on disc is worse than none): ``failed``/``overdue`` when
the request is delivering again (``receiving`` … ``downloaded``, ``delivered``),
``unopened`` when the patient's link works again (extended, re-issued) or was opened.
A request that is cancelled loses its open job, whatever its reason. Burned jobs are
never touched. A cancelled job's image file is deleted after the commit.

Errors: :class:`DiscRefused` (a :class:`ValueError`): the action makes no sense now; its
message is for staff. Database failures surface as
:class:`~store.errors.DatabaseUnavailable`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased, sessionmaker

from delivery.outbox import Outbox
from release.errors import InvalidTransition
from release.requests import RequestBook, study_uids
from store.audit import record
from store.catalog import guarded
from store.models import (
    DiscJob,
    DiscWhy,
    Grant,
    ReleaseRequest,
    RequestEvent,
    RequestState,
    utcnow,
)

log = logging.getLogger("courier.delivery.discs")

ACTOR = "delivery"
S = RequestState
WHY_TEXT: dict[str, str] = {
    DiscWhy.STAFF: "marked by staff",
    DiscWhy.FAILED: "delivery failed",
    DiscWhy.OVERDUE: "overdue",
    DiscWhy.UNOPENED: "link expired unopened",
}
"""How each reason reads on the dashboard."""

DELIVERING = frozenset({S.RECEIVING, S.READY, S.PACKAGING, S.NOTIFIED, S.DOWNLOADED, S.DELIVERED})
"""States in which a ``failed`` or ``overdue`` request is on its way by link again."""

BATCH = 200
"""Candidates handled per reason and sweep (the rest wait for the next sweep)."""


class DiscRefused(ValueError):
    """A disc action cannot be done now; the message says why, in words for staff."""


@dataclass
class SweepResult:
    """What one sweep did: ``(reference, why)`` queued, references whose job it closed."""

    queued: list[tuple[str, str]] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)


def _is_open() -> ColumnElement[bool]:
    return and_(DiscJob.burned_at.is_(None), DiscJob.cancelled_at.is_(None))


def open_job(s: Session, request_id: int) -> DiscJob | None:
    """The request's open job (neither burned nor cancelled), or None."""
    return s.scalars(select(DiscJob).where(DiscJob.request_id == request_id, _is_open())).first()


class DiscQueue:
    """The burn queue over ``sessions``; alerts go through ``outbox``."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        outbox: Outbox,
        *,
        cd_after_h: float,
        data_dir: Path | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._outbox = outbox
        self._cd_after = timedelta(hours=cd_after_h)
        self._data_dir = data_dir
        self._clock = clock
        self._book = RequestBook(sessions, clock)

    # -- the sweep ----------------------------------------------------------------------

    def sweep(self) -> SweepResult:
        """Queue new candidates, close jobs whose reason went away; see the module
        docstring. Safe to run as often as wanted, and from more than one node."""
        result = SweepResult()
        now = self._clock()
        for why, rows in (
            (DiscWhy.FAILED, self._entered(S.FAILED, now)),
            (DiscWhy.OVERDUE, self._entered(S.OVERDUE, now - self._cd_after)),
            (DiscWhy.UNOPENED, self._unopened(now)),
        ):
            for request_id in rows:
                reference = self._queue_auto(request_id, why)
                if reference is not None:
                    result.queued.append((reference, why))
        result.closed = self._close_recovered(now)
        if result.queued or result.closed:
            log.info("disc sweep: %d queued, %d closed", len(result.queued), len(result.closed))
        return result

    def _not_queued_since(
        self, since: ColumnElement[datetime] | InstrumentedAttribute[datetime]
    ) -> ColumnElement[bool]:
        """No open job, and no job queued at or after ``since`` (this episode's start)."""
        return ~exists().where(
            DiscJob.request_id == ReleaseRequest.id,
            or_(_is_open(), DiscJob.queued_at >= since),
        )

    def _entered(self, state: RequestState, cutoff: datetime) -> list[int]:
        """Requests in ``state`` that entered it at or before ``cutoff`` and are not
        queued for this episode."""
        entered = (
            select(RequestEvent.request_id, func.max(RequestEvent.at).label("at"))
            .where(RequestEvent.to_state == state, RequestEvent.from_state != state)
            .group_by(RequestEvent.request_id)
            .subquery()
        )
        q = (
            select(ReleaseRequest.id)
            .join(entered, entered.c.request_id == ReleaseRequest.id)
            .where(
                ReleaseRequest.state == state,
                entered.c.at <= cutoff,
                self._not_queued_since(entered.c.at),
            )
            .order_by(ReleaseRequest.id)
            .limit(BATCH)
        )
        with guarded(self._sessions) as s:
            return list(s.scalars(q))

    def _unopened(self, now: datetime) -> list[int]:
        """Requests whose newest patient link ran out unopened (and not revoked), none of
        whose patient links was opened, not queued since that expiry."""
        mine = aliased(Grant)
        newest = (
            select(func.max(mine.id))
            .where(mine.request_id == ReleaseRequest.id, mine.purpose == "patient")
            .correlate(ReleaseRequest)
            .scalar_subquery()
        )
        other = aliased(Grant)
        opened = exists().where(
            other.request_id == ReleaseRequest.id,
            other.purpose == "patient",
            other.first_opened_at.is_not(None),
        )
        q = (
            select(ReleaseRequest.id)
            .join(Grant, Grant.id == newest)
            .where(
                ReleaseRequest.state != S.CANCELLED,
                Grant.expires_at <= now,
                Grant.revoked_at.is_(None),
                ~opened,
                self._not_queued_since(Grant.expires_at),
            )
            .order_by(ReleaseRequest.id)
            .limit(BATCH)
        )
        with guarded(self._sessions) as s:
            return list(s.scalars(q))

    def _queue_auto(self, request_id: int, why: DiscWhy) -> str | None:
        """One candidate in one transaction (job, note, alert); None when someone else
        queued it first or the request moved meanwhile."""
        try:
            with guarded(self._sessions) as s, s.begin():
                req = s.get(ReleaseRequest, request_id)
                if req is None or req.state == S.CANCELLED:
                    return None
                self.queue(s, req, why, ACTOR, self._clock())
                self._outbox.alert(s, "disc", reference=req.reference, request_id=req.id)
                return req.reference
        except (IntegrityError, DiscRefused, InvalidTransition):
            return None  # queued by someone else, or the request changed: next sweep looks again

    def _close_recovered(self, now: datetime) -> list[str]:
        """Cancel open automatic jobs whose reason went away (module docstring)."""
        with guarded(self._sessions) as s:
            rows = list(
                s.execute(
                    select(DiscJob.id, DiscJob.why, ReleaseRequest.id, ReleaseRequest.state)
                    .join(ReleaseRequest, ReleaseRequest.id == DiscJob.request_id)
                    .where(_is_open())
                    .order_by(DiscJob.id)
                )
            )
            closing: list[tuple[int, str]] = []
            for job_id, why, request_id, state in rows:
                reason = _gone(s, why, request_id, RequestState(state), now)
                if reason is not None:
                    closing.append((job_id, reason))
        closed = []
        for job_id, reason in closing:
            try:
                reference = self._close(job_id, reason)
            except InvalidTransition:
                continue  # the request moved meanwhile: the next sweep looks again
            if reference is not None:
                closed.append(reference)
        return closed

    def _close(self, job_id: int, reason: str) -> str | None:
        image = None
        with guarded(self._sessions) as s, s.begin():
            job = s.get(DiscJob, job_id)
            if job is None or job.burned_at is not None or job.cancelled_at is not None:
                return None
            req = s.get(ReleaseRequest, job.request_id)
            assert req is not None  # requests are never deleted
            now = self._clock()
            image = self._close_job(s, req, job, ACTOR, now, f"CD no longer needed: {reason}")
        self._delete_image(image)
        return req.reference

    # -- staff actions (in the caller's transaction) -----------------------------------

    def queue(
        self,
        s: Session,
        req: ReleaseRequest,
        why: DiscWhy,
        actor: str,
        now: datetime,
        *,
        note: bool = True,
    ) -> DiscJob:
        """Put ``req`` in the burn queue for ``why``, with a ``queued for CD: <why>`` note
        unless ``note`` is False (the caller records its own event, as the staff page's
        "marked for CD").

        Raises :class:`DiscRefused` when it already has an open job or is cancelled,
        :class:`InvalidTransition` when the request moved meanwhile, ``IntegrityError``
        when another open job was added meanwhile (the partial unique index).
        """
        if req.state == S.CANCELLED:
            raise DiscRefused("A cancelled request is not burnt to CD.")
        if open_job(s, req.id) is not None:
            raise DiscRefused("This request is already in the CD burn queue.")
        job = DiscJob(request_id=req.id, why=why, queued_at=now, queued_by=actor)
        s.add(job)
        s.flush()  # the partial unique index refuses a second open job here
        if note:
            state = RequestState(req.state)
            self._book.move(s, req, state, state, actor, f"queued for CD: {why}", now)
        return job

    def burned(
        self, s: Session, req: ReleaseRequest, actor: str, now: datetime, *, audit_actor: str
    ) -> DiscJob:
        """Mark the open job's disc burned: a ``disc burned`` note and an ``export``
        audit event naming the request and its studies. Raises :class:`DiscRefused`
        when there is no open job."""
        job = open_job(s, req.id)
        if job is None:
            raise DiscRefused(_no_open_job(s, req.id))
        job.burned_at, job.burned_by = now, actor
        state = RequestState(req.state)
        note = "disc burned"
        if job.image_sha256:
            note += f" (image SHA-256 {job.image_sha256[:12]}…)"
        self._book.move(s, req, state, state, actor, note, now)
        record(
            s,
            "export",
            actor=audit_actor,
            studies=study_uids(s, req.id),
            request=req.reference,
            detail="disc burned",
            at=now,
        )
        return job

    def cancel(self, s: Session, req: ReleaseRequest, actor: str, now: datetime) -> Path | None:
        """Cancel the open job with a ``CD cancelled`` note; returns its image file (to
        delete after the commit: :meth:`delete_image`). Raises :class:`DiscRefused`."""
        job = open_job(s, req.id)
        if job is None:
            raise DiscRefused(_no_open_job(s, req.id))
        return self._close_job(s, req, job, actor, now, "CD cancelled")

    def _close_job(
        self, s: Session, req: ReleaseRequest, job: DiscJob, actor: str, now: datetime, note: str
    ) -> Path | None:
        job.cancelled_at, job.cancelled_by = now, actor
        state = RequestState(req.state)
        self._book.move(s, req, state, state, actor, note, now)
        if job.image_path and self._data_dir is not None:
            return self._data_dir / job.image_path
        return None

    def delete_image(self, path: Path | None) -> None:
        """Remove a cancelled job's image (a copy of patient data nobody will burn)."""
        self._delete_image(path)

    @staticmethod
    def _delete_image(path: Path | None) -> None:
        if path is None:
            return
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("disc image not deleted (%s): remove it by hand", exc.strerror)


def _gone(s: Session, why: str, request_id: int, state: RequestState, now: datetime) -> str | None:
    """Why an open job of ``why`` is no longer needed, or None while it is."""
    if state == S.CANCELLED:
        return "the request was cancelled"
    if why in (DiscWhy.FAILED, DiscWhy.OVERDUE) and state in DELIVERING:
        return f"the request is {state} again (was {why})"
    if why == DiscWhy.UNOPENED:
        patient = list(
            s.scalars(
                select(Grant)
                .where(Grant.request_id == request_id, Grant.purpose == "patient")
                .order_by(Grant.id)
            )
        )
        if any(g.first_opened_at is not None for g in patient):
            return "the patient opened the link"
        if patient and patient[-1].revoked_at is None and patient[-1].expires_at > now:
            return "the patient's link works again"
    return None


def _no_open_job(s: Session, request_id: int) -> str:
    last = s.scalars(
        select(DiscJob).where(DiscJob.request_id == request_id).order_by(DiscJob.id.desc())
    ).first()
    if last is not None and last.burned_at is not None:
        return f"The disc was already marked burned ({last.burned_at:%Y-%m-%d %H:%M} UTC)."
    return "This request is not in the CD burn queue."

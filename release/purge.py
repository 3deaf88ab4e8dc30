"""Purge: received studies are deleted after their retention, and that is recorded.

Two kinds of study are purged:

- *unmatched*: a stable study whose latest decision is ``hold`` (it matched no pending
  request, or a hold rule kept it for staff) or ``discard`` and that no request has
  attached, and no open identity mismatch still waits on staff (``identity_mismatches``:
  held because its patient differs from a request's), once ``retention_days`` of the
  discard rule that decided, or ``store.unmatched_retention_days`` otherwise, have passed
  since the decision;
- *delivered*: a stable study attached to requests that have all ended (``expired`` or
  ``cancelled``, the final states of :mod:`release.states`), ``store.retention_days``
  after the last of them ended. A study any other request still uses (any state but a
  final one: a downloaded request's link still works, a failed one may be retried) is
  kept, however old.

Every purge writes a ``study-deleted`` audit event (PS3.15 "DICOM Study Deleted") with
the study's UID in the transaction that records it.

Two steps, so a crash never loses track of a half-purged study nor resurrects it:

1. claim: ``stable → purging`` by a conditional UPDATE (the row count says who won);
   for a study of ended requests the UPDATE also requires that none of them is in use
   again (a patient reopened an expired link since the sweep listed it: it is kept);
2. delete the files, then in one transaction delete the instance rows, zero the counts,
   and move ``purging → purged`` with a study event that says why.

A study left ``purging`` by a crash is finished by the next sweep. If an instance
arrives while a purge runs, the study goes back to ``receiving`` (see
``store.catalog``); step 2 then keeps the rows of files it already deleted, flagged
``file_missing``, and the new instance is kept. The study row and its events stay: the
audit trail shows what was received, decided and purged, and when.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Exists, Subquery, delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from release.reports import drop_reports
from release.states import FINAL
from store.audit import Outcome, record
from store.catalog import guarded
from store.content import ContentStore
from store.models import (
    IdentityMismatch,
    Instance,
    MismatchState,
    ReleaseRequest,
    RequestEvent,
    RequestStudy,
    Series,
    Study,
    StudyDecision,
    StudyEvent,
    StudyState,
    utcnow,
)

log = logging.getLogger("courier.release.purge")

_PURGEABLE = ("hold", "discard")


@dataclass(frozen=True)
class Candidate:
    """A study past its retention, as the sweep found it.

    ``action`` is the decision (``hold``/``discard``) of an unmatched study, or
    ``ended`` for one whose requests ended; ``request`` is then the last to end.
    """

    study_id: int
    study_uid: str
    state: str
    action: str
    rule: str
    days: int
    request: str = ""

    @property
    def why(self) -> str:
        """Why the study is purged, for its history and the audit trail."""
        if self.action == "ended":
            return f"its requests ended (last {self.request}); purged after {self.days} days"
        kept = "discarded" if self.action == "discard" else "held, matched no request"
        return f"{kept}; purged after {self.days} days (rule {self.rule or '-'})"


class Purger:
    """Finds studies past their retention and purges them (see the module docstring).

    ``retention_days`` None leaves the studies of ended requests alone.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        content: ContentStore,
        unmatched_retention_days: int,
        clock: Callable[[], datetime] = utcnow,
        *,
        retention_days: int | None = None,
    ) -> None:
        self._sessions = sessions
        self._content = content
        self._default_days = unmatched_retention_days
        self._clock = clock
        self._ended_days = retention_days

    def due(self, limit: int = 200) -> list[Candidate]:
        """Studies whose retention has passed (and those a crash left ``purging``)."""
        return self._unmatched_due(limit) + self._ended_due(limit)

    def _unmatched_due(self, limit: int) -> list[Candidate]:
        now = self._clock()
        latest = (
            select(StudyDecision.study_id, func.max(StudyDecision.id).label("decision_id"))
            .group_by(StudyDecision.study_id)
            .subquery()
        )
        attached = select(RequestStudy.id).where(RequestStudy.study_id == Study.id).exists()
        # Staff have not decided yet whether it is the request's after all: kept.
        awaiting = (
            select(IdentityMismatch.id)
            .where(
                IdentityMismatch.study_id == Study.id,
                IdentityMismatch.state == MismatchState.OPEN,
            )
            .exists()
        )
        query = (
            select(Study.id, Study.study_uid, Study.state, StudyDecision)
            .join(latest, latest.c.study_id == Study.id)
            .join(StudyDecision, StudyDecision.id == latest.c.decision_id)
            .where(
                Study.state.in_([StudyState.STABLE, StudyState.PURGING]),
                StudyDecision.action.in_(_PURGEABLE),
                StudyDecision.at >= Study.stable_at,
                ~attached,
                ~awaiting,
            )
            .order_by(StudyDecision.at)
            .limit(limit)
        )
        found: list[Candidate] = []
        with guarded(self._sessions) as s:
            for study_id, uid, state, decision in s.execute(query):
                days = self._days(decision)
                if state == StudyState.PURGING or decision.at + timedelta(days=days) <= now:
                    found.append(
                        Candidate(study_id, uid, state, decision.action, decision.rule, days)
                    )
        return found

    def _ended_due(self, limit: int) -> list[Candidate]:
        """Studies attached only to ended requests, ``retention_days`` after the last end."""
        if self._ended_days is None:
            return []
        now = self._clock()
        ended = _ended()
        query = (
            select(
                Study.id,
                Study.study_uid,
                Study.state,
                ReleaseRequest.reference,
                ended.c.ended_at,
            )
            .join(RequestStudy, RequestStudy.study_id == Study.id)
            .join(ReleaseRequest, ReleaseRequest.id == RequestStudy.request_id)
            .join(ended, ended.c.request_id == ReleaseRequest.id)
            .where(Study.state.in_([StudyState.STABLE, StudyState.PURGING]), ~_in_use())
            .order_by(Study.id, ended.c.ended_at)
        )
        last: dict[int, tuple[str, str, str, datetime]] = {}
        with guarded(self._sessions) as s:
            for study_id, uid, state, reference, ended_at in s.execute(query):
                last[study_id] = (uid, state, reference, ended_at)  # the latest end wins
        found = [
            Candidate(study_id, uid, state, "ended", "", self._ended_days, reference)
            for study_id, (uid, state, reference, ended_at) in last.items()
            if state == StudyState.PURGING or ended_at + timedelta(days=self._ended_days) <= now
        ]
        return found[:limit]

    def _days(self, decision: StudyDecision) -> int:
        if decision.action == "discard" and decision.retention_days is not None:
            return decision.retention_days
        return self._default_days

    def sweep(self) -> list[str]:
        """Purge every due study; returns the UIDs purged."""
        purged: list[str] = []
        seen: set[int] = set()
        for c in self.due():
            if c.study_id not in seen and self.purge(c):
                purged.append(c.study_uid)
            seen.add(c.study_id)
        return purged

    def purge(self, c: Candidate) -> bool:
        """Purge one study (see the module docstring); False when it changed meanwhile."""
        if c.state == StudyState.STABLE and not self._claim(c.study_id, ended=c.action == "ended"):
            return False
        with guarded(self._sessions) as s:
            files = list(
                s.execute(select(Instance.id, Instance.path).where(Instance.study_id == c.study_id))
            )
        for _, path in files:
            self._content.remove(path)
        ids = [i for i, _ in files]
        reason = f"{c.why}: {len(ids)} file(s) deleted"
        with guarded(self._sessions) as s, s.begin():
            done = s.execute(  # type: ignore[attr-defined]
                update(Study)
                .where(Study.id == c.study_id, Study.state == StudyState.PURGING)
                .values(state=StudyState.PURGED, instance_count=0, size_bytes=0)
            ).rowcount
            if not done:
                # New instances arrived during the purge: keep them; the rows of the
                # files already deleted stay, flagged, so nothing pretends to be there.
                s.execute(update(Instance).where(Instance.id.in_(ids)).values(file_missing=True))
                self._audit(s, c, f"{reason}; changed meanwhile, new instances kept", ok=False)
                log.warning("study %s: changed during purge; new instances kept", c.study_uid)
                return False
            # The study's reports go with it (a DICOM report's row names its instance).
            report_files = drop_reports(s, c.study_uid)
            s.execute(delete(Instance).where(Instance.id.in_(ids)))
            s.execute(
                update(Series)
                .where(Series.study_id == c.study_id)
                .values(instance_count=0, size_bytes=0)
            )
            s.add(
                StudyEvent(
                    study_id=c.study_id,
                    at=self._clock(),
                    from_state=StudyState.PURGING,
                    to_state=StudyState.PURGED,
                    reason=reason,
                )
            )
            self._audit(s, c, reason, ok=True)
        for path in report_files:
            self._content.remove(path)
        log.info("study %s purged (%d files, rule %s)", c.study_uid, len(ids), c.rule or "-")
        return True

    def _audit(self, s: Session, c: Candidate, detail: str, *, ok: bool) -> None:
        record(
            s,
            "study-deleted",
            actor="node",
            outcome=Outcome.SUCCESS if ok else Outcome.SERIOUS_FAILURE,
            studies=[c.study_uid],
            request=c.request,
            detail=detail,
            at=self._clock(),
        )

    def _claim(self, study_id: int, *, ended: bool = False) -> bool:
        """``stable → purging``; for a study of ended requests only while none of them is
        in use again (a patient reopened an expired link since :meth:`due` read it)."""
        with guarded(self._sessions) as s, s.begin():
            claim = update(Study).where(Study.id == study_id, Study.state == StudyState.STABLE)
            if ended:
                # PostgreSQL: wait for a reopen in flight (its move's UPDATE holds the
                # request's row, not the request_studies rows) to commit, so the UPDATE's
                # own snapshot sees it. SQLite: nothing (SQLAlchemy drops FOR SHARE; the
                # UPDATE runs under the one write lock and sees the last commit).
                s.execute(
                    select(ReleaseRequest.id)
                    .where(
                        ReleaseRequest.id.in_(
                            select(RequestStudy.request_id).where(RequestStudy.study_id == study_id)
                        )
                    )
                    .with_for_update(read=True)
                )
                claim = claim.where(~_in_use())
            won = s.execute(claim.values(state=StudyState.PURGING)).rowcount  # type: ignore[attr-defined]
            if won:
                s.add(
                    StudyEvent(
                        study_id=study_id,
                        at=self._clock(),
                        from_state=StudyState.STABLE,
                        to_state=StudyState.PURGING,
                        reason="retention passed: deleting files",
                    )
                )
        return bool(won)


def _ended() -> Subquery:
    """When each ended request ended (``request_id``, ``ended_at``): its last move into a
    final state (an expired request the patient reopened (release.states.REOPEN) ends
    again later). A note (same state both sides: the patient asking for more time, a CD
    queued) is no move: counting it would restart the clock at every ask."""
    final = [str(x) for x in FINAL]
    return (
        select(
            RequestEvent.request_id.label("request_id"),
            func.max(RequestEvent.at).label("ended_at"),
        )
        .where(RequestEvent.to_state.in_(final), RequestEvent.from_state.not_in(final))
        .group_by(RequestEvent.request_id)
        .subquery()
    )


def _in_use() -> Exists:
    """Whether a request not in a final state uses the study (correlated to ``Study``)."""
    return (
        select(RequestStudy.id)
        .join(ReleaseRequest, ReleaseRequest.id == RequestStudy.request_id)
        .where(
            RequestStudy.study_id == Study.id,
            ReleaseRequest.state.not_in([str(x) for x in FINAL]),
        )
        .exists()
    )


def purge_due(s: Session, request_id: int, retention_days: int) -> datetime | None:
    """When the first study of the (ended) request ``request_id`` is due for purging as
    the sweep counts it (``retention_days`` after the last end of the study's requests),
    in ``s``; None when none is (another request uses each). A study already
    ``purging``/``purged`` is the caller's to check."""
    ended = _ended()
    theirs = select(RequestStudy.study_id).where(RequestStudy.request_id == request_id)
    last = s.execute(
        select(Study.id, func.max(ended.c.ended_at))
        .join(RequestStudy, RequestStudy.study_id == Study.id)
        .join(ended, ended.c.request_id == RequestStudy.request_id)
        .where(Study.id.in_(theirs), ~_in_use())
        .group_by(Study.id)
    ).all()
    ends = [at for _, at in last if at is not None]
    return min(ends) + timedelta(days=retention_days) if ends else None

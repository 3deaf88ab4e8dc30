"""Matching: stable studies meet the release rules and the pending requests.

When a study becomes stable, the rules decide (``release``/``hold``/``discard``) on a
representative instance's header and the association it came on; the decision is
recorded with the rule's name and why (:class:`~store.models.StudyDecision`). A
``release`` attaches the study to every pending request its join keys find (indexed
look-ups, never a scan), and so does a ``hold`` (a rule's or the default when no rule
matches) for a request that names the study by its Study Instance UID: staff picked that
very study, or pulled it from the PACS. ``discard`` and ``reject`` always win. A joined
request moves to ``receiving`` and, once every selection
is satisfied by a stable study (with at least the expected instance count, when one
was given), to ``ready``. A shortfall is never released silently: the request stays
``receiving`` and its timeline says what is missing. Requests still incomplete after
``overdue_after_h`` become ``overdue`` (staff are alerted through the outbox when the
delivery issue lands; until then the event records it).

Right patient, always: every request found (by join keys or by a named Study Instance
UID) is checked against the representative header's patient identity
(:mod:`release.identity`) before the study is attached. On a disagreement the study is
not attached to that request and is held: an :class:`~store.models.IdentityMismatch`
row names the fields, the request's timeline (its state unchanged) and the study's
events say which fields disagreed, a ``security-alert`` audit event is written and
``on_mismatch`` queues the staff alert, all in the decision's transaction and once per
(request, study). Staff resolve it on the request page (:func:`release.mismatch.attach_anyway`,
:func:`release.mismatch.dismiss`). A name spelled differently is only flagged on the timeline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import pydicom
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from release.errors import InvalidTransition
from release.identity import Identity, IdentitySettings, Verdict, compare, of_header
from release.mismatch import identity_of
from release.progress import ACTOR, JOINABLE, complete, move_in, note
from release.requests import RequestBook
from rules import AssociationFacts, Decision, RuleSet, explain_text, facts_from_dataset
from store.audit import Outcome, actor_of, record
from store.catalog import guarded
from store.content import ContentStore
from store.models import (
    IdentityMismatch,
    Instance,
    MismatchState,
    ReleaseRequest,
    RequestSelection,
    RequestState,
    RequestStudy,
    SelectionKind,
    Study,
    StudyDecision,
    StudyEvent,
    StudyState,
    utcnow,
)

log = logging.getLogger("courier.release.matching")

_KINDS = {
    "accession": SelectionKind.ACCESSION,
    "study_uid": SelectionKind.STUDY_UID,
    "reference": SelectionKind.REFERENCE,
}


class Matcher:
    """Applies the running rules to stable studies and moves requests along."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        content: ContentStore,
        rules: Callable[[], RuleSet],
        book: RequestBook,
        clock: Callable[[], datetime] = utcnow,
        on_overdue: Callable[[Session, ReleaseRequest], None] | None = None,
        identity: IdentitySettings | None = None,
        on_mismatch: Callable[[Session, ReleaseRequest], None] | None = None,
    ) -> None:
        """``on_overdue(session, request)`` runs in the transaction that moves a request
        to ``overdue`` (the node queues the staff alert there); ``on_mismatch(session,
        request)`` in the one that holds a study whose patient identity disagrees with
        the request's (``identity``: how the identity is read and compared)."""
        self._on_overdue = on_overdue
        self._on_mismatch = on_mismatch
        self._identity = identity or IdentitySettings()
        self._requests_seen = 0  # the highest request id sweep_new_requests looked at
        self._sessions = sessions
        self._content = content
        self._rules = rules
        self._book = book
        self._clock = clock

    def on_stable(self, study_uids: list[str]) -> list[str]:
        """Decide for each newly stable study; returns references that became ready.

        Per study, the header is read first (no transaction held), then one transaction
        records the decision, attaches the study, moves its requests and checks them for
        completeness: one commit per study, and a failure leaves the study undecided,
        to be retried by the next sweep.
        """
        ready: list[str] = []
        for uid in study_uids:
            try:
                decided = self._decide(uid)
            except (OSError, ValueError) as exc:
                # An unreadable representative file: staff see the study undecided.
                log.error("study %s: cannot decide (%s)", uid, type(exc).__name__)
                continue
            if decided is None:
                continue
            try:
                ready += self._apply(uid, *decided)
            except IntegrityError:
                log.warning("study %s: attached concurrently; retried next sweep", uid)
        return ready

    def _apply(self, study_uid: str, decision: Decision, who: Identity) -> list[str]:
        now = self._clock()
        with guarded(self._sessions) as s, s.begin():
            study_id = s.scalar(select(Study.id).where(Study.study_uid == study_uid))
            found: dict[int, ReleaseRequest] = {}
            if decision.action == "release":
                found = self._find(s, decision, study_uid)
            elif decision.action == "hold":
                found = self._named(s, study_uid)
            found, refused = self._check_identity(s, study_id, study_uid, found, who, decision, now)
            states = self._attach(s, study_id, found, decision, now)
            action, reason = decision.action, decision.reason or ""
            if refused and not found:
                # Another patient's study (or one staff must confirm): never attached.
                action = "hold"
                reason = f"patient identity disagrees with request(s) {refused}"
            elif refused:
                reason = f"{reason}; patient identity disagrees with request(s) {refused}"
            if action == "hold" and found:
                # Staff named this very study (picked it, or pulled it from the PACS):
                # that is the request a hold waits for. Discard and reject still win.
                action = "release"
                held_by = f"rule {decision.rule}" if decision.rule else "no rule"
                reason = f"held by {held_by}, but a request names this Study Instance UID"
            if action == "release" and not found:
                # Never dropped: held for staff, listed, purged after retention.
                action = "hold"
                reason = f"rule {decision.rule} matched, but no pending request has these keys"
            s.add(
                StudyDecision(
                    study_id=study_id,
                    at=now,
                    action=action,
                    rule=decision.rule or "",
                    reason=reason,
                    trace=explain_text(decision),
                    retention_days=decision.retention_days,
                )
            )
            s.flush()
            ready = [
                req.reference
                for rid, req in found.items()
                if self._complete(s, req, states[rid], now)
            ]
        log.info(
            "study %s: %s by rule %s (requests joined: %d)",
            study_uid,
            action,
            decision.rule,
            len(found),
        )
        return ready

    def undecided(self, limit: int = 500) -> list[str]:
        """Stable studies with no decision since they became stable (the database, not
        a sweep's return value, says what is left: a failed pass is retried)."""
        later = (
            select(StudyDecision.id)
            .where(StudyDecision.study_id == Study.id, StudyDecision.at >= Study.stable_at)
            .exists()
        )
        with guarded(self._sessions) as s:
            return list(
                s.scalars(
                    select(Study.study_uid)
                    .where(Study.state == StudyState.STABLE, ~later)
                    .order_by(Study.stable_at)
                    .limit(limit)
                )
            )

    def _check_identity(
        self,
        s: Session,
        study_id: int | None,
        study_uid: str,
        found: dict[int, ReleaseRequest],
        who: Identity,
        decision: Decision,
        now: datetime,
    ) -> tuple[dict[int, ReleaseRequest], str]:
        """The requests of ``found`` the study may join, and the references (space
        separated) it may not: their identity disagrees (see the module docstring)."""
        if not found or study_id is None:
            return found, ""
        earlier = {
            m.request_id: m
            for m in s.scalars(
                select(IdentityMismatch).where(
                    IdentityMismatch.study_id == study_id,
                    IdentityMismatch.request_id.in_(found),
                )
            )
        }
        kept: dict[int, ReleaseRequest] = {}
        refused: list[str] = []
        for rid, req in found.items():
            verdict = compare(identity_of(req), who, self._identity)
            known = earlier.get(rid)
            if verdict.agrees or (known is not None and known.state == MismatchState.ATTACHED):
                kept[rid] = req  # agrees, or staff attached it anyway (audited then)
                if verdict.flagged:
                    self._flag(s, req, study_id, study_uid, verdict, now)
                continue
            refused.append(req.reference)
            if known is None:  # first time: record, tell the timeline, staff, the audit
                self._hold(s, req, study_id, study_uid, verdict, decision, now)
        return kept, " ".join(refused)

    def _hold(
        self,
        s: Session,
        req: ReleaseRequest,
        study_id: int,
        study_uid: str,
        verdict: Verdict,
        decision: Decision,
        now: datetime,
    ) -> None:
        fields = " ".join(verdict.blocking)
        s.add(
            IdentityMismatch(
                request_id=req.id,
                study_id=study_id,
                fields=fields,
                rule=decision.rule or "",
                state=MismatchState.OPEN,
                found_at=now,
            )
        )
        why = f"patient identity disagrees ({fields})"
        note(s, req, ACTOR, f"study {study_uid} held, not attached: {why}; staff alerted", now)
        study_state = s.scalar(select(Study.state).where(Study.id == study_id)) or ""
        s.add(
            StudyEvent(
                study_id=study_id,
                at=now,
                from_state=study_state,
                to_state=study_state,
                reason=f"held from request {req.reference}: {why}",
            )
        )
        record(
            s,
            "identity-mismatch",
            actor=actor_of(ACTOR, decision.rule or ""),
            outcome=Outcome.SERIOUS_FAILURE,
            studies=[study_uid],
            request=req.reference,
            detail=f"study held from the request: {why}",
            at=now,
        )
        if self._on_mismatch is not None:
            self._on_mismatch(s, req)  # the alert commits with the hold
        log.warning(
            "study %s held from request %s: patient identity disagrees (%s)",
            study_uid,
            req.reference,
            fields,
        )

    def _flag(
        self,
        s: Session,
        req: ReleaseRequest,
        study_id: int,
        study_uid: str,
        verdict: Verdict,
        now: datetime,
    ) -> None:
        """A non-blocking disagreement (the name) on the timeline, once per link."""
        linked = s.scalar(
            select(RequestStudy.id).where(
                RequestStudy.request_id == req.id, RequestStudy.study_id == study_id
            )
        )
        if linked is None:
            fields = " ".join(verdict.flagged)
            note(s, req, ACTOR, f"study {study_uid}: {fields} spelled differently (flagged)", now)

    def _decide(self, study_uid: str) -> tuple[Decision, Identity] | None:
        with guarded(self._sessions) as s:
            row = s.execute(
                select(Study, Instance.path)
                .join(Instance, Instance.study_id == Study.id)
                .where(Study.study_uid == study_uid, Instance.file_missing.is_(False))
                .order_by(Instance.id)
                .limit(1)
            ).first()
            if row is None:
                return None
            study, path = row
            ruleset = self._rules()
            ds = pydicom.dcmread(self._content.path(path), stop_before_pixels=True)
            association = AssociationFacts(study.calling_ae, study.called_ae, study.peer_host)
            decision = ruleset.decide(
                facts_from_dataset(ds, association, wanted=ruleset.wanted), "stable"
            )
        return decision, of_header(ds, self._identity)

    def _find(self, s: Session, decision: Decision, study_uid: str) -> dict[int, ReleaseRequest]:
        """Every joinable request the decision's join keys find (indexed look-ups), and
        every one that names this very study by its Study Instance UID (staff picked it:
        no join key is needed to know it is the one)."""
        found = self._named(s, study_uid)
        for join in decision.joins:
            keyed = [(k, v) for k, v in join.items() if k in _KINDS]
            if not keyed:
                continue
            ids: set[int] | None = None
            candidates: dict[int, ReleaseRequest] = {}
            for field, value in keyed:
                hits = self._book.find_pending_by(_KINDS[field], value, states=JOINABLE, session=s)
                candidates.update((r.id, r) for r in hits)
                ids = {r.id for r in hits} if ids is None else ids & {r.id for r in hits}
            patient = join.get("patient_id")
            for rid in ids or set():
                if patient is None or candidates[rid].patient_id == patient:
                    found[rid] = candidates[rid]
        return found

    def _named(self, s: Session, study_uid: str) -> dict[int, ReleaseRequest]:
        """Every joinable request that names this study by its Study Instance UID."""
        hits = self._book.find_pending_by(
            SelectionKind.STUDY_UID, study_uid, states=JOINABLE, session=s
        )
        return {r.id: r for r in hits}

    def _attach(
        self,
        s: Session,
        study_id: int | None,
        found: dict[int, ReleaseRequest],
        decision: Decision,
        now: datetime,
    ) -> dict[int, RequestState]:
        """Link the study to the requests found and move waiting ones to receiving;
        returns each request's state afterwards."""
        states = {rid: RequestState(req.state) for rid, req in found.items()}
        if not found or study_id is None:
            return states
        known = set(
            s.scalars(
                select(RequestStudy.request_id).where(
                    RequestStudy.study_id == study_id, RequestStudy.request_id.in_(found)
                )
            )
        )
        for rid in found.keys() - known:
            s.add(
                RequestStudy(
                    request_id=rid, study_id=study_id, rule=decision.rule or "", matched_at=now
                )
            )
        for rid, req in found.items():
            if states[rid] in (RequestState.PENDING, RequestState.OVERDUE):
                reason = f"study matched by rule {decision.rule}"
                if self._move_in(s, req, states[rid], RequestState.RECEIVING, reason, now):
                    states[rid] = RequestState.RECEIVING
        return states

    def _complete(
        self, s: Session, req: ReleaseRequest, state: RequestState, now: datetime
    ) -> bool:
        """In ``s``: move ``req`` to ready if every selection is satisfied; True if it did."""
        return complete(s, self._book, req, state, now)

    def _move_in(
        self,
        s: Session,
        req: ReleaseRequest,
        source: RequestState,
        target: RequestState,
        reason: str,
        now: datetime,
    ) -> bool:
        """Move inside ``s``; False (nothing written) if someone moved it first."""
        return move_in(s, self._book, req, source, target, reason, now)

    def refresh(self, request_id: int) -> bool:
        """Move the request to ``ready`` if every selection is satisfied; True if it did."""
        with guarded(self._sessions) as s, s.begin():
            req = s.get(ReleaseRequest, request_id)
            if req is None:
                return False
            return self._complete(s, req, RequestState(req.state), self._clock())

    def sweep_new_requests(self) -> list[str]:
        """Studies already here and stable when a request for them is created (staff
        often ask after the PACS pushed) are decided again, so the new request can
        join them; returns references that became ready.

        Looks only at requests created since the last call (by id), through their
        accession and study UID selections (indexed), and only at studies whose latest
        decision predates the request.
        """
        with guarded(self._sessions) as s:
            rows = list(
                s.execute(
                    select(
                        ReleaseRequest.id,
                        ReleaseRequest.created_at,
                        RequestSelection.kind,
                        RequestSelection.value,
                    )
                    .join(RequestSelection, RequestSelection.request_id == ReleaseRequest.id)
                    .where(
                        ReleaseRequest.id > self._requests_seen,
                        ReleaseRequest.state == RequestState.PENDING,
                        RequestSelection.kind.in_(
                            [SelectionKind.ACCESSION, SelectionKind.STUDY_UID]
                        ),
                    )
                    .order_by(ReleaseRequest.id)
                )
            )
            top = s.scalar(select(func.max(ReleaseRequest.id))) or 0
            uids: list[str] = []
            for _rid, created_at, kind, value in rows:
                key = (
                    Study.accession_number == value
                    if kind == SelectionKind.ACCESSION
                    else Study.study_uid == value
                )
                decided_after = (
                    select(StudyDecision.id)
                    .where(StudyDecision.study_id == Study.id, StudyDecision.at >= created_at)
                    .exists()
                )
                uids += s.scalars(
                    select(Study.study_uid).where(
                        key, Study.state == StudyState.STABLE, ~decided_after
                    )
                )
        self._requests_seen = max(self._requests_seen, top)
        return self.on_stable(list(dict.fromkeys(uids))) if uids else []

    def sweep_changed(self) -> list[str]:
        """Ready requests with an attached study that received new instances go back to
        ``receiving`` (until it is stable and matched again); returns their references."""
        with guarded(self._sessions) as s:
            changed = list(
                s.execute(
                    select(ReleaseRequest.id, ReleaseRequest.reference)
                    .join(RequestStudy, RequestStudy.request_id == ReleaseRequest.id)
                    .join(Study, Study.id == RequestStudy.study_id)
                    .where(
                        ReleaseRequest.state == RequestState.READY,
                        Study.state != StudyState.STABLE,
                    )
                    .distinct()
                )
            )
        reason = "a selected study received new instances before packaging"
        return [
            ref
            for rid, ref in changed
            if self._move(rid, RequestState.RECEIVING, reason, RequestState.READY)
        ]

    def sweep_overdue(self, overdue_after_h: float) -> list[str]:
        """Requests still incomplete after ``overdue_after_h`` become overdue."""
        cutoff = self._clock() - timedelta(hours=overdue_after_h)
        with guarded(self._sessions) as s:
            late = list(
                s.execute(
                    select(ReleaseRequest.id, ReleaseRequest.reference, ReleaseRequest.state).where(
                        ReleaseRequest.state.in_([RequestState.PENDING, RequestState.RECEIVING]),
                        ReleaseRequest.created_at <= cutoff,
                    )
                )
            )
        moved = []
        reason = (
            f"studies not all received within {overdue_after_h:g} h; "
            "staff alerted (CD fallback candidate)"
        )
        for rid, reference, state in late:
            with guarded(self._sessions) as s, s.begin():
                req = s.get(ReleaseRequest, rid)
                if req is None:
                    continue
                now = self._clock()
                if self._move_in(s, req, RequestState(state), RequestState.OVERDUE, reason, now):
                    if self._on_overdue is not None:
                        self._on_overdue(s, req)  # the alert commits with the move
                    moved.append(reference)
        return moved

    def _move(
        self, request_id: int, to: RequestState, reason: str, from_state: RequestState | str
    ) -> bool:
        try:
            self._book.transition(
                request_id, to, ACTOR, reason, from_state=RequestState(from_state)
            )
        except InvalidTransition:
            return False  # someone else moved it first: their move stands
        return True

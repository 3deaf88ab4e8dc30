"""The release policy's hold on a ready request: an embargo, the wait for the report.

A ready request is packaged only when its release policy lets it go. The policy is the
``release:`` block (:class:`rules.policy.ReleasePolicy`) of each rule that attached one of
its studies, or node.yaml's ``delivery.release`` for a study whose rule has none (staff
attaching a study count as no rule). All that apply are combined, strictest first: the
latest embargo end, a wait for the report if any asks for it, ``hold_for_staff`` over
``release_images``. The hold is a visible state on the request, never a silent delay
(:func:`describe` for the pages, a line on the timeline for every change):

``embargo``
    ``after: 72h``: not before ``hold_until`` (counted from the study's arrival or its
    StudyDate in the site's time zone). Ends by itself at that instant: the batch's
    query (:func:`releasable`) lets it through, urgent or not.
``report``
    ``until: report_final``: until every attached study has a final (or corrected)
    report (:func:`final_report`, the one place reports are read), at most until
    ``hold_until`` (``max_wait``); then the images go without it (``release_images``)
    or the request is held for staff (``hold_for_staff``, staff alerted): the next kind.
``max_wait_passed``
    The report did not come by ``max_wait`` and the policy says ``hold_for_staff``: no
    end; only staff release it (or hold it on). The timeline's line from the policy says
    why (the deadline, the rule and its ``max_wait``: :func:`policy_reasons`). Decided
    afresh when the request becomes ready again (a new study came), like the others.
``rule_missing``
    A rule that attached one of its studies was renamed or removed since: its policy is
    unknown, so the safe side is to hold it (never the site default, never at once)
    until staff release it or hold it on; staff are alerted, and the timeline's line
    names the rule (:func:`policy_reasons`). Decided afresh when the request becomes
    ready again, like the others.
``staff``
    Held by staff (:meth:`ReleaseKeeper.extend`): until ``hold_until`` (then the policy
    decides again; it never ends before the policy's own hold), or until released when
    that is NULL. (A lost rule held requests as ``staff`` before ``rule_missing``
    existed; those rows keep it.)

The policy is applied once a request is ready (:meth:`ReleaseKeeper.sweep`, and at the
latest by the batch's claim through :meth:`ReleaseKeeper.gate`, in the claim's
transaction, so nothing is packaged before it was applied); ``hold_checked_at`` records
that it was (cleared whenever the request becomes ready again). Staff may release
early (:meth:`ReleaseKeeper.release_now`, with a reason) or hold longer
(:meth:`ReleaseKeeper.extend`): both are on the timeline and audited (``release-hold``).
A request marked ``urgent`` waits like any other unless staff release it. Every time
comes from the injected clock.

Imports nothing of ours but ``store`` and ``rules`` (and ``release``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, tzinfo
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from release.errors import InvalidRequest, InvalidTransition

# The kinds of hold and their SQL live in release.holds (cheap to import); re-exported.
from release.holds import EMBARGO as EMBARGO
from release.holds import EXPLAINED as EXPLAINED
from release.holds import HOLDABLE as HOLDABLE
from release.holds import MAX_WAIT as MAX_WAIT
from release.holds import NONE as NONE
from release.holds import REPORT as REPORT
from release.holds import RULE_MISSING as RULE_MISSING
from release.holds import STAFF as STAFF
from release.holds import is_free as is_free
from release.holds import releasable as releasable
from release.progress import note
from release.reports import report_final
from release.requests import RequestBook, study_uids
from rules.matcher import RuleSet
from rules.policy import ReleasePolicy
from store.audit import actor_of, record
from store.catalog import guarded
from store.models import (
    ReleaseRequest,
    RequestEvent,
    RequestState,
    RequestStudy,
    Study,
    utcnow,
)

log = logging.getLogger("courier.release.embargo")

ACTOR = "release-policy"
#: Where the site default comes from, as the timeline names it.
SITE_DEFAULT = "node.yaml delivery.release"
_NOTHING = "no release policy holds it"


@dataclass(frozen=True)
class Verdict:
    """What the policy says about a request now: hold ``kind`` (``""`` none) until
    ``until`` (None: no time set), and why, in a line for staff (no patient data)."""

    kind: str
    until: datetime | None
    why: str


@dataclass(frozen=True)
class StudyFacts:
    """What the policy reads of one attached study: the rule that attached it, its
    arrival and its StudyDate (``YYYYMMDD`` or "")."""

    rule: str
    study_uid: str
    arrival: datetime
    study_date: str


def final_report(s: Session, study_uids: Sequence[str]) -> bool:
    """True when every study in ``study_uids`` has a final or corrected report (and there
    is at least one study): :func:`release.reports.report_final`, which the package's
    ``REPORT/`` shares. The one place the release policy reads reports."""
    return bool(study_uids) and all(report_final(s, uid) for uid in study_uids)


def anchor(policy: ReleasePolicy, study: StudyFacts, zone: tzinfo) -> tuple[datetime, str]:
    """Where ``policy`` counts from for ``study``, and a word saying which: its arrival,
    or local midnight of its StudyDate in ``zone`` (its arrival when it has none)."""
    if policy.from_ == "study_date":
        day = _day(study.study_date)
        if day is not None:
            return datetime.combine(day, time(), tzinfo=zone), "study date"
        return study.arrival, "arrival (the study has no StudyDate)"
    return study.arrival, "arrival"


def decide(
    policies: Iterable[tuple[str, ReleasePolicy, StudyFacts]],
    *,
    reported: bool,
    now: datetime,
    zone: tzinfo,
) -> Verdict:
    """The hold ``policies`` put on a request at ``now``: each entry is ``(where the
    policy comes from, the policy, the study it applies to)``; ``reported`` says whether
    every study has its final report. Pure: no database, no clock of its own."""
    embargo_end: datetime | None = None
    embargo_why = ""
    deadline: datetime | None = None
    deadline_why = ""
    outcome = "release_images"
    for source, policy, study in policies:
        start, counted = anchor(policy, study, zone)
        after = policy.embargo
        if after is not None:
            end = after.add_to(start, zone)
            if embargo_end is None or end > embargo_end:
                embargo_end = end
                embargo_why = f"{source}: after {after.text} from {counted}"
        if policy.until is not None:
            end = policy.wait.add_to(start, zone)
            if deadline is None or end > deadline:
                deadline = end
                deadline_why = f"{source}: max_wait {policy.wait.text} from {counted}"
            if policy.outcome == "hold_for_staff":
                outcome = "hold_for_staff"
    note_ = ""
    if deadline is not None and not reported:
        if now < deadline:
            why = (
                f"waiting for the final report, at most until {local_time(deadline, zone)} "
                f"({deadline_why}; then {outcome.replace('_', ' ')})"
            )
            if embargo_end is not None and now < embargo_end:
                why += f"; embargoed until {local_time(embargo_end, zone)} ({embargo_why})"
            return Verdict(REPORT, deadline, why)
        if outcome == "hold_for_staff":
            return Verdict(
                MAX_WAIT,
                None,
                f"the final report did not come by {local_time(deadline, zone)} ({deadline_why}): "
                "held for staff to decide",
            )
        note_ = (
            f"the final report did not come by {local_time(deadline, zone)}: images go without it"
        )
    elif deadline is not None:
        note_ = "final report received"
    if embargo_end is not None and now < embargo_end:
        why = f"embargoed until {local_time(embargo_end, zone)} ({embargo_why})"
        return Verdict(EMBARGO, embargo_end, f"{note_}; {why}" if note_ else why)
    if embargo_end is not None:
        why = f"embargo ended {local_time(embargo_end, zone)} ({embargo_why})"
        return Verdict(NONE, None, f"{note_}; {why}" if note_ else why)
    return Verdict(NONE, None, note_ or _NOTHING)


def rule_missing_why(rule: str) -> str:
    """Why a ``rule_missing`` hold holds, and what staff do next, in plain words
    (``rule``: its name, "" when not known)."""
    which = f"rule {rule}" if rule else "a rule that attached one of its studies"
    return (
        f"held for staff to decide: {which} no longer exists (renamed or removed from the "
        "rules file since), so its release policy is unknown. Release it now if the "
        "studies may go out, or hold it longer; restoring the rule does not release it"
    )


def describe(req: ReleaseRequest, zone: tzinfo, now: datetime, why: str = "") -> str | None:
    """What the request page shows of the hold (None: nothing holds it):
    "embargoed until …", "waiting for the report …", "held for staff to decide: …",
    "held by staff …". ``why``: the policy's own line for a ``max_wait_passed`` hold
    (:func:`policy_reasons`), which names the deadline and the ``max_wait``, or for a
    ``rule_missing`` one, which names the rule."""
    if req.hold_kind == EMBARGO and req.hold_until is not None and req.hold_until > now:
        return f"embargoed until {local_time(req.hold_until, zone)}"
    if req.hold_kind == REPORT:
        until = f" (at most until {local_time(req.hold_until, zone)})" if req.hold_until else ""
        return f"waiting for the report{until}"
    if req.hold_kind == MAX_WAIT:
        return why or (
            "the final report did not come within the release policy's max_wait: "
            "held for staff to decide"
        )
    if req.hold_kind == RULE_MISSING:
        return why or rule_missing_why("")
    if req.hold_kind == STAFF:
        if req.hold_until is None:
            return "held for staff: release it when ready"
        if req.hold_until > now:
            return f"held by staff until {local_time(req.hold_until, zone)}"
    return None


class ReleaseKeeper:
    """Applies the release policy to ready requests and keeps their holds; staff's
    early release and extension. See the module docstring.

    ``rules`` returns the running rule set (its rules' ``release:`` blocks); ``default``
    is node.yaml's ``delivery.release`` (None: release at once); ``zone`` the site's time
    zone (``delivery.timezone``); ``on_staff_hold(session, request)`` runs in the
    transaction that holds a request for staff after the report did not come (the node
    queues the staff alert there); ``on_expected(session, request, verdict)`` in the one
    that first holds a request whose staff asked at request time that the patient be told
    when to expect the link (``tell_patient_when``; the node queues that email there).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        book: RequestBook,
        *,
        rules: Callable[[], RuleSet | None],
        default: ReleasePolicy | None = None,
        zone: tzinfo | str = "UTC",
        clock: Callable[[], datetime] = utcnow,
        on_staff_hold: Callable[[Session, ReleaseRequest], None] | None = None,
        on_expected: Callable[[Session, ReleaseRequest, Verdict], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._book = book
        self._rules = rules
        self._default = default
        self.zone: tzinfo = ZoneInfo(zone) if isinstance(zone, str) else zone
        self._clock = clock
        self._on_staff_hold = on_staff_hold
        self._on_expected = on_expected

    # -- applying the policy ------------------------------------------------------------

    def policies(
        self, studies: Sequence[StudyFacts]
    ) -> list[tuple[str, ReleasePolicy, StudyFacts]]:
        """Each study's policy: its rule's ``release:`` block, else the site default."""
        ruleset = self._rules()
        out = []
        for study in studies:
            rule = ruleset.rule(study.rule) if ruleset is not None and study.rule else None
            if rule is not None and rule.release is not None:
                out.append((f"rule {rule.name}", rule.release, study))
            elif self._default is not None:
                out.append((SITE_DEFAULT, self._default, study))
        return out

    def verdict(self, s: Session, request_id: int, now: datetime) -> Verdict:
        """What the policy says about the request now (reads, writes nothing)."""
        studies = _studies(s, request_id)
        ruleset = self._rules()
        for study in studies:
            # Staff attaching a study name no rule (""): the site default applies.
            if study.rule and (ruleset is None or ruleset.rule(study.rule) is None):
                # Renamed or removed since it attached the study: its policy is unknown,
                # so the safe side is to hold (never the site default, never at once).
                return Verdict(RULE_MISSING, None, rule_missing_why(study.rule))
        chosen = self.policies(studies)
        waits = any(p.until is not None for _, p, _ in chosen)
        reported = waits and final_report(s, sorted({st.study_uid for st in studies}))
        return decide(chosen, reported=reported, now=now, zone=self.zone)

    def apply(self, s: Session, req: ReleaseRequest, now: datetime) -> Verdict:
        """In ``s``: apply the policy to ``req`` and record the hold (and a timeline line
        when it changed). A staff hold stays as staff set it."""
        first = req.hold_checked_at is None
        req.hold_checked_at = now
        if req.hold_kind == STAFF and not is_free(req, now):
            return Verdict(STAFF, req.hold_until, "held by staff")
        # A staff hold that ended: the policy decides again.
        found = self.verdict(s, req.id, now)
        changed = (found.kind, found.until) != (req.hold_kind, req.hold_until)
        req.hold_kind, req.hold_until = found.kind, found.until
        if changed or (first and found.why != _NOTHING):
            note(s, req, ACTOR, found.why, now)
            log.info("request %s: release hold %r", req.reference, found.kind or "none")
        if found.kind in (STAFF, MAX_WAIT, RULE_MISSING) and changed and self._on_staff_hold:
            self._on_staff_hold(s, req)
        told = first and found.kind in (EMBARGO, REPORT) and found.until is not None
        if told and req.tell_patient_when and req.recipient_email and self._on_expected:
            self._on_expected(s, req, found)  # the email commits with the hold
            note(s, req, ACTOR, "patient emailed when to expect the link (staff asked)", now)
        s.flush()
        return found

    def gate(self, s: Session, req: ReleaseRequest, now: datetime) -> bool:
        """For the batch's claim, in its transaction: apply the policy if it was not yet,
        then True when the request may be packaged now."""
        if req.hold_checked_at is None or (req.hold_kind == STAFF and is_free(req, now)):
            self.apply(s, req, now)
        return is_free(req, now)

    def sweep(self) -> list[str]:
        """Apply the policy to ready requests that have not had it, look again at those
        waiting for a report (it came: the wait ends; max_wait passed: its outcome), and
        note holds whose time ended. Returns the references whose hold changed."""
        now = self._clock()
        with guarded(self._sessions) as s:
            ids = list(
                s.scalars(
                    select(ReleaseRequest.id).where(
                        ReleaseRequest.state == RequestState.READY,
                        or_(
                            ReleaseRequest.hold_checked_at.is_(None),
                            ReleaseRequest.hold_kind == REPORT,
                            and_(
                                ReleaseRequest.hold_kind.in_([EMBARGO, STAFF]),
                                ReleaseRequest.hold_until <= now,
                            ),
                        ),
                    )
                )
            )
        changed = []
        for rid in ids:
            with guarded(self._sessions) as s, s.begin():
                # Locked (PostgreSQL): a batch's claim skips it meanwhile (SKIP LOCKED).
                req = s.get(ReleaseRequest, rid, with_for_update=True)
                if req is None or req.state != RequestState.READY:
                    continue
                before = (req.hold_kind, req.hold_until)
                if req.hold_kind == EMBARGO and is_free(req, now):
                    req.hold_kind, req.hold_until = NONE, None
                    note(s, req, ACTOR, "embargo ended: it goes out with the next delivery", now)
                elif req.hold_kind == STAFF and is_free(req, now):
                    note(s, req, ACTOR, "staff hold ended: the release policy decides again", now)
                    self.apply(s, req, now)
                else:
                    self.apply(s, req, now)
                if (req.hold_kind, req.hold_until) != before:
                    changed.append(req.reference)
        return changed

    # -- staff --------------------------------------------------------------------------

    def release_now(self, ref_or_id: str | int, actor: str, reason: str) -> ReleaseRequest:
        """Staff release the request now, whatever its policy says (an embargo, the wait
        for the report; urgent or not): on the timeline and audited. ``reason`` is
        required. Raises InvalidRequest (no reason), InvalidTransition (packaged already,
        or final), RequestNotFound."""
        return self._staff(ref_or_id, actor, reason, NONE, None)

    def extend(
        self, ref_or_id: str | int, actor: str, reason: str, until: datetime | None
    ) -> ReleaseRequest:
        """Staff hold the request until ``until`` (aware; None: until a staff member
        releases it). On the timeline and audited; the policy no longer changes it."""
        if until is not None:
            if until.tzinfo is None:
                raise InvalidRequest("until: give a time with its time zone")
            if until <= self._clock():
                raise InvalidRequest("until: must be in the future")
        return self._staff(ref_or_id, actor, reason, STAFF, until)

    def _staff(
        self, ref_or_id: str | int, actor: str, reason: str, kind: str, until: datetime | None
    ) -> ReleaseRequest:
        reason = reason.strip()
        if not reason:
            raise InvalidRequest("reason: required; say why (it is audited)")
        if len(reason) > 500 or any(ord(c) < 32 for c in reason):
            raise InvalidRequest("reason: one line of at most 500 characters")
        found = self._book.get(ref_or_id)
        now = self._clock()
        with guarded(self._sessions) as s, s.begin():
            req = s.get(ReleaseRequest, found.id, with_for_update=True)
            assert req is not None
            if RequestState(req.state) not in HOLDABLE:
                raise InvalidTransition(
                    f"request {req.reference} is {req.state}: only a request not yet packaged "
                    "can be held or released early"
                )
            # Hold longer never ends before the policy's own hold (an embargo, the wait).
            ends = req.hold_until if req.hold_kind in (EMBARGO, REPORT) else None
            shorter = until is not None and ends is not None and now < ends and until < ends
            if kind == STAFF and shorter:
                assert ends is not None
                raise InvalidRequest(
                    f"until: the release policy holds it until {local_time(ends, self.zone)};"
                    " a longer hold must end after that (or hold it until released)"
                )
            was = describe(req, self.zone, now) or "no hold"
            req.hold_kind, req.hold_until = kind, until
            if req.state == RequestState.READY:
                # Not before: the policy is applied (afresh) once it is ready.
                req.hold_checked_at = now
            if kind == NONE:
                what = f"released early by staff ({was}): {reason}"
            elif until is None:
                what = f"held by staff until released ({was} before): {reason}"
            else:
                what = (
                    f"held by staff until {local_time(until, self.zone)} ({was} before): {reason}"
                )
            name = actor.partition(":")[2] or actor
            note(s, req, actor, what, now)
            record(
                s,
                "release-hold",
                actor=actor_of("staff", name),
                studies=study_uids(s, req.id),
                request=req.reference,
                detail=what[:500],
                at=now,
            )
            s.flush()
            s.expunge(req)
        log.info("request %s: staff set release hold %r", found.reference, kind or "none")
        return req


def policy_reasons(s: Session, request_ids: Iterable[int]) -> dict[int, str]:
    """For each of ``request_ids``, the release policy's latest line on its timeline
    (why it holds it, as :func:`decide` said it: no patient data); absent: none."""
    ids = sorted(set(request_ids))
    if not ids:
        return {}
    latest = (
        select(RequestEvent.request_id, func.max(RequestEvent.id).label("last"))
        .where(RequestEvent.request_id.in_(ids), RequestEvent.actor == ACTOR)
        .group_by(RequestEvent.request_id)
        .subquery()
    )
    rows = s.execute(
        select(RequestEvent.request_id, RequestEvent.reason).join(
            latest, RequestEvent.id == latest.c.last
        )
    )
    return {int(rid): str(reason) for rid, reason in rows}


def _studies(s: Session, request_id: int) -> list[StudyFacts]:
    rows = s.execute(
        select(RequestStudy.rule, Study.study_uid, Study.first_received_at, Study.study_date)
        .join(Study, Study.id == RequestStudy.study_id)
        .where(RequestStudy.request_id == request_id)
        .order_by(RequestStudy.id)
    )
    return [StudyFacts(rule, uid, arrival, day or "") for rule, uid, arrival, day in rows]


def _day(text: str) -> date | None:
    digits = text.strip().replace(".", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def local_time(at: datetime, zone: tzinfo) -> str:
    """``2026-03-30 10:00 BST``: the site's local time, with its zone's abbreviation."""
    return at.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")

"""What staff can do to a held study from the Studies page: attach, rules again, discard.

Each action is one transaction on the caller's session that:

1. claims the study: an UPDATE of its row while it is ``stable`` (its row lock on
   PostgreSQL; on SQLite the caller holds the database's write lock, see
   :func:`store.db.writing`), so a second staff member acting on the same study waits
   for the first to commit; then, with the lock held, checks that the study is still
   held and that its latest decision is the one the page showed (``seen``). The loser
   of a race is refused with :class:`StudyRefused` ("someone acted on this study
   meanwhile") and nothing is written;
2. does the action, records it on the study's events (and the request's timeline when
   there is a request), and writes a ``held-study`` audit event naming the staff member.

- :func:`attach`: to a request still taking studies (``pending``, ``receiving``,
  ``overdue``). When the study's patient identity (its Patient ID, birth date, name)
  agrees with the request's (:func:`release.identity.compare`), it is attached as
  matching would (``receiving``, then ``ready`` when complete). When it does not, the
  one audited override path is used: an :class:`~store.models.IdentityMismatch` is
  recorded for the pair (if none was) and :func:`release.mismatch.attach_anyway` does
  the attach, which needs a reason and writes the ``identity-override`` audit event. A
  pair staff already kept apart ("not this patient's") is refused. A ``release``
  decision by ``staff`` records the attach on the study.
- :func:`rules_again`: after a rules change, the node's matcher decides again with the
  running rules: the study's ``stable_at`` moves past its latest decision, which makes
  it undecided (:meth:`release.matching.Matcher.undecided`), and the next sweep (every
  few seconds, in whichever process runs the sweeps) decides it exactly as a newly
  stable study, joins and identity check included.
- :func:`discard`: a ``discard`` decision by ``staff`` with the reason; the study is
  purged after ``store.unmatched_retention_days`` like any discarded study (its files
  stay until then). Refused while an identity mismatch of it waits on staff (resolve
  it on the request page first).

Reasons are required for discard and for an attach across an identity mismatch
(:data:`REASON_MAX` characters at most); they go to the timeline and the audit trail.
Messages name references, UIDs and field names, never patient data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from release import progress
from release.errors import InvalidRequest, InvalidTransition
from release.identity import Identity, IdentitySettings, compare
from release.mismatch import attach_anyway, identity_of
from release.progress import JOINABLE, note
from release.requests import RequestBook
from store.audit import record
from store.models import (
    IdentityMismatch,
    MismatchState,
    ReleaseRequest,
    RequestState,
    RequestStudy,
    Study,
    StudyDecision,
    StudyEvent,
    StudyState,
)

REASON_MAX = 500
STAFF_RULE = ""  # decisions staff make name no rule; the reason names the staff member


class StudyRefused(Exception):
    """The action cannot be done now; the message says why (shown to staff, no patient
    data)."""


@dataclass(frozen=True)
class Who:
    """The staff member acting: ``actor`` for timelines (``staff:alice``), ``audit``
    for the audit trail."""

    actor: str
    audit: str


RACE = "Someone acted on this study meanwhile (or the rules decided again); look at it again."


def _reason(text: str, required: bool) -> str:
    clean = " ".join(text.split())
    if required and not clean:
        raise StudyRefused("Give the reason (it goes to the timeline and the audit trail).")
    if len(clean) > REASON_MAX:
        raise StudyRefused(f"The reason is too long (at most {REASON_MAX} characters).")
    return clean


def claim(s: Session, study_uid: str, seen: int | None) -> tuple[Study, StudyDecision]:
    """Lock the held study ``study_uid`` for this transaction and check that its latest
    decision is still ``seen`` (see the module docstring). Raises :class:`StudyRefused`."""
    study_id = s.scalar(select(Study.id).where(Study.study_uid == study_uid))
    if study_id is None:
        raise StudyRefused("No study has this UID.")
    locked = s.execute(
        update(Study)
        .where(Study.id == study_id, Study.state == StudyState.STABLE)
        .values(state=StudyState.STABLE)
        .execution_options(synchronize_session=False)
    )
    if locked.rowcount != 1:  # type: ignore[attr-defined]
        raise StudyRefused(
            "This study is not held any more: it is receiving new instances, or purged."
        )
    # Read after the lock (a fresh statement sees what the race's winner committed).
    study = s.scalars(
        select(Study).where(Study.id == study_id).execution_options(populate_existing=True)
    ).one()
    latest = s.scalar(select(func.max(StudyDecision.id)).where(StudyDecision.study_id == study_id))
    if latest != seen:
        raise StudyRefused(RACE)
    decision = s.get(StudyDecision, latest) if latest is not None else None
    joined = s.scalar(select(func.count()).where(RequestStudy.study_id == study_id))
    stable_at = study.stable_at
    if (
        decision is None
        or joined
        or decision.action != "hold"
        or (stable_at is not None and decision.at < stable_at)
    ):
        raise StudyRefused(
            "This study is not held (it joined a request, was discarded, or waits for the "
            "rules); look at it again."
        )
    return study, decision


def _on_study(s: Session, study: Study, reason: str, now: datetime) -> None:
    s.add(
        StudyEvent(
            study_id=study.id,
            at=now,
            from_state=str(study.state),
            to_state=str(study.state),
            reason=reason,
        )
    )


def _decide(s: Session, study: Study, action: str, reason: str, now: datetime) -> None:
    s.add(
        StudyDecision(
            study_id=study.id,
            at=now,
            action=action,
            rule=STAFF_RULE,
            reason=reason,
            trace=f"staff: {action}",
            retention_days=None,
        )
    )


def attach(
    s: Session,
    book: RequestBook,
    study_uid: str,
    seen: int | None,
    reference: str,
    *,
    who: Who,
    reason: str,
    identity: IdentitySettings,
    now: datetime,
) -> RequestState:
    """Attach the held study to request ``reference`` (see the module docstring);
    returns the request's state afterwards. Raises :class:`StudyRefused`."""
    text = _reason(reason, required=False)
    study, _decision = claim(s, study_uid, seen)
    req = s.scalars(
        select(ReleaseRequest).where(ReleaseRequest.reference == reference[:64])
    ).one_or_none()
    if req is None:
        raise StudyRefused("Choose one of the requests listed.")
    state = RequestState(req.state)
    if state not in JOINABLE:
        raise StudyRefused(
            f"Request {req.reference} is {state}: it takes no more studies; choose another."
        )
    theirs = Identity(study.patient_id, study.patient_birth_date, study.patient_name)
    verdict = compare(identity_of(req), theirs, identity)
    why = f"attached by {who.actor} from the Studies page"
    if not verdict.agrees:
        state = _across_mismatch(s, book, study, req, verdict.blocking, who, text, now)
        why += f" despite identity mismatch ({' '.join(verdict.blocking)})"
    else:
        line = f"study {study.study_uid} {why}" + (f": {text}" if text else "")
        state = progress.attach(
            s, book, req, study, rule=STAFF_RULE, why=line, actor=who.actor, now=now
        )
        if verdict.flagged:
            note(s, req, who.actor, f"study {study.study_uid}: name spelled differently", now)
    detail = f"{why}: {text}" if text else why
    _decide(s, study, "release", f"{detail} (request {req.reference})", now)
    _on_study(s, study, f"{detail} (request {req.reference})", now)
    record(
        s,
        "held-study",
        actor=who.audit,
        studies=[study.study_uid],
        request=req.reference,
        detail=f"held study attached to the request: {detail}",
        at=now,
    )
    return state


def _across_mismatch(
    s: Session,
    book: RequestBook,
    study: Study,
    req: ReleaseRequest,
    fields: tuple[str, ...],
    who: Who,
    text: str,
    now: datetime,
) -> RequestState:
    """The identity check's own override path (a reason required, audited)."""
    if not text:
        raise StudyRefused(
            f"The patient identity of this study differs from request {req.reference}'s "
            f"({', '.join(fields)}): check with the PACS or the patient, then give the "
            "reason to attach it anyway."
        )
    m = s.scalars(
        select(IdentityMismatch).where(
            IdentityMismatch.request_id == req.id, IdentityMismatch.study_id == study.id
        )
    ).one_or_none()
    if m is None:
        m = IdentityMismatch(
            request_id=req.id,
            study_id=study.id,
            fields=" ".join(fields),
            rule=STAFF_RULE,
            state=MismatchState.OPEN,
            found_at=now,
        )
        s.add(m)
        s.flush()
    elif m.state == MismatchState.DISMISSED:
        raise StudyRefused(
            f"Staff kept this study held from request {req.reference} (not this "
            "patient's); choose another request."
        )
    try:
        return attach_anyway(
            s, book, req.id, m.id, actor=who.actor, audit_actor=who.audit, reason=text, now=now
        )
    except (InvalidRequest, InvalidTransition) as exc:
        raise StudyRefused(str(exc)[:1].upper() + str(exc)[1:] + ".") from exc


def rules_again(s: Session, study_uid: str, seen: int | None, *, who: Who, now: datetime) -> None:
    """Make the held study undecided, for the matcher's next sweep to decide it with the
    running rules (see the module docstring). Raises :class:`StudyRefused`."""
    study, decision = claim(s, study_uid, seen)
    # Strictly after the latest decision, even on a clock that has not moved since.
    study.stable_at = max(now, decision.at + timedelta(microseconds=1))
    why = f"sent to the rules again by {who.actor} (after decision #{decision.id})"
    _on_study(s, study, why, now)
    record(
        s,
        "held-study",
        actor=who.audit,
        studies=[study.study_uid],
        detail="held study sent to the release rules again",
        at=now,
    )


def discard(
    s: Session, study_uid: str, seen: int | None, *, who: Who, reason: str, now: datetime
) -> None:
    """A staff ``discard`` decision with ``reason`` (required). Raises
    :class:`StudyRefused`."""
    text = _reason(reason, required=True)
    study, _decision = claim(s, study_uid, seen)
    waiting = s.scalar(
        select(ReleaseRequest.reference)
        .join(IdentityMismatch, IdentityMismatch.request_id == ReleaseRequest.id)
        .where(IdentityMismatch.study_id == study.id, IdentityMismatch.state == MismatchState.OPEN)
        .limit(1)
    )
    if waiting is not None:
        raise StudyRefused(
            f"This study waits on request {waiting}'s identity check: attach it or keep it "
            "held there first."
        )
    why = f"discarded by {who.actor}: {text}"
    _decide(s, study, "discard", why, now)
    _on_study(s, study, why, now)
    record(
        s,
        "held-study",
        actor=who.audit,
        studies=[study.study_uid],
        detail=f"held study discarded: {text}",
        at=now,
    )

"""Why a request is waiting, and what on the dashboard needs a look because of studies.

Read-only; plain dataclasses out. :func:`why_waiting` explains a request that still
takes studies (``pending``, ``receiving``, ``overdue``), one :class:`WaitReason` per
open selection or held study, in the words staff act on:

- ``none-arrived``: no study with that accession number / Study Instance UID has
  arrived (or, for a request waiting for studies tagged with its reference, none has
  joined yet);
- ``arriving``: one arrived and is still receiving, or waits for the rules' decision;
- ``held``: one arrived but the rules held it (the rule and its reason; the page offers
  to attach it, through :mod:`portal.staff_studies_actions`);
- ``discarded``: one arrived but was discarded (by a rule or staff);
- ``incomplete``: attached, but N of the M instances the request expects;
- ``identity``: a study was held from this request because its patient identity
  differs (the fields; the identity block on the same page shows both sides).

:func:`attention` gives the dashboard's study-related lists: studies held longer than
``portal.held_alert_h``, requests still waiting while a held study of the same
Patient ID is here, and pulls from the PACS that failed for live requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.staff_studies_list import (
    JOINABLE,
    LIMIT_ATTENTION,
    StudyRow,
    accession_studies,
    base_query,
    held_candidates_of,
    held_condition,
    study_row,
)
from store.models import (
    IdentityMismatch,
    MismatchState,
    Pull,
    PullState,
    ReleaseRequest,
    RequestSelection,
    RequestState,
    RequestStudy,
    SelectionKind,
    Study,
    StudyDecision,
)


@dataclass(frozen=True)
class WaitReason:
    """One reason a request waits; ``study`` is the study it is about, if any."""

    kind: str
    text: str
    study: StudyRow | None = None
    mismatch_id: int | None = None


@dataclass
class Waiting:
    reasons: list[WaitReason] = field(default_factory=list)
    candidates: list[StudyRow] = field(default_factory=list)  # the patient's other studies


def _by_uid(s: Session, uids: list[str]) -> list[StudyRow]:
    # One row each: a request names few studies.
    return [row for uid in uids if (row := study_row(s, uid)) is not None]


def _about(kind: SelectionKind | str) -> str:
    return "accession number" if kind == SelectionKind.ACCESSION else "Study Instance UID"


def why_waiting(s: Session, req: ReleaseRequest) -> Waiting:
    """Why ``req`` waits (see the module docstring); empty once it takes no studies."""
    out = Waiting()
    if RequestState(req.state) not in JOINABLE:
        return out
    attached = {
        uid: n
        for uid, n in s.execute(
            select(Study.study_uid, Study.instance_count)
            .join(RequestStudy, RequestStudy.study_id == Study.id)
            .where(RequestStudy.request_id == req.id)
        )
    }
    selections = list(
        s.scalars(
            select(RequestSelection)
            .where(RequestSelection.request_id == req.id)
            .order_by(RequestSelection.id)
        )
    )
    for sel in selections:
        if sel.kind == SelectionKind.REFERENCE:
            if not attached:
                out.reasons.append(
                    WaitReason(
                        "none-arrived",
                        f"No study tagged with this request's reference {req.reference} "
                        "has arrived.",
                    )
                )
            continue
        about = _about(sel.kind)
        if sel.kind == SelectionKind.ACCESSION:
            found = accession_studies(s, [sel.value])
        else:
            found = _by_uid(s, [sel.value])
        mine = [row for row in found if row.study_uid in attached]
        if not found:
            out.reasons.append(
                WaitReason("none-arrived", f"No study with {about} {sel.value} has arrived.")
            )
            continue
        if mine:
            row = mine[0]
            if row.status == "receiving":
                out.reasons.append(
                    WaitReason(
                        "arriving",
                        f"Study with {about} {sel.value}: still receiving "
                        f"({row.instance_count} instances so far).",
                        row,
                    )
                )
            elif sel.expected_instances and row.instance_count < sel.expected_instances:
                out.reasons.append(
                    WaitReason(
                        "incomplete",
                        f"Study with {about} {sel.value} is incomplete: "
                        f"{row.instance_count} of {sel.expected_instances} instances.",
                        row,
                    )
                )
            continue
        for row in found:
            d = row.decision
            if row.status == "held" and d is not None:
                rule = f"rule {d.rule}" if d.rule else "no rule matched"
                text = (
                    f"A study with {about} {sel.value} arrived but was held ({rule}: "
                    f"{d.reason or 'held for staff'})."
                )
                out.reasons.append(WaitReason("held", text, row))
            elif row.status == "discarded" and d is not None:
                who = f"rule {d.rule}" if d.rule else "staff"
                out.reasons.append(
                    WaitReason(
                        "discarded",
                        f"A study with {about} {sel.value} arrived but was discarded by {who}.",
                        row,
                    )
                )
            elif row.status in ("receiving", "undecided"):
                state = "still receiving" if row.status == "receiving" else "waits for the rules"
                out.reasons.append(
                    WaitReason("arriving", f"A study with {about} {sel.value} {state}.", row)
                )
            elif row.status == "joined":
                out.reasons.append(
                    WaitReason(
                        "arriving",
                        f"A study with {about} {sel.value} joined another request "
                        f"({', '.join(row.requests)}), not this one.",
                        row,
                    )
                )
    for m, uid in s.execute(
        select(IdentityMismatch, Study.study_uid)
        .join(Study, Study.id == IdentityMismatch.study_id)
        .where(IdentityMismatch.request_id == req.id, IdentityMismatch.state == MismatchState.OPEN)
        .order_by(IdentityMismatch.id)
    ):
        fields = ", ".join(m.fields.split())
        out.reasons.append(
            WaitReason(
                "identity",
                f"Study {uid} was held from this request: patient identity differs ({fields}).",
                mismatch_id=m.id,
            )
        )
    named = {r.study.study_uid for r in out.reasons if r.study is not None}
    out.candidates = [row for row in held_candidates_of(s, req) if row.study_uid not in named]
    return out


# -- the dashboard ----------------------------------------------------------------------


@dataclass(frozen=True)
class HeldLine:
    study_uid: str
    accession_number: str
    held_since: datetime
    rule: str
    reason: str


@dataclass(frozen=True)
class CandidateLine:
    reference: str
    state: str
    held_studies: int


@dataclass(frozen=True)
class PullLine:
    reference: str
    study_uid: str
    finished_at: datetime | None
    last_error: str


@dataclass
class Attention:
    held: list[HeldLine] = field(default_factory=list)
    candidates: list[CandidateLine] = field(default_factory=list)
    pulls: list[PullLine] = field(default_factory=list)

    @property
    def quiet(self) -> bool:
        return not (self.held or self.candidates or self.pulls)


def attention(s: Session, now: datetime, held_alert_h: float) -> Attention:
    """The dashboard's study lists (see the module docstring), each bounded."""
    out = Attention()
    cutoff = now - timedelta(hours=held_alert_h)
    for uid, acc, at, rule, reason in s.execute(
        base_query(
            Study.study_uid,
            Study.accession_number,
            StudyDecision.at,
            StudyDecision.rule,
            StudyDecision.reason,
        )
        .where(held_condition(), StudyDecision.at < cutoff)
        .order_by(StudyDecision.at, Study.id)
        .limit(LIMIT_ATTENTION)
    ):
        out.held.append(HeldLine(uid, acc, at, rule, reason))
    held_patients = list(
        s.scalars(
            base_query(Study.patient_id)
            .where(held_condition(), Study.patient_id != "")
            .distinct()
            .limit(LIMIT_ATTENTION)
        )
    )
    if held_patients:
        counts: dict[str, int] = {}
        for pid in s.scalars(
            base_query(Study.patient_id).where(
                held_condition(), Study.patient_id.in_(held_patients)
            )
        ):
            counts[pid] = counts.get(pid, 0) + 1
        for ref, state, pid in s.execute(
            select(ReleaseRequest.reference, ReleaseRequest.state, ReleaseRequest.patient_id)
            .where(
                ReleaseRequest.state.in_(JOINABLE),
                ReleaseRequest.patient_id.in_(held_patients),
            )
            .order_by(ReleaseRequest.created_at, ReleaseRequest.id)
            .limit(LIMIT_ATTENTION)
        ):
            out.candidates.append(CandidateLine(ref, str(state), counts.get(pid, 0)))
    for ref, uid, finished, error in s.execute(
        select(ReleaseRequest.reference, Pull.study_uid, Pull.finished_at, Pull.last_error)
        .join(ReleaseRequest, ReleaseRequest.id == Pull.request_id)
        .where(Pull.state == PullState.FAILED, ReleaseRequest.state.in_(JOINABLE))
        .order_by(Pull.id.desc())
        .limit(LIMIT_ATTENTION)
    ):
        out.pulls.append(PullLine(ref, uid, finished, error))
    return out

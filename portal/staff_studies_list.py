"""The staff Studies page's data: every received study, searched, held ones first.

Read-only; plain dataclasses out, so templates never touch a session. A study's
*status* on the page is one of :data:`STATUSES`, derived from its row, its latest
:class:`~store.models.StudyDecision` and its links to requests:

- ``purged``: its files were deleted after retention (``purging`` counts too);
- ``joined``: attached to at least one request;
- ``receiving``: instances still arriving (not stable yet);
- ``undecided``: stable, and the rules have not decided since it became stable (just
  arrived, or staff sent it to the rules again: the node's next sweep decides);
- ``held``: the latest decision is ``hold`` (no rule released it, or it released it
  but no pending request had its keys, or the patient identity differed): waiting for
  staff, purged after ``store.unmatched_retention_days``;
- ``discarded``: a ``discard``/``reject`` decision (a rule's, or staff's).

The search (:class:`StudyQuery`) takes a Patient ID (exact), a name (words in order,
any case), an accession number (exact), a study date and a status; results are paged
(:data:`PAGE_SIZE` a page, at most :data:`MAX_PAGE` pages) so a page stays bounded
whatever the store holds. Header values are patient data: templates escape them and
isolate them in ``<bdi>``; nothing here logs them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, exists, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from store.models import (
    IdentityMismatch,
    ReleaseRequest,
    RequestState,
    RequestStudy,
    Study,
    StudyDecision,
    StudyEvent,
    StudyState,
)

STATUSES = ("held", "undecided", "receiving", "joined", "discarded", "purged")
PAGE_SIZE = 50
MAX_PAGE = 200
CANDIDATE_LIMIT = 50
LIMIT_ATTENTION = 200  # each of the dashboard's lists
# The states a request still takes studies in (release.progress.JOINABLE; repeated here
# so the read side needs no import of the matcher).
JOINABLE = (RequestState.PENDING, RequestState.RECEIVING, RequestState.OVERDUE)
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")


@dataclass(frozen=True)
class StudyQuery:
    """What staff searched for; every field optional (empty: any)."""

    patient_id: str = ""
    name: str = ""
    accession: str = ""
    date: str = ""  # YYYYMMDD (the form also takes YYYY-MM-DD)
    status: str = ""
    page: int = 1

    @classmethod
    def parse(cls, params: Any) -> tuple[StudyQuery, list[str]]:
        """The query from a GET form's parameters, and the problems found (each names
        its field, never echoes the value); a bad field is left out of the search."""
        problems: list[str] = []

        def text(name: str, limit: int) -> str:
            value = " ".join(str(params.get(name, "") or "").split())
            if len(value) > limit or not value.isprintable():
                problems.append(f"{name}: at most {limit} printable characters")
                return ""
            return value

        date = text("date", 10)
        m = _DATE.match(date)
        if date and not m:
            problems.append("date: expected YYYY-MM-DD")
        status = str(params.get("status", "") or "")
        if status and status not in STATUSES:
            problems.append(f"status: expected one of {', '.join(STATUSES)}")
            status = ""
        raw = str(params.get("page", "") or "1")
        page = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 4 else 0
        if not 1 <= page <= MAX_PAGE:
            problems.append(f"page: expected 1 to {MAX_PAGE}")
            page = 1
        return (
            cls(
                patient_id=text("patient_id", 64),
                name=text("name", 64),
                accession=text("accession", 16),
                date="".join(m.groups()) if m else "",
                status=status,
                page=page,
            ),
            problems,
        )

    def params(self, **over: Any) -> dict[str, str]:
        """The non-empty fields as GET parameters (for the pager's links)."""
        values = {
            "patient_id": self.patient_id,
            "name": self.name,
            "accession": self.accession,
            "date": self.date,
            "status": self.status,
            "page": str(self.page) if self.page > 1 else "",
        }
        values.update({k: str(v) for k, v in over.items()})
        return {k: v for k, v in values.items() if v and not (k == "page" and v == "1")}


@dataclass(frozen=True)
class DecisionLine:
    id: int
    at: datetime
    action: str
    rule: str
    reason: str
    trace: str


@dataclass(frozen=True)
class StudyRow:
    """One study as the Studies page lists it."""

    id: int
    study_uid: str
    status: str
    patient_id: str
    patient_name: str
    patient_birth_date: str
    accession_number: str
    study_date: str
    study_description: str
    modalities: str
    instance_count: int
    calling_ae: str
    called_ae: str
    peer_host: str
    first_received_at: datetime
    last_received_at: datetime
    stable_at: datetime | None
    decision: DecisionLine | None
    requests: list[str] = field(default_factory=list)


@dataclass
class StudyPage:
    rows: list[StudyRow]
    query: StudyQuery
    more: bool  # a next page exists


# -- the status, in SQL (to search and order) and from a row ----------------------------

_LATEST = (
    select(func.max(StudyDecision.id))
    .where(StudyDecision.study_id == Study.id)
    .correlate(Study)
    .scalar_subquery()
)
_JOINED = exists().where(RequestStudy.study_id == Study.id)
_DECIDED = and_(StudyDecision.id.is_not(None), StudyDecision.at >= Study.stable_at)
_status: ColumnElement[str] = case(
    (Study.state.in_([StudyState.PURGED, StudyState.PURGING]), "purged"),
    (_JOINED, "joined"),
    (Study.state == StudyState.RECEIVING, "receiving"),
    (~_DECIDED, "undecided"),
    (StudyDecision.action.in_(["discard", "reject"]), "discarded"),
    else_="held",
)


def held_condition() -> ColumnElement[bool]:
    """True for a held study, in a query that outer-joins its latest decision as
    :func:`base_query` does."""
    return _status == "held"


def base_query(*columns: Any) -> Any:
    """``SELECT columns`` over studies outer-joined with their latest decision."""
    return select(*columns).outerjoin(StudyDecision, StudyDecision.id == _LATEST)


def _decision(d: StudyDecision | None) -> DecisionLine | None:
    if d is None:
        return None
    return DecisionLine(d.id, d.at, d.action, d.rule, d.reason, d.trace)


def _row(st: Study, d: StudyDecision | None, status: str, refs: list[str]) -> StudyRow:
    return StudyRow(
        st.id,
        st.study_uid,
        status,
        st.patient_id,
        st.patient_name,
        st.patient_birth_date,
        st.accession_number,
        st.study_date,
        st.study_description,
        st.modalities,
        st.instance_count,
        st.calling_ae,
        st.called_ae,
        st.peer_host,
        st.first_received_at,
        st.last_received_at,
        st.stable_at,
        _decision(d),
        refs,
    )


def _like(text: str) -> str:
    """A LIKE pattern: the words in order, anything between (``Doe Jane`` finds
    ``DOE^JANE``); LIKE's own wildcards in the text are matched literally."""
    words = [re.sub(r"([\\%_])", r"\\\1", w) for w in re.split(r"[\s^,]+", text) if w]
    return "%" + "%".join(words) + "%"


def joined_references(s: Session, study_ids: list[int]) -> dict[int, list[str]]:
    """The references of the requests each study joined, oldest link first."""
    out: dict[int, list[str]] = {}
    if not study_ids:
        return out
    for sid, ref in s.execute(
        select(RequestStudy.study_id, ReleaseRequest.reference)
        .join(ReleaseRequest, ReleaseRequest.id == RequestStudy.request_id)
        .where(RequestStudy.study_id.in_(study_ids))
        .order_by(RequestStudy.id)
    ):
        out.setdefault(sid, []).append(ref)
    return out


def search(s: Session, query: StudyQuery) -> StudyPage:
    """One page of studies matching ``query``: held first, then newest arrival first."""
    q = base_query(Study, StudyDecision, _status)
    if query.patient_id:
        q = q.where(Study.patient_id == query.patient_id)
    if query.name:
        q = q.where(func.lower(Study.patient_name).like(_like(query.name.lower()), escape="\\"))
    if query.accession:
        q = q.where(Study.accession_number == query.accession)
    if query.date:
        q = q.where(Study.study_date == query.date)
    if query.status:
        q = q.where(_status == query.status)
    q = q.order_by(
        case((_status == "held", 0), else_=1), Study.last_received_at.desc(), Study.id.desc()
    )
    rows = list(s.execute(q.offset((query.page - 1) * PAGE_SIZE).limit(PAGE_SIZE + 1)))
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    refs = joined_references(s, [st.id for st, _d, _status in rows])
    return StudyPage(
        [_row(st, d, status, refs.get(st.id, [])) for st, d, status in rows], query, more
    )


# -- one study --------------------------------------------------------------------------


@dataclass(frozen=True)
class EventLine:
    at: datetime
    from_state: str
    to_state: str
    reason: str


@dataclass(frozen=True)
class MismatchLine:
    id: int
    reference: str
    fields: str
    state: str
    found_at: datetime


@dataclass(frozen=True)
class Candidate:
    """A request the study could be attached to."""

    reference: str
    state: str
    patient_id: str
    patient_name: str
    created_at: datetime
    same_patient: bool


@dataclass
class StudyDetail:
    row: StudyRow
    events: list[EventLine]
    decisions: list[DecisionLine]
    mismatches: list[MismatchLine]
    candidates: list[Candidate]


def study_row(s: Session, study_uid: str) -> StudyRow | None:
    """The row of the study ``study_uid``, or None."""
    found = s.execute(base_query(Study, StudyDecision, _status).where(Study.study_uid == study_uid))
    first = found.first()
    if first is None:
        return None
    st, d, status = first
    return _row(st, d, status, joined_references(s, [st.id]).get(st.id, []))


def candidates(s: Session, patient_id: str, exclude: list[str]) -> list[Candidate]:
    """Requests still taking studies: the patient's (same Patient ID) first, then the
    others, newest first (at most :data:`CANDIDATE_LIMIT` of each)."""
    out: list[Candidate] = []
    for same in (True, False):
        cond = ReleaseRequest.patient_id == patient_id
        q = (
            select(ReleaseRequest)
            .where(ReleaseRequest.state.in_(JOINABLE), cond if same else ~cond)
            .order_by(ReleaseRequest.created_at.desc(), ReleaseRequest.id.desc())
            .limit(CANDIDATE_LIMIT)
        )
        if exclude:
            q = q.where(ReleaseRequest.reference.not_in(exclude))
        out += [
            Candidate(r.reference, str(r.state), r.patient_id, r.patient_name, r.created_at, same)
            for r in s.scalars(q)
        ]
    return out


def study_detail(s: Session, study_uid: str) -> StudyDetail | None:
    """Everything the study page shows, or None for an unknown UID."""
    row = study_row(s, study_uid)
    if row is None:
        return None
    events = [
        EventLine(e.at, e.from_state, e.to_state, e.reason)
        for e in s.scalars(
            select(StudyEvent).where(StudyEvent.study_id == row.id).order_by(StudyEvent.id)
        )
    ]
    decisions = [
        DecisionLine(d.id, d.at, d.action, d.rule, d.reason, d.trace)
        for d in s.scalars(
            select(StudyDecision)
            .where(StudyDecision.study_id == row.id)
            .order_by(StudyDecision.id.desc())
            .limit(100)
        )
    ]
    mismatches = [
        MismatchLine(m.id, ref, m.fields, str(m.state), m.found_at)
        for m, ref in s.execute(
            select(IdentityMismatch, ReleaseRequest.reference)
            .join(ReleaseRequest, ReleaseRequest.id == IdentityMismatch.request_id)
            .where(IdentityMismatch.study_id == row.id)
            .order_by(IdentityMismatch.id)
        )
    ]
    offered = candidates(s, row.patient_id, row.requests) if row.status == "held" else []
    return StudyDetail(row, events, decisions, mismatches, offered)


def held_candidates_of(s: Session, req: ReleaseRequest, limit: int = 20) -> list[StudyRow]:
    """Studies of the request's patient (same Patient ID) not attached to it and not
    purged: held ones first (what staff may attach from the request page)."""
    q = (
        base_query(Study, StudyDecision, _status)
        .where(
            Study.patient_id == req.patient_id,
            Study.state.not_in([StudyState.PURGED, StudyState.PURGING]),
            ~exists().where(RequestStudy.study_id == Study.id, RequestStudy.request_id == req.id),
        )
        .order_by(case((_status == "held", 0), else_=1), Study.last_received_at.desc())
        .limit(limit)
    )
    rows = list(s.execute(q))
    refs = joined_references(s, [st.id for st, _d, _status in rows])
    return [_row(st, d, status, refs.get(st.id, [])) for st, d, status in rows]


def accession_studies(s: Session, accessions: list[str], limit: int = 20) -> list[StudyRow]:
    """Studies (not purged) whose accession number is one of ``accessions``."""
    if not accessions:
        return []
    q = (
        base_query(Study, StudyDecision, _status)
        .where(or_(*(Study.accession_number == a for a in accessions)))
        .order_by(Study.last_received_at.desc())
        .limit(limit)
    )
    rows = list(s.execute(q))
    refs = joined_references(s, [st.id for st, _d, _status in rows])
    return [_row(st, d, status, refs.get(st.id, [])) for st, d, status in rows]

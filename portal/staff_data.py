"""What the staff pages show, read from the database: the dashboard's lists, a request's
story (milestones, events, messages, links, packages) and the studies to pick from.

Read-only; plain dataclasses out, so templates never touch a session. Recipients are
masked here (``j•••@example.org``, ``+44 •••• ••56``): the grants table says where a
link went without spelling out the address.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import phonenumbers
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from release.states import RESENDABLE, allowed
from store.models import (
    Grant,
    Notification,
    NotificationAttempt,
    NotificationState,
    Package,
    ReleaseRequest,
    RequestEvent,
    RequestState,
    RequestStudy,
    Study,
    StudyState,
)

STUCK_PACKAGING = timedelta(hours=1)
"""A request still ``packaging`` after this long needs a look (a build normally takes
seconds to minutes; a crash leaves it there until the next start-up)."""
LIST_LIMIT = 200
STUDY_LIMIT = 200


def mask_email(address: str) -> str:
    """``jane@example.org`` → ``j•••@example.org``."""
    local, at, domain = address.partition("@")
    return f"{local[:1]}•••@{domain}" if at else "•••"


def mask_phone(number: str) -> str:
    """``+447911123456`` → ``+44 •••• ••56``."""
    try:
        cc = phonenumbers.parse(number, None).country_code
    except phonenumbers.NumberParseException:
        return "•••"
    return f"+{cc} •••• ••{number[-2:]}"


def mask_channel(channel: str) -> str:
    """A second channel (``sms:+…`` or ``email:…``) masked, with its kind."""
    kind, _, address = channel.partition(":")
    if kind == "sms":
        return f"SMS {mask_phone(address)}"
    return f"email {mask_email(address)}" if kind == "email" else "•••"


def grant_state(grant: Grant, now: datetime) -> str:
    """``revoked``, ``locked``, ``expired`` or ``active`` (the first that applies)."""
    if grant.revoked_at is not None:
        return "revoked"
    if grant.locked_at is not None:
        return "locked"
    return "expired" if now >= grant.expires_at else "active"


# -- dashboard --------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestLine:
    reference: str
    state: str
    patient_id: str
    patient_name: str
    urgency: str
    created_at: datetime
    updated_at: datetime
    due_by: datetime | None
    selected: int = 0


@dataclass(frozen=True)
class LockedLine:
    reference: str
    grant_id: int
    purpose: str
    locked_at: datetime


@dataclass(frozen=True)
class AlertLine:
    kind: str
    state: str
    reference: str | None
    created_at: datetime
    last_error: str


@dataclass
class Dashboard:
    counts: dict[str, int]
    overdue: list[RequestLine] = field(default_factory=list)
    failed: list[RequestLine] = field(default_factory=list)
    stuck: list[RequestLine] = field(default_factory=list)
    locked: list[LockedLine] = field(default_factory=list)
    alerts: list[AlertLine] = field(default_factory=list)

    @property
    def quiet(self) -> bool:
        return not (self.overdue or self.failed or self.stuck or self.locked or self.alerts)


def line(req: ReleaseRequest, selected: int = 0) -> RequestLine:
    return RequestLine(
        req.reference,
        str(req.state),
        req.patient_id,
        req.patient_name,
        str(req.urgency),
        req.created_at,
        req.updated_at,
        req.due_by,
        selected,
    )


def _in_state(s: Session, state: RequestState, *extra: Any) -> list[RequestLine]:
    q = (
        select(ReleaseRequest)
        .where(ReleaseRequest.state == state, *extra)
        .order_by(ReleaseRequest.updated_at, ReleaseRequest.id)
        .limit(LIST_LIMIT)
    )
    return [line(r) for r in s.scalars(q)]


def dashboard(s: Session, now: datetime) -> Dashboard:
    """What needs attention now, and how many requests are in each state."""
    counts = {str(st): 0 for st in RequestState}
    for state, n in s.execute(
        select(ReleaseRequest.state, func.count()).group_by(ReleaseRequest.state)
    ):
        counts[str(state)] = int(n)
    board = Dashboard(counts)
    board.overdue = _in_state(s, RequestState.OVERDUE)
    board.failed = _in_state(s, RequestState.FAILED)
    board.stuck = _in_state(
        s, RequestState.PACKAGING, ReleaseRequest.updated_at < now - STUCK_PACKAGING
    )
    live = (RequestState.NOTIFIED, RequestState.DOWNLOADED)
    for grant, reference in s.execute(
        select(Grant, ReleaseRequest.reference)
        .join(ReleaseRequest, ReleaseRequest.id == Grant.request_id)
        .where(
            Grant.locked_at.is_not(None),
            Grant.revoked_at.is_(None),
            Grant.expires_at > now,
            ReleaseRequest.state.in_(live),
        )
        .order_by(Grant.locked_at)
        .limit(LIST_LIMIT)
    ):
        assert grant.locked_at is not None
        board.locked.append(LockedLine(reference, grant.id, grant.purpose, grant.locked_at))
    held = (NotificationState.HELD, NotificationState.FAILED)
    for row in s.scalars(
        select(Notification)
        .where(Notification.kind.startswith("alert_"), Notification.state.in_(held))
        .order_by(Notification.created_at.desc(), Notification.id.desc())
        .limit(LIST_LIMIT)
    ):
        params = json.loads(row.params or "{}")
        board.alerts.append(
            AlertLine(
                str(params.get("alert") or row.kind.removeprefix("alert_")),
                str(row.state),
                params.get("reference"),
                row.created_at,
                row.last_error,
            )
        )
    return board


def request_lines(s: Session, state: RequestState | None) -> list[RequestLine]:
    """Requests, newest first (at most :data:`LIST_LIMIT`), optionally in ``state``."""
    q = (
        select(ReleaseRequest)
        .order_by(ReleaseRequest.created_at.desc(), ReleaseRequest.id.desc())
        .options(selectinload(ReleaseRequest.selections))
    )
    if state is not None:
        q = q.where(ReleaseRequest.state == state)
    rows = list(s.scalars(q.limit(LIST_LIMIT)))
    return [line(r, len(r.selections)) for r in rows]


# -- one request ------------------------------------------------------------------------


@dataclass(frozen=True)
class GrantLine:
    id: int
    purpose: str
    recipient: str
    second_channel: str
    state: str
    created_at: datetime
    expires_at: datetime
    first_opened_at: datetime | None
    codes_sent: int
    codes_failed: int
    downloads: int
    failures: int
    parent_grant_id: int | None


@dataclass(frozen=True)
class MessageLine:
    kind: str
    channel: str
    recipient: str
    state: str
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    last_error: str
    outcomes: list[str]


@dataclass(frozen=True)
class StudyLine:
    study_uid: str
    accession_number: str
    study_date: str
    study_description: str
    modalities: str
    instance_count: int
    state: str
    matched_at: datetime | None = None


@dataclass
class Story:
    """Everything the request page shows besides the request row itself."""

    milestones: list[tuple[str, datetime | None]]
    events: list[RequestEvent]
    studies: list[StudyLine]
    grants: list[GrantLine]
    messages: list[MessageLine]
    packages: list[Package]
    marked_for_cd: bool


MILESTONES = (
    "received",
    "matched",
    "packaged",
    "notified",
    "opened",
    "code sent",
    "downloaded",
    "forwarded",
)
CD_MARK = "marked for CD"


def _first(values: list[datetime | None]) -> datetime | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def story(s: Session, req: ReleaseRequest, now: datetime) -> Story:
    """The request's story, from its rows (see :data:`MILESTONES`)."""
    events = list(
        s.scalars(
            select(RequestEvent)
            .where(RequestEvent.request_id == req.id)
            .order_by(RequestEvent.at, RequestEvent.id)
        )
    )
    studies = [
        StudyLine(
            st.study_uid,
            st.accession_number,
            st.study_date,
            st.study_description,
            st.modalities,
            st.instance_count,
            str(st.state),
            rs.matched_at,
        )
        for st, rs in s.execute(
            select(Study, RequestStudy)
            .join(RequestStudy, RequestStudy.study_id == Study.id)
            .where(RequestStudy.request_id == req.id)
            .order_by(RequestStudy.matched_at)
        )
    ]
    first_received = s.scalar(
        select(func.min(Study.first_received_at))
        .join(RequestStudy, RequestStudy.study_id == Study.id)
        .where(RequestStudy.request_id == req.id)
    )
    grants = list(s.scalars(select(Grant).where(Grant.request_id == req.id).order_by(Grant.id)))
    packages = list(
        s.scalars(select(Package).where(Package.request_id == req.id).order_by(Package.id))
    )
    rows = list(
        s.scalars(
            select(Notification)
            .where(Notification.request_id == req.id)
            .order_by(Notification.created_at, Notification.id)
        )
    )
    outcomes: dict[int, list[str]] = {}
    if rows:
        for a in s.scalars(
            select(NotificationAttempt)
            .where(NotificationAttempt.notification_id.in_([r.id for r in rows]))
            .order_by(NotificationAttempt.id)
        ):
            text = f"{a.started_at:%Y-%m-%d %H:%M} {a.channel} {a.outcome or 'no outcome'}"
            outcomes.setdefault(a.notification_id, []).append(
                text + (f" ({a.code})" if a.code else "")
            )
    messages = [
        MessageLine(
            r.kind,
            r.channel,
            mask_phone(r.recipient) if r.channel == "sms" else mask_email(r.recipient),
            str(r.state),
            r.attempts,
            r.created_at,
            r.sent_at,
            r.last_error,
            outcomes.get(r.id, []),
        )
        for r in rows
    ]
    sent = [m for m in messages if m.state == NotificationState.SENT]
    milestones: list[tuple[str, datetime | None]] = [
        ("received", first_received),
        ("matched", _first([st.matched_at for st in studies])),
        ("packaged", _first([p.built_at for p in packages])),
        ("notified", _first([m.sent_at for m in sent if m.kind == "link_email"])),
        ("opened", _first([g.first_opened_at for g in grants])),
        ("code sent", _first([m.sent_at for m in sent if m.kind.startswith("code_")])),
        (
            "downloaded",
            _first(
                [
                    e.at
                    for e in events
                    if e.to_state == RequestState.DOWNLOADED and e.from_state != e.to_state
                ]
            ),
        ),
        ("forwarded", _first([g.created_at for g in grants if g.parent_grant_id is not None])),
    ]
    return Story(
        milestones=milestones,
        events=events,
        studies=studies,
        grants=[
            GrantLine(
                g.id,
                g.purpose,
                mask_email(g.recipient_email),
                mask_channel(g.second_channel),
                grant_state(g, now),
                g.created_at,
                g.expires_at,
                g.first_opened_at,
                g.codes_sent,
                g.codes_failed,
                g.downloads,
                g.failures,
                g.parent_grant_id,
            )
            for g in grants
        ],
        messages=messages,
        packages=packages,
        marked_for_cd=any(e.reason.startswith(CD_MARK) for e in events),
    )


def studies_of_patient(s: Session, patient_id: str) -> list[StudyLine]:
    """Received studies (not purged) whose Patient ID is ``patient_id``, newest first."""
    q = (
        select(Study)
        .where(Study.patient_id == patient_id, Study.state != StudyState.PURGED)
        .order_by(Study.study_date.desc(), Study.last_received_at.desc())
        .limit(STUDY_LIMIT)
    )
    return [
        StudyLine(
            st.study_uid,
            st.accession_number,
            st.study_date,
            st.study_description,
            st.modalities,
            st.instance_count,
            str(st.state),
        )
        for st in s.scalars(q)
    ]


def patient_of(s: Session, patient_id: str) -> tuple[str, str]:
    """The name and birth date the newest received study gives for ``patient_id``
    (to prefill the form; staff check them), or empty strings."""
    row = s.execute(
        select(Study.patient_name, Study.patient_birth_date)
        .where(Study.patient_id == patient_id)
        .order_by(Study.last_received_at.desc())
        .limit(1)
    ).first()
    return (row[0], row[1]) if row else ("", "")


# -- what can be done -------------------------------------------------------------------

LIVE = (RequestState.NOTIFIED, RequestState.DOWNLOADED)
"""States in which a request's links are in use (a package exists and is kept)."""


@dataclass(frozen=True)
class Choices:
    """Which actions the request page offers, and on which links. The action itself
    checks again, in its transaction: this only decides what is shown."""

    resend: bool
    revoke: list[GrantLine]
    extend: list[GrantLine]
    reissue: list[GrantLine]
    cd: bool
    cancel: bool


def choices(req: ReleaseRequest, told: Story) -> Choices:
    state = RequestState(req.state)
    live = state in LIVE
    grants = told.grants
    return Choices(
        resend=state in RESENDABLE
        and any(g.state == "active" and g.purpose == "patient" for g in grants),
        revoke=[g for g in grants if g.state in ("active", "locked")],
        extend=[g for g in grants if live and g.state in ("active", "expired")],
        reissue=[g for g in grants if live and g.state == "locked" and g.purpose == "patient"],
        cd=state != RequestState.CANCELLED and not told.marked_for_cd,
        cancel=allowed(state, RequestState.CANCELLED),
    )

"""One request's story on its staff page, read from the database: milestones, events,
matched studies, messages and their attempts, links and packages.

Read-only; plain dataclasses out, so templates never touch a session. Recipients are
masked here (``j•••@example.org``, ``+44 •••• ••56``): the grants table says where a
link went without spelling out the address.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import phonenumbers
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from delivery.discs import WHY_TEXT
from portal.staff_studies import StudyLine, study_line
from store.models import (
    DiscJob,
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
)


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
class DiscLine:
    """One job of the CD burn queue (:mod:`delivery.discs`)."""

    id: int
    why: str
    why_text: str
    queued_at: datetime
    queued_by: str
    written_at: datetime | None
    image_sha256: str | None
    image_size: int | None
    burned_at: datetime | None
    burned_by: str | None
    cancelled_at: datetime | None
    cancelled_by: str | None

    @property
    def open(self) -> bool:
        return self.burned_at is None and self.cancelled_at is None


def disc_line(job: DiscJob) -> DiscLine:
    return DiscLine(
        job.id,
        job.why,
        WHY_TEXT.get(job.why, job.why),
        job.queued_at,
        job.queued_by,
        job.written_at,
        job.image_sha256,
        job.image_size,
        job.burned_at,
        job.burned_by,
        job.cancelled_at,
        job.cancelled_by,
    )


@dataclass
class Story:
    """Everything the request page shows besides the request row itself."""

    milestones: list[tuple[str, datetime | None]]
    events: list[RequestEvent]
    studies: list[StudyLine]
    grants: list[GrantLine]
    messages: list[MessageLine]
    packages: list[Package]
    marked_for_cd: bool  # the request has an open job in the CD burn queue
    disc: DiscLine | None = None  # that open job
    discs: list[DiscLine] = field(default_factory=list)  # every job, oldest first


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
        study_line(st, rs.matched_at)
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
    discs = [
        disc_line(j)
        for j in s.scalars(select(DiscJob).where(DiscJob.request_id == req.id).order_by(DiscJob.id))
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
        marked_for_cd=any(d.open for d in discs),
        disc=next((d for d in discs if d.open), None),
        discs=discs,
    )

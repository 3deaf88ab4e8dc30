"""SQLAlchemy 2 typed models: what arrived (studies, series, instances) and its history.

Patient attributes are kept on the study because staff and rules need them; they
never go to a log line. Times are stored as UTC.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no time zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC time")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base of every Courier table."""


class StudyState(enum.StrEnum):
    """Where a study stands: still receiving, quiet for stable_after_s, or purged."""

    RECEIVING = "receiving"
    STABLE = "stable"
    PURGING = "purging"  # files being deleted (held or discarded past retention)
    PURGED = "purged"  # files gone; the row and its history stay for the audit trail


class Study(Base):
    """One study as received (not as the PACS holds it: only what reached Courier)."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="", index=True)
    study_date: Mapped[str] = mapped_column(String(8), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    modalities: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(16), default=StudyState.RECEIVING, index=True)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    called_ae: Mapped[str] = mapped_column(String(16), default="")
    peer_host: Mapped[str] = mapped_column(String(64), default="")
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    stable_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    series: Mapped[list[Series]] = relationship(back_populates="study", order_by="Series.id")
    events: Mapped[list[StudyEvent]] = relationship(
        back_populates="study", order_by="StudyEvent.id"
    )


class Series(Base):
    """One series of a received study."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[str] = mapped_column(String(12), default="")
    series_description: Mapped[str] = mapped_column(String(64), default="")
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)

    study: Mapped[Study] = relationship(back_populates="series")


class Instance(Base):
    """One stored instance; ``path`` is relative to the content store's root."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[str] = mapped_column(String(12), default="")
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(300))
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    file_missing: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    # Rows x Columns x NumberOfFrames x SamplesPerPixel as the header declares it (checked
    # against scp.max_pixels at ingest); NULL: no image, or received before migration 0012.
    declared_pixels: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Migration 0020: when the report sweep (ris.dicom) last failed to read this report
    # instance's header; NULL: never failed (or read since). New ones are looked for
    # without these, so unreadable ones never starve them; each is tried again daily.
    report_unreadable_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime(), nullable=True, index=True
    )


class InstanceConflict(Base):
    """The same SOP Instance UID arrived again with different bytes: kept aside, flagged."""

    __tablename__ = "instance_conflicts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String(300))
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


class StudyEvent(Base):
    """A recorded transition of a study (received, stable, changed after stable...)."""

    __tablename__ = "study_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    from_state: Mapped[str] = mapped_column(String(16), default="")
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")

    study: Mapped[Study] = relationship(back_populates="events")


def utcnow() -> datetime:
    """The current aware UTC time (the default clock)."""
    return datetime.now(UTC)


class RequestState(enum.StrEnum):
    """Where a release request stands; the allowed moves live in ``release.states``."""

    PENDING = "pending"
    RECEIVING = "receiving"
    READY = "ready"
    PACKAGING = "packaging"
    NOTIFIED = "notified"
    DOWNLOADED = "downloaded"
    OVERDUE = "overdue"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    DELIVERED = "delivered"  # a DICOM destination acknowledged (and committed) every instance


class Urgency(enum.StrEnum):
    """When a ready request is delivered: in the nightly batch, or at once."""

    OVERNIGHT = "overnight"
    NOW = "now"


class SelectionKind(enum.StrEnum):
    """What a selection names: an accession number, a study UID, or the request's reference
    (whatever arrives tagged with it)."""

    ACCESSION = "accession"
    STUDY_UID = "study_uid"
    REFERENCE = "reference"


class ReleaseRequest(Base):
    """A request to release a patient's studies to them by secure link.

    ``reference`` is the short human-typable name staff and the RIS use (and put in a
    routing tag); ``idempotency_key`` makes a repeated submission return the same row.
    Patient and contact fields never go to a log line: log ``reference`` or ``id``.
    """

    __tablename__ = "release_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reference: Mapped[str] = mapped_column(String(16), unique=True)
    state: Mapped[str] = mapped_column(String(16), default=RequestState.PENDING, index=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    patient_name: Mapped[str] = mapped_column(String(200))
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="")
    # Issuer of Patient ID (the ID's domain), compared with the study's when both have one.
    patient_issuer: Mapped[str] = mapped_column(String(64), default="")
    recipient_email: Mapped[str] = mapped_column(String(254))
    second_channel: Mapped[str] = mapped_column(String(260))
    backup_email: Mapped[str | None] = mapped_column(String(254), nullable=True)
    language: Mapped[str] = mapped_column(String(16), default="en")
    urgency: Mapped[str] = mapped_column(String(16), default=Urgency.OVERNIGHT)
    link_days: Mapped[int] = mapped_column(Integer, default=30)
    note: Mapped[str] = mapped_column(Text, default="")
    requested_by: Mapped[str] = mapped_column(String(200))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    due_by: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The release policy's hold on a ready request (release.embargo): "" none, "embargo"
    # until hold_until, "report" waiting for the final report (at most until hold_until),
    # "staff" held by staff (until hold_until, or until released when it is NULL).
    hold_kind: Mapped[str] = mapped_column(String(16), default="", server_default="")
    hold_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # When the policy was applied to the request (NULL: not yet; it is, once ready).
    hold_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Staff asked, at request time, that the patient be told when to expect the link
    # when the release policy holds the request (one email, release.embargo).
    tell_patient_when: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    selections: Mapped[list[RequestSelection]] = relationship(
        back_populates="request", order_by="RequestSelection.id"
    )
    events: Mapped[list[RequestEvent]] = relationship(
        back_populates="request", order_by="RequestEvent.id"
    )
    # Loaded with the request, always: whoever reads a request must see where it goes.
    destination: Mapped[DicomDestination | None] = relationship(lazy="selectin")


class RequestSelection(Base):
    """One thing a request waits for; the rules' join looks these up by (kind, value)."""

    __tablename__ = "request_selections"
    __table_args__ = (Index("ix_request_selections_kind_value", "kind", "value"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("release_requests.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(String(64))
    expected_instances: Mapped[int | None] = mapped_column(Integer, nullable=True)

    request: Mapped[ReleaseRequest] = relationship(back_populates="selections")


class RequestEvent(Base):
    """One recorded transition of a request (or a note on it, such as a resend)."""

    __tablename__ = "request_events"
    # The reports read events by the state moved to and when (release.report).
    __table_args__ = (Index("ix_request_events_to_state_at", "to_state", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("release_requests.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(200))
    from_state: Mapped[str] = mapped_column(String(16), default="")
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")

    request: Mapped[ReleaseRequest] = relationship(back_populates="events")


class StudyDecision(Base):
    """What the rules decided for a stable study, with the rule's name and why.

    ``trace`` holds the explanation without header values (safe to show and log).
    """

    __tablename__ = "study_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    action: Mapped[str] = mapped_column(String(16), index=True)
    rule: Mapped[str] = mapped_column(String(64), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    trace: Mapped[str] = mapped_column(Text, default="")
    retention_days: Mapped[int | None] = mapped_column(Integer, nullable=True)


class RequestStudy(Base):
    """A received study attached to a release request by a release rule."""

    __tablename__ = "request_studies"
    __table_args__ = (UniqueConstraint("request_id", "study_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("release_requests.id"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    rule: Mapped[str] = mapped_column(String(64), default="")
    matched_at: Mapped[datetime] = mapped_column(UTCDateTime())


class MismatchState(enum.StrEnum):
    """Where an identity mismatch stands (see :class:`IdentityMismatch`)."""

    OPEN = "open"  # the study is held from the request; staff have not decided
    ATTACHED = "attached"  # staff attached it anyway, with a reason
    DISMISSED = "dismissed"  # staff confirmed it is not this patient's: it stays held


class IdentityMismatch(Base):
    """A study a rule joined to a request whose patient identity disagrees with the
    request's (:mod:`release.identity`): held, not attached, until staff decide.

    ``fields`` names what disagreed (``patient_id``, ``issuer``, ``birth_date``; space
    separated), never the values. One row per (request, study): the same mismatch is
    alerted once, however often the study is decided again.
    """

    __tablename__ = "identity_mismatches"
    __table_args__ = (UniqueConstraint("request_id", "study_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("release_requests.id"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    fields: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(16), default=MismatchState.OPEN, index=True)
    found_at: Mapped[datetime] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    resolved_by: Mapped[str] = mapped_column(String(200), default="")
    reason: Mapped[str] = mapped_column(Text, default="")


class Package(Base):
    """A built delivery package of one request: the ZIP part(s) under ``folder``.

    ``parts`` is JSON: ``[{"name", "size", "sha256"}]``. A package row exists only once
    every part was renamed into place (a half-built ZIP is never recorded or served).
    """

    __tablename__ = "packages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("release_requests.id"), index=True)
    folder: Mapped[str] = mapped_column(String(300))
    parts: Mapped[str] = mapped_column(Text)
    studies: Mapped[int] = mapped_column(Integer)
    instances: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    built_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Grant(Base):
    """One recipient's right to download a package: the link and the second factor.

    The link token is never stored: it is derived (HMAC with the node's secret) from
    ``id`` and ``token_salt`` when the email is composed, and only its SHA-256 is kept
    for look-ups. Likewise a one-time code is derived from ``code_salt`` and kept as a
    keyed hash until ``code_expires_at``.
    """

    __tablename__ = "grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("release_requests.id"), index=True)
    package_id: Mapped[int | None] = mapped_column(ForeignKey("packages.id"), nullable=True)
    purpose: Mapped[str] = mapped_column(String(16), default="patient")
    recipient_email: Mapped[str] = mapped_column(String(254))
    second_channel: Mapped[str] = mapped_column(String(260))
    backup_email: Mapped[str | None] = mapped_column(String(254), nullable=True)
    language: Mapped[str] = mapped_column(String(16), default="en")
    token_salt: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    locked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    code_salt: Mapped[str | None] = mapped_column(String(64), nullable=True)
    code_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    code_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    code_tries: Mapped[int] = mapped_column(Integer, default=0)
    codes_sent: Mapped[int] = mapped_column(Integer, default=0)
    codes_failed: Mapped[int] = mapped_column(Integer, default=0)
    downloads: Mapped[int] = mapped_column(Integer, default=0)
    # Wrong codes in the current day window: 20 lock the link until staff re-issue it.
    failures_since: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    # The grant a forwarded (clinician) grant was made from; revoking it is the patient's.
    parent_grant_id: Mapped[int | None] = mapped_column(ForeignKey("grants.id"), nullable=True)
    first_opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Migration 0019: the one reminder before expiry (delivery.reminders), the patient's
    # own extension and request for more time (portal.extend), and for a share whether
    # the patient is emailed at every opening or only the first.
    reminded_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    extended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    extension_asked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    notify_every_access: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())


class NotificationState(enum.StrEnum):
    """Where an outbox row stands."""

    QUEUED = "queued"  # waiting for its next attempt (next_attempt_at)
    SENDING = "sending"  # claimed by a relay until claimed_until
    SENT = "sent"
    FAILED = "failed"  # permanent: staff were told
    HELD = "held"  # nowhere to send (no staff address configured): kept, listed


class Notification(Base):
    """An outbox row: one message to send, written in the transaction that causes it.

    ``params`` is JSON holding what the template needs, never a secret: links and codes
    are derived again from the grant at send time. ``message_id`` is set once, so every
    re-send of this row is the same message.
    """

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int | None] = mapped_column(
        ForeignKey("release_requests.id"), nullable=True, index=True
    )
    grant_id: Mapped[int | None] = mapped_column(ForeignKey("grants.id"), nullable=True)
    kind: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(8))
    recipient: Mapped[str] = mapped_column(String(260))
    language: Mapped[str] = mapped_column(String(16), default="en")
    params: Mapped[str] = mapped_column(Text, default="{}")
    message_id: Mapped[str] = mapped_column(String(210), unique=True)
    state: Mapped[str] = mapped_column(String(16), default=NotificationState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The relay process holding a ``sending`` row (delivery.outbox.process_identity):
    # released at once when that process is gone; NULL: only the lease releases it.
    claimed_by: Mapped[str | None] = mapped_column(String(160), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    composed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    provider_id: Mapped[str] = mapped_column(String(210), default="")
    last_error: Mapped[str] = mapped_column(Text, default="")


class NotificationAttempt(Base):
    """One try at sending a notification: written before the provider is called
    (``outcome`` empty) and completed after, so a crash in between is visible."""

    __tablename__ = "notification_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    notification_id: Mapped[int] = mapped_column(ForeignKey("notifications.id"), index=True)
    # Indexed (migration 0013): the SMS breaker counts the last hour's attempts per send.
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    channel: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16), default="")
    code: Mapped[str] = mapped_column(String(16), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    provider_id: Mapped[str] = mapped_column(String(210), default="")


class JobRun(Base):
    """When a scheduled job last started and finished (the scheduler only triggers; this
    row tells a restarted node whether last night's batch ran)."""

    __tablename__ = "job_runs"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class PortalSession(Base):
    """A signed-in browser: a patient or clinician who gave the right code (``grant_id``),
    or a staff member (``staff_user_id``). The cookie holds a random token; only its
    SHA-256 is stored. Idle sessions end after ``portal.session_idle_min``."""

    __tablename__ = "portal_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # "grant" or "staff"
    grant_id: Mapped[int | None] = mapped_column(ForeignKey("grants.id"), nullable=True)
    staff_user_id: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ApiKey(Base):
    """A staff/RIS API key (migration 0015): only its SHA-256 ``digest`` is kept. Looked
    up on every API call (:class:`portal.apikeys.KeyRing`); a revoked key stays listed."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    label: Mapped[str] = mapped_column(String(80), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(80), default="")
    # Written at most once a minute per key, so a busy RIS does not write on every call.
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(80), nullable=True)


class StaffUser(Base):
    """A staff member who signs in to the staff pages (password kept as a scrypt hash)."""

    __tablename__ = "staff_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    # Sign-in refused for this account until then, whatever the password (migration
    # 0013; portal.staff_auth: exponential delay after repeated failures).
    login_blocked_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class DownloadCoverage(Base):
    """The bytes of one file (a package part, or a study's ZIP) already sent to one
    portal session, as merged ``[start, end)`` spans in JSON (migration 0013). A
    download counts once their union is the whole file (:mod:`portal.coverage`); the row
    is then deleted, so a later full download counts again."""

    __tablename__ = "download_coverage"
    __table_args__ = (UniqueConstraint("session_id", "part"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("portal_sessions.id"), index=True)
    part: Mapped[str] = mapped_column(String(300))
    size: Mapped[int] = mapped_column(BigInteger)
    spans: Mapped[str] = mapped_column(Text, default="[]")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PullState(enum.StrEnum):
    """Where a pull (a C-MOVE of one study from the PACS to Courier) stands."""

    QUEUED = "queued"  # waiting for its next attempt (next_attempt_at)
    MOVING = "moving"  # claimed by the node's pull sweep until claimed_until
    DONE = "done"  # the PACS reported every instance sent
    FAILED = "failed"  # attempts used up, or retrying cannot help: staff were told


class Pull(Base):
    """One study a request asked the PACS to send (``courier request create --pull``).

    Claimed with a conditional UPDATE (state and lease), so two sweeps never move the
    same study at once; ``attempts`` counts the claims, each attempt's outcome goes to
    the request's timeline. The instances themselves arrive over C-STORE like any other.
    """

    __tablename__ = "pulls"
    __table_args__ = (
        UniqueConstraint("request_id", "study_uid"),
        Index("ix_pulls_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("release_requests.id"), index=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    expected_instances: Mapped[int | None] = mapped_column(Integer, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default=PullState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_status: Mapped[str] = mapped_column(String(16), default="")
    last_error: Mapped[str] = mapped_column(Text, default="")


class AuditEvent(Base):
    """One audited event (DICOM PS3.15 A.5 names and codes); see :mod:`store.audit`.

    Append-only: a database trigger refuses UPDATE and DELETE. Participant objects are
    Study Instance UIDs (``study_uids``, space-separated with a space at each end so a
    LIKE on `` uid `` finds whole UIDs) and a request reference; never a patient's name,
    ID, e-mail address or phone number.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    event_id: Mapped[str] = mapped_column(String(16))
    event_type: Mapped[str] = mapped_column(String(16), default="")
    action: Mapped[str] = mapped_column(String(1))
    outcome: Mapped[int] = mapped_column(Integer, default=0)
    actor: Mapped[str] = mapped_column(String(200))
    host: Mapped[str] = mapped_column(String(64), default="")
    request_ref: Mapped[str] = mapped_column(String(16), default="", index=True)
    study_uids: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[str] = mapped_column(Text, default="")


class AuditCursor(Base):
    """How far one exporter of the audit trail (syslog, JSON lines) has shipped: the id
    of the last event it handed over, and its last failure (kept apart from the
    append-only events)."""

    __tablename__ = "audit_cursors"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    last_id: Mapped[int] = mapped_column(Integer, default=0)
    shipped_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")


class CommitmentMode(enum.StrEnum):
    """Whether a DICOM destination is asked for storage commitment (N-ACTION, Push Model)."""

    AUTO = "auto"  # ask when the peer accepts the SOP class; go ahead without it otherwise
    REQUIRED = "required"  # no commitment, no delivery: the attempt fails and is retried
    OFF = "off"  # never ask


class DicomDestination(Base):
    """Where a hospital-to-hospital request goes (a DICOM AE, by C-STORE), and how its
    sending stands: ``attempts`` made so far, when the next one is due (None: as soon as
    the request is ready), the last attempt's error. A request has at most one.

    For such a request ``recipient_email`` and ``second_channel`` are empty: no link,
    no code.
    """

    __tablename__ = "dicom_destinations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("release_requests.id"), unique=True)
    ae_title: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(253))
    port: Mapped[int] = mapped_column(Integer)
    commitment: Mapped[str] = mapped_column(String(8), default=CommitmentMode.AUTO)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")


class DicomSend(Base):
    """One instance offered to a DICOM destination in one attempt, and what came back.

    ``status`` is the peer's C-STORE status (None: no answer, e.g. the association broke
    or no presentation context was accepted for it). ``commitment`` is ``""`` (not
    asked), ``committed``, ``failed`` (the peer's report listed it as failed) or
    ``no-report`` (asked, no N-EVENT-REPORT in time). An instance acknowledged (status
    0x0000 or a warning) is never sent again for the same request.
    """

    __tablename__ = "dicom_sends"
    __table_args__ = (UniqueConstraint("request_id", "attempt", "sop_instance_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("release_requests.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    commitment: Mapped[str] = mapped_column(String(16), default="")
    # The Transaction UID of the last N-ACTION that named this instance ("" if none):
    # how a storage commitment report that came in late finds its rows.
    transaction_uid: Mapped[str] = mapped_column(String(64), default="", index=True)


class DiscWhy(enum.StrEnum):
    """Why a request is in the CD burn queue (see :mod:`delivery.discs`)."""

    STAFF = "staff"  # staff pressed "Mark for CD"
    FAILED = "failed"  # its delivery failed permanently
    OVERDUE = "overdue"  # overdue for longer than delivery.cd_after_h
    UNOPENED = "unopened"  # the patient's link expired without ever being opened


class DiscJob(Base):
    """One request in the CD burn queue: why and since when, the disc image once written
    (``image_path`` relative to ``node.data_dir``, its SHA-256, when), and how the job
    ended: burned (by whom) or cancelled (by whom). Open = neither.

    A request has at most one open job, enforced by the database with a partial unique
    index (``WHERE burned_at IS NULL AND cancelled_at IS NULL``: SQLite 3.8+ and
    PostgreSQL both have them), so a sweep racing a staff click cannot queue it twice.
    ``writing_since`` is the lease of whoever is writing the image (one writer at a time).
    """

    __tablename__ = "disc_jobs"
    __table_args__ = (
        Index(
            "ux_disc_jobs_open",
            "request_id",
            unique=True,
            sqlite_where=text("burned_at IS NULL AND cancelled_at IS NULL"),
            postgresql_where=text("burned_at IS NULL AND cancelled_at IS NULL"),
        ),
        CheckConstraint(
            "why IN ('staff', 'failed', 'overdue', 'unopened')", name="ck_disc_jobs_why"
        ),
        CheckConstraint("burned_at IS NULL OR cancelled_at IS NULL", name="ck_disc_jobs_closed"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("release_requests.id"), index=True)
    why: Mapped[str] = mapped_column(String(16))
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    queued_by: Mapped[str] = mapped_column(String(200))
    image_path: Mapped[str | None] = mapped_column(String(300), nullable=True)
    image_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    image_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    written_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    writing_since: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    burned_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    burned_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cancelled_by: Mapped[str | None] = mapped_column(String(200), nullable=True)


class CommitmentReport(Base):
    """A storage commitment report (N-EVENT-REPORT, PS3.4 J.3.3) that a peer sent to
    Courier's main SCP on an association of its own, as it arrived: the Transaction UID,
    the Event Type ID, the SOP Instance UIDs committed (``committed``: a JSON list) and
    those not, with their Failure Reason (``failed``: a JSON object UID → reason).

    Written by whichever receiving process took the association, before it answers;
    read by the sender that waits for that Transaction UID (``delivery.dicomsend``).
    ``applied_at`` is set once the sender recorded it on its
    :class:`DicomSend` rows; a report for a Transaction UID Courier never sent (or one
    whose request moved on) stays unapplied, as a record. No patient data: UIDs, AE
    title, address and counts only.
    """

    __tablename__ = "commitment_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    transaction_uid: Mapped[str] = mapped_column(String(64), index=True)
    event_type: Mapped[int] = mapped_column(Integer)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    peer_host: Mapped[str] = mapped_column(String(64), default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    committed: Mapped[str] = mapped_column(Text, default="[]")
    failed: Mapped[str] = mapped_column(Text, default="{}")
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ReportStatus(enum.StrEnum):
    """A radiology report's result status (HL7 OBR-25 P/F/C; DICOM SR flags)."""

    PRELIMINARY = "preliminary"
    FINAL = "final"
    CORRECTED = "corrected"


class Report(Base):
    """One radiology report as received, from the PACS (a Text SR or an Encapsulated PDF
    stored with the study) or from the RIS (an HL7 ``ORU^R01``; owned by ``ris``).

    ``study_instance_uid`` is the study it belongs to ("" while an HL7 report waits for
    its study: it is linked by accession when the study arrives). ``kind`` is ``pdf``,
    ``text`` or ``sr``. The body is never in the database: ``body_path`` is relative to
    the content store's root (the PDF or the plain text from HL7; the instance's own file
    for a DICOM report, ``instance_id`` set). ``raw_path`` holds the raw HL7 message, kept
    exactly as long as the report. ``supersedes_id`` names the report this one replaces
    (a final after a preliminary, a correction after a final). No patient data is logged
    from these rows.
    """

    __tablename__ = "reports"
    __table_args__ = (
        CheckConstraint(
            "status IN ('preliminary', 'final', 'corrected')", name="ck_reports_status"
        ),
        CheckConstraint("source IN ('dicom', 'hl7')", name="ck_reports_source"),
        CheckConstraint("kind IN ('pdf', 'text', 'sr')", name="ck_reports_kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    status: Mapped[str] = mapped_column(String(16), default=ReportStatus.FINAL)
    source: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(8))
    title: Mapped[str] = mapped_column(String(200), default="")
    # When the report was written or verified, as the sender said (DICOM DT / HL7 TS text).
    reported_at_text: Mapped[str] = mapped_column(String(40), default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("instances.id"), nullable=True, index=True
    )
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    body_path: Mapped[str] = mapped_column(String(300))
    body_sha256: Mapped[str] = mapped_column(String(64))
    body_size: Mapped[int] = mapped_column(BigInteger)
    raw_path: Mapped[str | None] = mapped_column(String(300), nullable=True)
    hl7_control_id: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("reports.id"), nullable=True)
    # The Study Instance UID an HL7 message named (NULL: none, or recorded before 0021):
    # what lets a waiting report meet a study that has no accession number.
    message_study_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)


class ReportDelivery(Base):
    """A report that went out in a request's package (or a later part of it): what lets a
    correction after delivery become a new part and an email, never a silent change."""

    __tablename__ = "report_deliveries"
    __table_args__ = (UniqueConstraint("report_id", "request_id", name="uq_report_deliveries"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("release_requests.id"), index=True)
    package_id: Mapped[int | None] = mapped_column(ForeignKey("packages.id"), nullable=True)
    delivered_at: Mapped[datetime] = mapped_column(UTCDateTime())

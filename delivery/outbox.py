"""The outbox: notifications written with the change that causes them, claimed atomically.

Whoever changes state (the batch moving a request to ``notified``, the matcher moving
one to ``overdue``, the portal issuing a code) calls :meth:`Outbox.enqueue` *in the same
transaction*: the message exists if and only if the change committed. The relay
(:mod:`delivery.relay`) then claims due rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
so relays on several nodes take different rows) with a conditional UPDATE that says who
won (two relays never send one row twice), records an attempt row *before*
calling the provider and completes it after, so a crash in between is visible as an
attempt without outcome.

Rows never hold a secret: links and codes are derived again from the grant when the
message is composed (:mod:`delivery.grants`).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from release.errors import InvalidTransition
from store.claims import skip_locked
from store.models import (
    Grant,
    Notification,
    NotificationAttempt,
    NotificationState,
    ReleaseRequest,
    utcnow,
)

Q, SENDING = NotificationState.QUEUED, NotificationState.SENDING


class Outbox:
    """Writes and claims outbox rows. ``domain`` is the right-hand side of Message-IDs."""

    def __init__(
        self,
        *,
        domain: str = "courier.invalid",
        staff_email: str | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.domain = domain
        self.staff_email = staff_email
        self._clock = clock

    def enqueue(
        self,
        s: Session,
        *,
        kind: str,
        channel: str,
        recipient: str,
        language: str = "en",
        params: dict[str, Any] | None = None,
        request_id: int | None = None,
        grant_id: int | None = None,
    ) -> Notification:
        """Add a notification to ``s`` (the caller's transaction); due at once."""
        now = self._clock()
        row = Notification(
            request_id=request_id,
            grant_id=grant_id,
            kind=kind,
            channel=channel,
            recipient=recipient,
            language=language,
            params=json.dumps(params or {}, sort_keys=True),
            message_id=f"{secrets.token_hex(16)}@{self.domain}",
            state=Q,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            composed_at=now,
            provider_id="",
            last_error="",
        )
        s.add(row)
        s.flush()
        return row

    def alert(
        self, s: Session, kind: str, *, reference: str | None, request_id: int | None
    ) -> None:
        """Queue a staff alert (``overdue``, ``failed``, ``locked``, ``rules_reload_failed``,
        ``disc``: a request put in the CD burn queue by :mod:`delivery.discs`).

        Without ``delivery.staff_email`` the alert is kept as ``held``: listed for staff
        (``courier outbox list``), never lost, never sent anywhere else.
        """
        row = self.enqueue(
            s,
            kind=f"alert_{kind}",
            channel="email",
            recipient=self.staff_email or "",
            params={"alert": kind, "reference": reference},
            request_id=request_id,
        )
        if not self.staff_email:
            row.state = NotificationState.HELD

    # -- claiming ---------------------------------------------------------------------

    def due(self, s: Session, limit: int) -> list[int]:
        """Ids of rows ready for an attempt: queued and due, or claimed by a relay whose
        lease ran out (it crashed mid-send)."""
        now = self._clock()
        return list(
            s.scalars(
                select(Notification.id)
                .where(
                    or_(
                        (Notification.state == Q) & (Notification.next_attempt_at <= now),
                        (Notification.state == SENDING) & (Notification.claimed_until < now),
                    )
                )
                .order_by(Notification.next_attempt_at, Notification.id)
                .limit(limit)
            )
        )

    def claim_due(self, s: Session, limit: int, lease_s: float) -> list[int]:
        """Claim up to ``limit`` due rows for one attempt each (commits); returns their
        ids, which no other relay holds.

        The rows are picked with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL: relays on other
        nodes get other rows instead of waiting for these) and taken by the same
        conditional UPDATE as :meth:`claim`; only the ids it changed are returned.
        """
        now = self._clock()
        due = or_(
            (Notification.state == Q) & (Notification.next_attempt_at <= now),
            (Notification.state == SENDING) & (Notification.claimed_until < now),
        )
        with s.begin():
            ids = list(
                s.scalars(
                    skip_locked(
                        select(Notification.id)
                        .where(due)
                        .order_by(Notification.next_attempt_at, Notification.id)
                        .limit(limit)
                    )
                )
            )
            if not ids:
                return []
            won = s.scalars(
                update(Notification)
                .where(Notification.id.in_(ids), due)
                .values(
                    state=SENDING,
                    claimed_until=now + timedelta(seconds=lease_s),
                    attempts=Notification.attempts + 1,
                )
                .returning(Notification.id)
                .execution_options(synchronize_session=False)
            )
            return sorted(won)

    def claim(self, s: Session, notification_id: int, lease_s: float) -> bool:
        """Take the row for one attempt (commits); False when another relay has it."""
        now = self._clock()
        with s.begin():
            won = s.execute(  # type: ignore[attr-defined]
                update(Notification)
                .where(
                    Notification.id == notification_id,
                    or_(
                        (Notification.state == Q) & (Notification.next_attempt_at <= now),
                        (Notification.state == SENDING) & (Notification.claimed_until < now),
                    ),
                )
                .values(
                    state=SENDING,
                    claimed_until=now + timedelta(seconds=lease_s),
                    attempts=Notification.attempts + 1,
                )
                .execution_options(synchronize_session=False)
            ).rowcount
        return bool(won)

    def start_attempt(self, s: Session, row: Notification, channel: str) -> NotificationAttempt:
        """Record that the provider is about to be called (commits before the call)."""
        with s.begin():
            attempt = NotificationAttempt(
                notification_id=row.id,
                started_at=self._clock(),
                channel=channel,
                outcome="",
                code="",
                detail="",
                provider_id="",
            )
            s.add(attempt)
        return attempt

    @staticmethod
    def interrupted(s: Session, row: Notification) -> bool:
        """True when the row's last attempt never recorded an outcome (a crash mid-send)
        or ended with an unknown outcome: the provider may have the message."""
        last = s.scalars(
            select(NotificationAttempt)
            .where(NotificationAttempt.notification_id == row.id)
            .order_by(NotificationAttempt.id.desc())
            .limit(1)
        ).first()
        return last is not None and last.outcome in ("", "unknown")


def queue_link_again(s: Session, outbox: Outbox, req: ReleaseRequest, now: datetime) -> Grant:
    """Queue the link email of the request's active patient link again (same link).

    Raises :class:`release.errors.InvalidTransition` when the patient has no active link
    (expired, revoked or locked: extend or re-issue it on the staff page instead).
    """
    grant = s.scalars(
        select(Grant)
        .where(Grant.request_id == req.id, Grant.purpose == "patient")
        .order_by(Grant.id.desc())
    ).first()
    if (
        grant is None
        or grant.revoked_at is not None
        or grant.locked_at is not None
        or grant.expires_at <= now
    ):
        raise InvalidTransition(
            f"request {req.reference} has no active link to send again; extend or re-issue "
            "it on the staff page (/staff/requests/" + req.reference + ")"
        )
    outbox.enqueue(
        s,
        kind="link_email",
        channel="email",
        recipient=grant.recipient_email,
        language=grant.language,
        request_id=req.id,
        grant_id=grant.id,
    )
    return grant

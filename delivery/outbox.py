"""The outbox: notifications written with the change that causes them, claimed atomically.

Whoever changes state (the batch moving a request to ``notified``, the matcher moving
one to ``overdue``, the portal issuing a code) calls :meth:`Outbox.enqueue` *in the same
transaction*: the message exists if and only if the change committed. The relay
(:mod:`delivery.relay`) then claims due rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
so relays on several nodes take different rows) with a conditional UPDATE that says who
won (two relays never send one row twice), records an attempt row *before*
calling the provider and completes it after, so a crash in between is visible as an
attempt without outcome.

A relay claims one row at a time, just before it sends it (:meth:`Outbox.claim_next`),
and marks it with its process (``claimed_by``, :func:`process_identity`); on
PostgreSQL it also holds the advisory lock ``(OUTBOX_LOCK, row id)`` from before the
claim commits until the row is recorded, and the database drops that lock when the
relay's connection dies. :meth:`Outbox.stranded` names the ``sending`` rows whose
claimer is gone (PostgreSQL: nobody holds the row's lock; SQLite, one machine: the
claiming process no longer runs), so a crash strands a message for seconds, not for the
lease (``claimed_until``, kept only as the last resort for rows claimed without a
``claimed_by``). The relay releases them through the "outcome unknown" path
(:mod:`delivery.relay`).

Rows never hold a secret: links and codes are derived again from the grant when the
message is composed (:mod:`delivery.grants`).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Select, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from release.errors import InvalidTransition
from store.claims import is_postgres, orphaned, skip_locked, try_lock, unlock
from store.models import (
    Grant,
    Notification,
    NotificationAttempt,
    NotificationState,
    ReleaseRequest,
    utcnow,
)

Q, SENDING = NotificationState.QUEUED, NotificationState.SENDING
#: The advisory lock a relay holds on a row while it sends it (store.claims).
OUTBOX_LOCK = "outbox"
#: A link email still not accepted by the mail server this long after it was queued is
#: listed on the staff dashboard (urgent links are promised within a minute; retries
#: after a 4xx start at ``delivery.retry_base_s``).
LINK_QUEUED_WARN = timedelta(minutes=5)
#: What a link email's status means, as staff read it (request page, ``request show``).
LINK_STATUS_TEXT = {
    "queued": "link queued: not yet accepted by the mail server",
    "accepted": "link email accepted by the mail server",
    "failed": "link email failed: not delivered",
}


def link_status(
    sessions: sessionmaker[Session], request_ids: Iterable[int]
) -> dict[int, dict[str, Any]]:
    """The delivery status of each request's latest link email, by request id:
    ``{"status": "queued" | "accepted" | "failed", "since": datetime, "text": str}``
    ("accepted" means the mail server took it, not that the patient read it; "since" is
    when it was queued, accepted or last tried). Requests without a link email are left
    out: ``notified`` alone never claims the patient was told."""
    ids = list(request_ids)
    if not ids:
        return {}
    out: dict[int, dict[str, Any]] = {}
    with sessions() as s:
        for rid, state, created, sent, nxt in s.execute(
            select(
                Notification.request_id,
                Notification.state,
                Notification.created_at,
                Notification.sent_at,
                Notification.next_attempt_at,
            )
            .where(Notification.kind == "link_email", Notification.request_id.in_(ids))
            .order_by(Notification.id)
        ):
            status, since = (
                ("accepted", sent)
                if state == NotificationState.SENT
                else ("failed", nxt)
                if state == NotificationState.FAILED
                else ("queued", created)
            )
            if rid is not None:  # the latest row wins (ordered by id)
                out[rid] = {"status": status, "since": since, "text": LINK_STATUS_TEXT[status]}
    return out


def stale_links(now: datetime) -> Select[Any]:
    """Ids of the requests with a link email queued (or being sent) for longer than
    :data:`LINK_QUEUED_WARN`: a SELECT for the dashboard to filter requests by."""
    return select(Notification.request_id).where(
        Notification.kind == "link_email",
        Notification.state.in_((Q, SENDING)),
        Notification.created_at < now - LINK_QUEUED_WARN,
    )


def _start_ticks(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux ``/proc``), or None
    when it does not run (or is a zombie: killed, not yet reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def process_identity(pid: int | None = None) -> str:
    """``host:pid:start`` of this process: unique even when a restarted node gets the
    pid of its dead predecessor (containers start every node as the same low pid)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()[:100]}:{pid}:{_start_ticks(pid) or ''}"


def process_alive(identity: str) -> bool:
    """Whether the process named by :func:`process_identity` still runs. A process of
    another host cannot be checked from here: True (its lease, or on PostgreSQL its
    advisory lock, decides)."""
    try:
        host, pid_s, start = identity.rsplit(":", 2)
        pid = int(pid_s)
    except ValueError:
        return True
    if host != socket.gethostname()[:100]:
        return True
    if not Path("/proc/self/stat").exists():  # no /proc: only "does the pid exist"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return pid != os.getpid() or identity == process_identity()
    return _start_ticks(pid) == start


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
        ``disc``: a request put in the CD burn queue by :mod:`delivery.discs`;
        ``more_time``: a patient asks for more time, :mod:`portal.more_time`).

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

    def claim_next(self, s: Session, lock: Connection, lease_s: float, claimer: str) -> int | None:
        """Claim the most overdue row for one attempt (commits) and return its id, or
        None when nothing is due. The relay calls it only when it is about to send, so
        a crash strands at most the rows it had in flight.

        On PostgreSQL the advisory lock ``(OUTBOX_LOCK, id)`` is taken on ``lock`` (an
        autocommit connection the relay keeps while it sends) *before* the claim
        commits: whoever sees the row ``sending`` finds the lock held while its relay
        lives. The caller must :meth:`unclaim` ``lock`` once the row is recorded.
        """
        now = self._clock()
        due = or_(
            (Notification.state == Q) & (Notification.next_attempt_at <= now),
            (Notification.state == SENDING) & (Notification.claimed_until < now),
        )
        with s.begin():
            candidates = list(
                s.scalars(
                    skip_locked(
                        select(Notification.id)
                        .where(due)
                        .order_by(Notification.next_attempt_at, Notification.id)
                        .limit(4)  # a few: one may be locked by a stranded-row check
                    )
                )
            )
            for nid in candidates:
                if not try_lock(lock, OUTBOX_LOCK, nid):
                    continue
                won = s.execute(  # type: ignore[attr-defined]
                    update(Notification)
                    .where(Notification.id == nid, due)
                    .values(
                        state=SENDING,
                        claimed_until=now + timedelta(seconds=lease_s),
                        claimed_by=claimer[:160],
                        attempts=Notification.attempts + 1,
                    )
                    .execution_options(synchronize_session=False)
                ).rowcount
                if won:
                    return nid
                unlock(lock, OUTBOX_LOCK, nid)
        return None

    @staticmethod
    def unclaim(lock: Connection, notification_id: int) -> None:
        """Drop the advisory lock :meth:`claim_next` took (after the row is recorded)."""
        unlock(lock, OUTBOX_LOCK, notification_id)

    @staticmethod
    def stranded(s: Session, lock: Connection) -> list[tuple[int, str]]:
        """``(id, claimed_by)`` of the ``sending`` rows whose relay no longer runs.

        PostgreSQL: nobody holds the row's advisory lock (``lock`` must not be a
        connection this process sends on: locks are re-entrant per connection).
        SQLite (one machine): the claiming process is gone (:func:`process_alive`).
        Rows without ``claimed_by`` are left to their lease. The caller releases each
        with a conditional UPDATE on ``(state, claimed_by)``, so a row recorded in
        between is never touched."""
        rows = list(
            s.execute(
                select(Notification.id, Notification.claimed_by).where(
                    Notification.state == SENDING, Notification.claimed_by.is_not(None)
                )
            )
        )
        s.rollback()  # no transaction stays open across the checks
        if not rows:
            return []
        if is_postgres(lock):
            free = set(orphaned(lock, OUTBOX_LOCK, [r[0] for r in rows]))
            return [(r[0], str(r[1])) for r in rows if r[0] in free]
        return [(r[0], str(r[1])) for r in rows if not process_alive(str(r[1]))]

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

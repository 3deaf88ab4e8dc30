"""The outbox relay: claims due notifications, sends them, records every attempt.

Per pass: first release the rows a dead relay left ``sending``
(:meth:`Relay.release_stranded`), then up to ``concurrency`` workers each claim one due
row at a time, just before sending it (:meth:`~delivery.outbox.Outbox.claim_next`: ``FOR
UPDATE SKIP LOCKED``, a conditional UPDATE and, on PostgreSQL, an advisory lock held
until the row is recorded), so relays on several nodes never share a row and a crash
strands only the rows in flight. Per row: compose → if the last attempt's outcome is unknown
(a crash mid-send, an SMTP link that dropped after the final dot, a Twilio 5xx or
timeout) ask the channel whether it already has the message (SMS, file; SMTP cannot
tell, so the same email is re-sent with the same Message-ID) → record the attempt →
send → record the outcome. Outcomes:

- sent: the row is done; the request's timeline says so.
- retryable (SMTP 4xx, connection errors, Twilio 429/5xx): queued again after
  ``min(cap, base·2ⁿ)`` with jitter (half to full), or after the provider's
  Retry-After; after ``max_attempts`` the row fails for good.
- permanent (SMTP 5xx, an invalid or unsubscribed number): the row fails; a failed
  link email or code marks the request ``failed`` and alerts staff, in one transaction.

The timeline of a request (``courier request show``) gets one event per attempt.

When the node dies mid-send (``kill -9``, power loss), the row stays ``sending`` with an
attempt without outcome. The next pass of any relay (the restarted node's first, within
a second of its start; on PostgreSQL a live node's too) sees that the claimer is gone
(:meth:`~delivery.outbox.Outbox.stranded`: its process, or its advisory lock) and puts
the row back to ``queued``, due at once, with a timeline note; its attempt then takes
the "outcome unknown" path above: an SMS is looked up before any retry, an email is
sent again with the same Message-ID (at most one duplicate, which mail clients fold).
``LEASE_S`` only brings back rows claimed without a claimer (before migration 0014).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from delivery.channel import Channel, OutgoingMessage, Receipt
from delivery.compose import ComposeError, Composer
from delivery.errors import DeliveryError
from delivery.outbox import Outbox, process_identity
from delivery.smsbreaker import SmsBreaker
from release.errors import InvalidTransition
from release.phonepolicy import PhonePolicy, PhoneRefused
from release.requests import RequestBook
from release.states import allowed
from store.claims import lock_connection
from store.models import (
    Grant,
    Notification,
    NotificationAttempt,
    NotificationState,
    ReleaseRequest,
    RequestEvent,
    RequestState,
    utcnow,
)

log = logging.getLogger("courier.delivery.relay")
ACTOR = "outbox"
# Long enough for an SMTP server to answer after the final dot (RFC 5321: 10 min). Only
# the last resort: a row whose claimer is known to be gone is released at once.
LEASE_S = 900.0
#: The number of a link's codes that failed to reach the patient (expired unsent, refused)
#: at which staff are alerted (``code_undelivered``, once per link): one lost code may be
#: a provider's bad minute, two mean the patient is stuck at the code page.
CODE_ALERT_AFTER = 2


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff between attempts: ``min(cap, base·2ⁿ⁻¹)`` scaled by a random 0.5–1."""

    base_s: float = 30.0
    cap_s: float = 3600.0
    max_attempts: int = 12

    def delay(self, attempts: int, rng: random.Random, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.cap_s, max(0.0, retry_after))
        raw = min(self.cap_s, self.base_s * 2 ** max(0, attempts - 1))
        return rng.uniform(raw / 2, raw)


class Relay:
    """Sends what the outbox holds through the channels ("email", "sms")."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        outbox: Outbox,
        channels: Mapping[str, Channel],
        compose: Composer,
        book: RequestBook,
        *,
        policy: RetryPolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        concurrency: int = 8,
        lease_s: float = LEASE_S,
        phones: PhonePolicy | None = None,
        breaker: SmsBreaker | None = None,
    ) -> None:
        self._sessions = sessions
        self._outbox = outbox
        self._channels = channels
        self._compose = compose
        self._book = book
        self._policy = policy or RetryPolicy()
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self._concurrency = max(1, concurrency)
        self._lease = lease_s
        self.claimer = process_identity()
        self._phones = phones or PhonePolicy()
        self._breaker = breaker

    def _engine(self) -> Engine:
        bind = self._sessions.kw["bind"]
        assert isinstance(bind, Engine)
        return bind

    async def run_once(self, limit: int = 200) -> int:
        """One pass: release stranded rows, then send what is due, each row claimed just
        before it is sent (at most ``concurrency`` in flight, ``limit`` claims in all).
        Returns how many attempts ended in ``sent``."""
        self.release_stranded()
        budget = [limit]
        with lock_connection(self._engine()) as lock:
            # Every worker ends before the lock connection goes back to the pool.
            results = await asyncio.gather(
                *(self._worker(lock, budget) for _ in range(self._concurrency)),
                return_exceptions=True,
            )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        return sum(r for r in results if isinstance(r, int))

    async def _worker(self, lock: Connection, budget: list[int]) -> int:
        """Claim, send, record, until nothing is due or the pass's budget is spent."""
        sent = 0
        while budget[0] > 0:
            with self._sessions() as s:
                nid = self._outbox.claim_next(s, lock, self._lease, self.claimer)
            if nid is None:
                budget[0] = 0  # nothing due: the other workers stop too
                break
            budget[0] -= 1
            try:
                sent += await self._guarded(nid)
            finally:
                self._outbox.unclaim(lock, nid)
        return sent

    async def _guarded(self, nid: int) -> bool:
        try:
            return await self._one(nid)
        except Exception as exc:  # one row must never stop the relay
            log.error("notification %d: relay error (%s)", nid, type(exc).__name__)
            return False

    def release_stranded(self) -> list[int]:
        """Put the rows a dead relay left ``sending`` back to ``queued``, due now; their
        next attempt takes the "outcome unknown" path (look up, or same Message-ID).
        Returns their ids. Safe at any time, on several nodes at once."""
        with lock_connection(self._engine()) as lock, self._sessions() as s:
            found = self._outbox.stranded(s, lock)
        released = []
        for nid, claimer in found:
            with self._sessions() as s, s.begin():
                won = s.execute(  # type: ignore[attr-defined]
                    update(Notification)
                    .where(
                        Notification.id == nid,
                        Notification.state == NotificationState.SENDING,
                        Notification.claimed_by == claimer,
                    )
                    .values(
                        state=NotificationState.QUEUED,
                        next_attempt_at=self._clock(),
                        claimed_until=None,
                        claimed_by=None,
                    )
                    .execution_options(synchronize_session=False)
                ).rowcount
                row = s.get(Notification, nid) if won else None
                if row is not None:
                    released.append(nid)
                    self._note(
                        s,
                        row,
                        f"{_what(row)}: the relay sending it stopped (node restarted or "
                        "died); queued again, an interrupted attempt checked before any retry",
                    )
        if released:
            log.warning(
                "%d notification(s) left sending by a stopped relay released: %s",
                len(released),
                ",".join(map(str, released)),
            )
        return released

    async def _one(self, nid: int) -> bool:
        """One attempt at a row this relay claimed (:meth:`Outbox.claim_next`)."""
        with self._sessions() as s:
            row = s.get(Notification, nid)
            assert row is not None
            channel = self._channels.get(row.channel)
            unknown_before = Outbox.interrupted(s, row)
            try:
                message = self._compose(s, row, check_expiry=not unknown_before)
            except ComposeError as exc:
                self._finish(nid, None, exc.outcome, str(exc), permanent=exc.alert)
                return False
        if channel is None:
            self._finish(nid, None, "permanent", f"no {row.channel} channel configured", True)
            return False
        if unknown_before:
            try:
                found = await self._lookup(channel, message)
            except DeliveryError as exc:
                self._failed(nid, None, exc)
                return False
            if found is not None:
                self._sent(nid, None, found, "found at the provider after an unknown outcome")
                return True
            with self._sessions() as s:  # not delivered: is it still worth sending?
                try:
                    message = self._compose(s, row)
                except ComposeError as exc:
                    self._finish(nid, None, exc.outcome, str(exc), permanent=exc.alert)
                    return False
        if row.channel == "sms" and not self._sms_allowed(nid, message):
            return False  # refused for good, or held by the breaker (no await before here)
        with self._sessions() as s:
            attempt = self._outbox.start_attempt(s, row, channel.name)
        try:
            receipt = await channel.send(message)
        except DeliveryError as exc:
            self._failed(nid, attempt.id, exc)
            return False
        self._sent(nid, attempt.id, receipt, "sent")
        return True

    def _sms_allowed(self, nid: int, message: OutgoingMessage) -> bool:
        """The SMS hook (:mod:`release.phonepolicy`, :mod:`delivery.smsbreaker`): a number
        the policy refuses fails for good, as a refused number does (the backup email
        takes the code); while the breaker holds, the row is queued again untouched."""
        try:
            self._phones.check(message.to)
        except PhoneRefused as exc:
            self._failed(nid, None, DeliveryError(f"number refused: {exc}", permanent=True))
            return False
        if self._breaker is None:
            return True
        with self._sessions() as s, s.begin():
            resume = self._breaker.hold(s)
            if resume is None:
                return True
            row = s.get(Notification, nid)
            assert row is not None
            row.state = NotificationState.QUEUED
            row.attempts = max(0, row.attempts - 1)  # the claim counted one; none happened
            row.next_attempt_at = resume
            row.claimed_until = row.claimed_by = None
        log.warning("notification %d held by the SMS circuit breaker", nid)
        return False

    async def _lookup(self, channel: Channel, message: OutgoingMessage) -> Receipt | None:
        try:
            return await channel.lookup(message)
        except DeliveryError as exc:
            # Cannot tell: re-sending could duplicate. Wait and ask again later.
            raise DeliveryError(
                f"could not check whether the provider already has the message: {exc.message}",
                permanent=False,
                outcome_unknown=True,
            ) from None

    # -- recording --------------------------------------------------------------------

    def _sent(self, nid: int, attempt_id: int | None, receipt: Receipt, how: str) -> None:
        now = self._clock()
        with self._sessions() as s, s.begin():
            row = s.get(Notification, nid)
            assert row is not None
            row.state = NotificationState.SENT
            row.sent_at = now
            row.provider_id = receipt.provider_id[:210]
            row.claimed_until = row.claimed_by = None
            self._close_attempt(s, attempt_id, "sent", "", how, receipt.provider_id)
            self._note(s, row, f"{_what(row)} {how} (attempt {row.attempts}, {receipt.channel})")
        log.info("notification %d (%s) sent via %s", nid, row.kind, receipt.channel)

    def _failed(self, nid: int, attempt_id: int | None, exc: DeliveryError) -> None:
        now = self._clock()
        code = "" if exc.code is None else str(exc.code)
        with self._sessions() as s, s.begin():
            row = s.get(Notification, nid)
            assert row is not None
            permanent = exc.permanent or row.attempts >= self._policy.max_attempts
            outcome = (
                "permanent" if exc.permanent else "unknown" if exc.outcome_unknown else "retry"
            )
            self._close_attempt(s, attempt_id, outcome, code, exc.message, "")
            row.last_error = exc.message[:500]
            row.claimed_until = row.claimed_by = None
            wait = self._policy.delay(row.attempts, self._rng, exc.retry_after)
            if permanent and exc.permanent and self._to_backup(s, row, code):
                row.state = NotificationState.FAILED
            elif permanent:
                why = exc.message if exc.permanent else f"gave up after {row.attempts} attempts"
                self._fail_for_good(s, row, why)
            elif not exc.outcome_unknown and self._expires_before(
                s, row, now + timedelta(seconds=wait)
            ):
                # The next try would come after the code's validity: say so now (the
                # patient's page offers a new code) rather than keep the patient waiting.
                self._code_expired(s, row, f"{exc.message}; the code expires before the next try")
            else:
                row.state = NotificationState.QUEUED
                row.next_attempt_at = now + timedelta(seconds=wait)
                self._note(
                    s,
                    row,
                    f"{_what(row)} attempt {row.attempts} failed ({code or outcome}): "
                    f"{exc.message}; next try in {wait:.0f} s",
                )
        log.warning(
            "notification %d (%s) attempt failed code=%s permanent=%s",
            nid,
            row.kind,
            code,
            permanent,
        )

    def _to_backup(self, s: Session, row: Notification, code: str) -> bool:
        """A refused number (invalid, not a mobile, unsubscribed): the *same* code goes
        to the request's backup email instead, and later codes go there too. False when
        there is no backup email (the caller then fails the request)."""
        if row.kind != "code_sms" or row.grant_id is None:
            return False
        grant = s.get(Grant, row.grant_id)
        if grant is None or not grant.backup_email:
            return False
        grant.second_channel = f"email:{grant.backup_email}"
        grant.codes_failed += 1
        self._outbox.enqueue(
            s,
            kind="code_email",
            channel="email",
            recipient=grant.backup_email,
            language=row.language,
            params=json.loads(row.params or "{}"),  # the same code_salt: the same code
            request_id=row.request_id,
            grant_id=row.grant_id,
        )
        self._note(
            s,
            row,
            f"{_what(row)} refused for good ({code or 'permanent'}); the same code goes to "
            "the backup email",
        )
        return True

    def _finish(
        self, nid: int, attempt_id: int | None, outcome: str, detail: str, permanent: bool
    ) -> None:
        """End a row without calling a provider (superseded code, no channel...)."""
        with self._sessions() as s, s.begin():
            row = s.get(Notification, nid)
            assert row is not None
            row.claimed_until = row.claimed_by = None
            row.last_error = detail[:500]
            if outcome == "expired":
                self._code_expired(s, row, detail)
            elif permanent:
                self._fail_for_good(s, row, detail)
            else:
                row.state = NotificationState.FAILED
                self._note(s, row, f"{_what(row)} not sent: {detail}")

    @staticmethod
    def _expires_before(s: Session, row: Notification, when: datetime) -> bool:
        """True when ``row`` is a code whose validity ends before ``when``."""
        if not row.kind.startswith("code_") or row.grant_id is None:
            return False
        grant = s.get(Grant, row.grant_id)
        ends = grant.code_expires_at if grant is not None else None
        return ends is not None and ends <= when

    def _code_expired(self, s: Session, row: Notification, why: str) -> None:
        """A code that could not be sent while it was valid: never dropped in silence.
        The row fails (the patient's code page then says the code could not be sent and
        offers a new one, :mod:`portal.access`); the grant counts it, and the
        ``CODE_ALERT_AFTER``-th such code of a link alerts staff (once)."""
        row.state = NotificationState.FAILED
        row.last_error = why[:500]
        self._note(s, row, f"{_what(row)} not sent before the code expired: {why}")
        grant = s.get(Grant, row.grant_id) if row.grant_id is not None else None
        if grant is None:
            return
        grant.codes_failed += 1
        if grant.codes_failed == CODE_ALERT_AFTER and row.request_id is not None:
            req = s.get(ReleaseRequest, row.request_id)
            if req is not None:
                self._outbox.alert(
                    s, "code_undelivered", reference=req.reference, request_id=req.id
                )
        log.warning("notification %d (%s) not sent before its code expired", row.id, row.kind)

    def _fail_for_good(self, s: Session, row: Notification, why: str) -> None:
        """A permanent failure: the row fails; a patient message fails its request and
        staff are alerted (an alert that fails is only logged: no alert loops)."""
        row.state = NotificationState.FAILED
        self._note(s, row, f"{_what(row)} failed for good: {why}")
        if row.kind.startswith("alert_"):
            log.error("staff alert %d could not be sent; see courier outbox list", row.id)
            return
        if row.request_id is None:
            # A share's email or a reminder: the request's own delivery stands (the
            # patient's page shows a share's failure).
            log.warning("notification %d (%s) failed for good", row.id, row.kind)
            return
        grant = s.get(Grant, row.grant_id) if row.grant_id is not None else None
        if grant is not None and row.kind.startswith("code_"):
            grant.codes_failed += 1
        if grant is not None and grant.purpose != "patient":
            # A clinician's address or number failed: the patient's own delivery stands;
            # the patient's page shows the share as not delivered.
            return
        req = s.get(ReleaseRequest, row.request_id)
        if req is None:
            return
        state = RequestState(req.state)
        if allowed(state, RequestState.FAILED):
            with contextlib.suppress(InvalidTransition):
                self._book.move(
                    s,
                    req,
                    state,
                    RequestState.FAILED,
                    ACTOR,
                    f"{_what(row)}: {why}",
                    self._clock(),
                )
        self._outbox.alert(s, "failed", reference=req.reference, request_id=req.id)

    def _close_attempt(
        self, s: Session, attempt_id: int | None, outcome: str, code: str, detail: str, pid: str
    ) -> None:
        if attempt_id is None:
            return
        attempt = s.get(NotificationAttempt, attempt_id)
        if attempt is not None:
            attempt.finished_at = self._clock()
            attempt.outcome = outcome
            attempt.code = code[:16]
            attempt.detail = detail[:1000]
            attempt.provider_id = pid[:210]

    def _note(self, s: Session, row: Notification, reason: str) -> None:
        """One timeline event per attempt on the row's request (state unchanged)."""
        if row.request_id is None:
            return
        state = s.scalar(select(ReleaseRequest.state).where(ReleaseRequest.id == row.request_id))
        s.add(
            RequestEvent(
                request_id=row.request_id,
                at=self._clock(),
                actor=ACTOR,
                from_state=state or "",
                to_state=state or "",
                reason=reason[:2000],
            )
        )


def _what(row: Notification) -> str:
    """How a row is named on the timeline: its kind and channel, never its recipient."""
    names = {
        "link_email": "link email",
        "code_sms": "code by SMS",
        "code_email": "code by email",
    }
    name = names.get(row.kind) or row.kind.replace("alert_", "staff alert: ")
    extra = json.loads(row.params or "{}").get("alert")
    return f"{name}{'' if not extra or extra in name else ' ' + extra}"

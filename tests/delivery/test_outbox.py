"""The outbox relay against a real aiosmtpd server and a local Twilio-compatible endpoint,
through the real channels: retries, permanent failures, unknown outcomes, crashes.

Each test runs on SQLite and PostgreSQL with an injected clock (backoff is moved past by
advancing it, never by sleeping)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from delivery.channel import build_channels
from delivery.channel_settings import SmsSettings
from delivery.codes import send_code
from delivery.compose import Branding, Composer
from delivery.grants import GrantKeys, new_grant
from delivery.outbox import Outbox
from delivery.relay import Relay, RetryPolicy
from release.requests import RequestBook
from store.models import (
    Grant,
    Notification,
    NotificationAttempt,
    ReleaseRequest,
    RequestState,
)
from tests.conftest import Database
from tests.delivery.conftest import PASSWORD, USER, email_settings, sms_settings
from tests.release.helpers import MOBILE, draft
from tests.smtp_server import Fault, SmtpServer
from tests.twilio_server import Fault as SmsFault
from tests.twilio_server import TwilioServer

STAFF = "pacs-team@hospital.example"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 6, 1, 2, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Rig:
    db: Database
    clock: Clock
    book: RequestBook
    outbox: Outbox
    keys: GrantKeys
    composer: Composer
    smtp: SmtpServer
    twilio: TwilioServer
    tmp: Path

    def relay(self, *, sms: bool = True) -> Relay:
        email_cfg = email_settings(self.smtp, ca_file=str(self.tmp / "ca.pem"))
        sms_cfg = sms_settings(self.twilio) if sms else SmsSettings()
        env = {"COURIER_SMTP": PASSWORD, "COURIER_TWILIO": self.twilio.token}
        email, sms_ch = build_channels(email_cfg, sms_cfg, self.tmp, env)
        return Relay(
            self.db.sessions,
            self.outbox,
            {"email": email, "sms": sms_ch},  # type: ignore[dict-item]
            self.composer,
            self.book,
            policy=RetryPolicy(base_s=30, cap_s=600, max_attempts=5),
            clock=self.clock,
            rng=random.Random(7),
        )

    def run(self, relay: Relay | None = None) -> int:
        async def go() -> int:
            r = relay or self.relay()
            try:
                return await r.run_once()
            finally:
                for ch in r._channels.values():
                    await ch.aclose()

        return asyncio.run(go())

    def notified_request(self, **overrides: object) -> tuple[ReleaseRequest, Grant]:
        """A request in ``notified`` with a grant and its link email queued."""
        req = self.book.create(draft(**overrides), "test")
        with self.db.sessions() as s, s.begin():
            s.execute(
                update(ReleaseRequest)
                .where(ReleaseRequest.id == req.id)
                .values(state=RequestState.NOTIFIED)
            )
            fresh = s.get(ReleaseRequest, req.id)
            assert fresh is not None
            grant = new_grant(s, self.keys, fresh, package_id=None, link_days=30, now=self.clock())
            self.outbox.enqueue(
                s,
                kind="link_email",
                channel="email",
                recipient=fresh.recipient_email,
                request_id=fresh.id,
                grant_id=grant.id,
            )
            s.expunge(grant)
        return req, grant

    def rows(self) -> list[Notification]:
        with self.db.sessions() as s:
            return list(s.scalars(select(Notification).order_by(Notification.id)))

    def attempts(self, nid: int) -> list[NotificationAttempt]:
        with self.db.sessions() as s:
            return list(
                s.scalars(
                    select(NotificationAttempt)
                    .where(NotificationAttempt.notification_id == nid)
                    .order_by(NotificationAttempt.id)
                )
            )

    def later(self, seconds: float = 700) -> None:
        self.clock.now += timedelta(seconds=seconds)


@pytest.fixture
def rig(db: Database, tmp_path: Path, twilio_server: TwilioServer) -> Iterator[Rig]:
    with SmtpServer(security="starttls", users={USER: PASSWORD}) as smtp_server:
        yield _rig(db, tmp_path, smtp_server, twilio_server)


def _rig(db: Database, tmp_path: Path, smtp_server: SmtpServer, twilio: TwilioServer) -> Rig:
    (tmp_path / "ca.pem").write_bytes(smtp_server.ca_pem())
    clock = Clock()
    keys = GrantKeys(b"k" * 32)
    return Rig(
        db=db,
        clock=clock,
        book=RequestBook(db.sessions, clock),
        outbox=Outbox(domain="hospital.example", staff_email=STAFF, clock=clock),
        keys=keys,
        composer=Composer(
            keys,
            Branding("https://courier.hospital.example", "St Elsewhere", "StElsewhere"),
            clock,
        ),
        smtp=smtp_server,
        twilio=twilio,
        tmp=tmp_path,
    )


def test_421_then_451_then_250_delivers_once_with_three_attempts(rig: Rig) -> None:
    req, grant = rig.notified_request()
    rig.smtp.script({1: Fault("RCPT", "421 4.3.2 try later"), 2: Fault("RCPT", "451 4.3.0 busy")})
    assert rig.run() == 0
    [row] = rig.rows()
    assert (row.state, row.attempts) == ("queued", 1)
    assert row.next_attempt_at > rig.clock.now  # backoff, not at once
    assert rig.run() == 0  # not due yet: nothing is tried
    assert rig.smtp.attempts == 1
    rig.later()
    assert rig.run() == 0
    rig.later()
    assert rig.run() == 1
    [row] = rig.rows()
    assert (row.state, row.attempts) == ("sent", 3)
    assert [a.outcome for a in rig.attempts(row.id)] == ["retry", "retry", "sent"]
    assert [a.code for a in rig.attempts(row.id)][:2] == ["421", "451"]
    [got] = rig.smtp.received
    msg = got.message()
    assert msg["Message-ID"] == f"<{row.message_id}>"
    body = msg.get_body(("plain",))
    assert body is not None
    assert f"https://courier.hospital.example/d/{rig.keys.token(grant)}" in body.get_content()
    # Nothing secret is stored: the token is derived, only its hash kept.
    assert rig.keys.token(grant) not in json.dumps([r.params for r in rig.rows()])
    timeline = [e.reason for e in rig.book.timeline(req.reference)]
    assert sum("link email attempt" in r for r in timeline) == 2
    assert any("link email sent (attempt 3" in r for r in timeline)
    assert rig.book.get(req.reference).state == RequestState.NOTIFIED


def test_550_on_rcpt_fails_the_request_and_alerts_staff(rig: Rig) -> None:
    req, _ = rig.notified_request()
    rig.smtp.script({1: Fault("RCPT", "550 5.1.1 no such user")})
    assert rig.run() == 0
    rows = rig.rows()
    kinds = [(r.kind, r.state) for r in rows]
    assert kinds == [("link_email", "failed"), ("alert_failed", "queued")]
    assert rig.book.get(req.reference).state == RequestState.FAILED
    assert rig.run() == 1  # the alert goes out; the failed row is never retried
    assert rig.smtp.attempts == 2
    [alert] = rig.smtp.received
    assert alert.rcpt_tos == [STAFF]
    msg = alert.message()
    assert req.reference in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    rig.later(86400)
    assert rig.run() == 0 and rig.smtp.attempts == 2


def test_a_lost_reply_after_the_final_dot_resends_the_same_message(rig: Rig) -> None:
    rig.notified_request()
    rig.smtp.script({1: Fault("DROP")})
    assert rig.run() == 0
    [row] = rig.rows()
    assert [a.outcome for a in rig.attempts(row.id)] == ["unknown"]
    rig.later()
    assert rig.run() == 1
    got = rig.smtp.received
    assert len(got) == 2  # at most one duplicate...
    assert {g.message()["Message-ID"] for g in got} == {f"<{row.message_id}>"}  # ...the same


def test_staff_alerts_without_a_staff_address_are_held_not_lost(rig: Rig) -> None:
    outbox = Outbox(domain="hospital.example", staff_email=None, clock=rig.clock)
    with rig.db.sessions() as s, s.begin():
        outbox.alert(s, "rules_reload_failed", reference=None, request_id=None)
    assert rig.run() == 0
    [row] = rig.rows()
    assert row.state == "held" and rig.smtp.attempts == 0


def _sms_request(rig: Rig) -> tuple[ReleaseRequest, Grant, Notification]:
    req, grant = rig.notified_request()
    with rig.db.sessions() as s, s.begin():
        s.execute(update(Notification).values(state="sent"))  # the link email went out
        g = s.get(Grant, grant.id)
        assert g is not None
        row = send_code(s, rig.keys, rig.outbox, g, now=rig.clock(), ttl_min=10, sends_per_hour=3)
        s.expunge(row)
        s.expunge(g)
    return req, g, row


def test_code_sms_carries_the_derived_code_and_nothing_else(rig: Rig) -> None:
    _, grant, _row = _sms_request(rig)
    assert rig.run() == 1
    [posted] = rig.twilio.messages
    code = rig.keys.code(grant)
    assert code in posted["body"] and posted["to"] == MOBILE
    assert "Test" not in posted["body"] and "MRN" not in posted["body"]  # no patient data
    with rig.db.sessions() as s:
        g = s.get(Grant, grant.id)
        assert g is not None and rig.keys.check_code(g, code, rig.clock())
        assert not rig.keys.check_code(g, "000000" if code != "000000" else "111111", rig.clock())
    assert rig.rows()[-1].state == "sent"


def test_429_waits_for_retry_after(rig: Rig) -> None:
    _sms_request(rig)
    rig.twilio.script({1: SmsFault("status", status=429, code=20429, retry_after="120")})
    assert rig.run() == 0
    row = rig.rows()[-1]
    assert row.state == "queued"
    assert row.next_attempt_at == rig.clock.now + timedelta(seconds=120)
    rig.later(121)
    assert rig.run() == 1
    assert rig.twilio.posts == 2 and len(rig.twilio.messages) == 1


def test_a_5xx_after_acceptance_is_looked_up_not_sent_twice(rig: Rig) -> None:
    _sms_request(rig)
    rig.twilio.script({1: SmsFault("accept_then_500", status=500, store=True)})
    assert rig.run() == 0
    row = rig.rows()[-1]
    assert [a.outcome for a in rig.attempts(row.id)] == ["unknown"]
    rig.later(40)  # past the backoff, within the code's 10 minutes
    assert rig.run() == 1
    assert rig.twilio.posts == 1 and len(rig.twilio.messages) == 1  # one SMS, one code
    assert rig.rows()[-1].state == "sent"


@pytest.mark.parametrize("code", [21211, 21614, 21610])
def test_an_invalid_or_unsubscribed_number_fails_for_good(rig: Rig, code: int) -> None:
    req, grant, _ = _sms_request(rig)
    rig.twilio.script({1: SmsFault("status", status=400, code=code)})
    assert rig.run() == 0
    kinds = [(r.kind, r.state) for r in rig.rows()]
    assert ("code_sms", "failed") in kinds and ("alert_failed", "queued") in kinds
    assert rig.book.get(req.reference).state == RequestState.FAILED
    with rig.db.sessions() as s:
        g = s.get(Grant, grant.id)
        assert g is not None and g.codes_failed == 1
    rig.later(40)
    rig.run()
    assert rig.twilio.posts == 1  # never retried


def test_a_crash_between_acceptance_and_the_row_update_sends_no_duplicate(rig: Rig) -> None:
    """The relay dies after Twilio accepted the SMS but before recording it: the row
    stays claimed with an attempt without outcome. After the lease, the next relay
    looks the message up and records it instead of sending it again."""
    _, _, row = _sms_request(rig)
    relay = rig.relay()

    async def crash_after_send() -> None:
        with rig.db.sessions() as s:
            assert rig.outbox.claim(s, row.id, 900)
        with rig.db.sessions() as s:
            fresh = s.get(Notification, row.id)
            assert fresh is not None
            message = rig.composer(s, fresh)
        with rig.db.sessions() as s:
            rig.outbox.start_attempt(s, fresh, "twilio")
        await relay._channels["sms"].send(message)  # accepted... then the process dies
        for ch in relay._channels.values():
            await ch.aclose()

    asyncio.run(crash_after_send())
    assert rig.run() == 0  # still claimed: the lease protects a relay that is only slow
    rig.later(901)  # past the lease (the code's validity is not checked for a look-up)
    assert rig.run() == 1
    assert rig.twilio.posts == 1
    after = rig.rows()[-1]
    assert after.state == "sent" and after.provider_id.startswith("SM")
    assert [a.outcome for a in rig.attempts(row.id)] == [""]  # found, not re-sent


def test_a_newer_code_supersedes_an_unsent_one(rig: Rig) -> None:
    _, grant, first = _sms_request(rig)
    with rig.db.sessions() as s, s.begin():
        g = s.get(Grant, grant.id)
        assert g is not None
        send_code(s, rig.keys, rig.outbox, g, now=rig.clock(), ttl_min=10, sends_per_hour=3)
        newest = rig.keys.code(g)
    assert rig.run() == 1
    assert [m["body"].count(newest) for m in rig.twilio.messages] == [1]
    states = {r.id: r.state for r in rig.rows()}
    assert states[first.id] == "failed"  # superseded: not sent, no alert
    assert not [r for r in rig.rows() if r.kind.startswith("alert_")]


def test_codes_per_hour_are_capped(rig: Rig) -> None:
    from delivery.grants import GrantError

    _, grant, _ = _sms_request(rig)
    with rig.db.sessions() as s, s.begin():
        g = s.get(Grant, grant.id)
        assert g is not None
        for _ in range(2):
            send_code(s, rig.keys, rig.outbox, g, now=rig.clock(), ttl_min=10, sends_per_hour=3)
        with pytest.raises(GrantError, match="codes were sent in the last hour"):
            send_code(s, rig.keys, rig.outbox, g, now=rig.clock(), ttl_min=10, sends_per_hour=3)


def test_a_refused_number_sends_the_same_code_to_the_backup_email(rig: Rig) -> None:
    req, grant = rig.notified_request(backup_email="backup@example.net")
    with rig.db.sessions() as s, s.begin():
        s.execute(update(Notification).values(state="sent"))
        g = s.get(Grant, grant.id)
        assert g is not None
        send_code(s, rig.keys, rig.outbox, g, now=rig.clock(), ttl_min=10, sends_per_hour=3)
        code = rig.keys.code(g)
    rig.twilio.script({1: SmsFault("status", status=400, code=21211)})
    assert rig.run() == 0  # the SMS is refused; the code email is queued
    assert rig.run() == 1
    [got] = rig.smtp.received
    assert got.rcpt_tos == ["backup@example.net"]
    assert code in got.message().get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert rig.book.get(req.reference).state == RequestState.NOTIFIED  # not failed
    assert not [r for r in rig.rows() if r.kind.startswith("alert_")]
    with rig.db.sessions() as s:
        g = s.get(Grant, grant.id)
        assert g is not None and g.second_channel == "email:backup@example.net"
    assert any(
        "same code goes to the backup email" in e.reason for e in rig.book.timeline(req.reference)
    )


def test_smtp_down_for_a_while_then_up_delivers_after_recovery(rig: Rig) -> None:
    rig.notified_request()
    rig.smtp.stop()
    for _ in range(3):  # three passes while the server is down: each a retryable failure
        assert rig.run() == 0
        rig.later()
    [row] = rig.rows()
    assert row.state == "queued" and row.attempts == 3
    assert {a.outcome for a in rig.attempts(row.id)} == {"retry"}
    rig.smtp.start()  # back, on the same port
    rig.later()
    assert rig.run() == 1
    assert len(rig.smtp.received) == 1 and rig.rows()[0].state == "sent"

"""`kill -9` of a real `courier serve` while the outbox relay is mid-send (issue 16).

One node sends a patient's link email to a real SMTP server that records the message
and then holds its reply after DATA, and a code SMS to the Twilio-compatible server,
which stores the message and then holds its answer. The node is killed while both are
held: both rows stay ``sending`` with an attempt without outcome. A restarted node
releases them at once (their claimer is gone: its process on SQLite, its advisory lock
on PostgreSQL), not after the 900 s lease: the email goes out again with the same
Message-ID (at most one duplicate) and the SMS is looked up and recorded, never posted
twice. Waits are bounded ("within a minute of the restart"); nothing is timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select, update

from delivery.codes import send_code
from delivery.grants import GrantKeys, load_secret, new_grant
from delivery.outbox import Outbox, queue_link_again
from release.requests import RequestBook
from store.models import (
    Notification,
    NotificationAttempt,
    ReleaseRequest,
    RequestEvent,
    RequestState,
)
from tests.conftest import Database, NodeProcess, start_node
from tests.release.helpers import draft
from tests.smtp_server import Fault as SmtpFault
from tests.smtp_server import SmtpServer
from tests.twilio_server import Fault as TwilioFault
from tests.twilio_server import TwilioServer

HOLD_S = 60.0  # longer than the test waits: the reply never comes before the kill


def _wait(what: str, check: Callable[[], bool], rounds: int = 600) -> None:
    """Poll ``check`` every 0.1 s, at most ``rounds`` times (60 s), else fail."""
    for _ in range(rounds):
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {rounds / 10:.0f} s: {what}")


def _config(smtp: SmtpServer, twilio: TwilioServer) -> str:
    return (
        "email:\n  backend: smtp\n  host: 127.0.0.1\n"
        f"  port: {smtp.port}\n  security: none\n"
        "  from_address: imaging@hospital.example\n  data_timeout_s: 600\n"
        "sms:\n  backend: twilio\n"
        f"  account_sid: {twilio.sid}\n  auth_token_env: COURIER_TWILIO\n"
        f"  from_number: '+15005550006'\n  api_base: {twilio.base_url}\n"
        "  timeout_s: 120\n"
    )


def _queue(db: Database, data_dir: Path) -> tuple[int, int]:
    """A notified request with a live link: its link email and a code SMS, queued."""
    data_dir.mkdir(parents=True, exist_ok=True)
    keys = GrantKeys(load_secret(data_dir / "secret.key"))
    book = RequestBook(db.sessions)
    outbox = Outbox(domain="hospital.example")
    req = book.create(draft(), "test")
    now = datetime.now(UTC)
    with db.sessions() as s, s.begin():
        s.execute(
            update(ReleaseRequest)
            .where(ReleaseRequest.id == req.id)
            .values(state=RequestState.NOTIFIED)
        )
        fresh = s.get(ReleaseRequest, req.id)
        assert fresh is not None
        grant = new_grant(s, keys, fresh, package_id=None, link_days=30, now=now)
        queue_link_again(s, outbox, fresh, now)
        code = send_code(s, keys, outbox, grant, now=now, ttl_min=10, sends_per_hour=3)
        link = s.scalars(select(Notification).where(Notification.kind == "link_email")).one()
        return link.id, code.id


def _row(db: Database, nid: int) -> Notification:
    with db.sessions() as s:
        row = s.get(Notification, nid)
        assert row is not None
        s.expunge(row)
        return row


def _outcomes(db: Database, nid: int) -> list[str]:
    with db.sessions() as s:
        return list(
            s.scalars(
                select(NotificationAttempt.outcome)
                .where(NotificationAttempt.notification_id == nid)
                .order_by(NotificationAttempt.id)
            )
        )


def test_kill_9_mid_send_releases_the_rows_at_the_next_start(db: Database, tmp_path: Path) -> None:
    data_dir = tmp_path / "node-data"
    link_id, code_id = _queue(db, data_dir)
    with SmtpServer(security="none") as smtp, TwilioServer() as twilio:
        smtp.script({1: SmtpFault("STALL", seconds=HOLD_S)})
        twilio.script({1: TwilioFault("timeout", seconds=HOLD_S, store=True)})
        env = {"COURIER_TWILIO": twilio.token}
        node: NodeProcess = start_node(tmp_path, db, env=env, extra=_config(smtp, twilio))
        try:
            _wait(
                "both messages held by their providers",
                lambda: len(smtp.received) == 1 and len(twilio.messages) == 1,
            )
        finally:
            node.kill9()
        assert _row(db, link_id).state == "sending"
        assert _row(db, code_id).state == "sending"
        assert _outcomes(db, link_id) == [""] and _outcomes(db, code_id) == [""]

        node = start_node(tmp_path, db, env=env, extra=_config(smtp, twilio))
        try:
            _wait(
                "both rows sent after the restart",
                lambda: _row(db, link_id).state == "sent" and _row(db, code_id).state == "sent",
            )
        finally:
            node.stop()

        # The email: sent again, same Message-ID, one duplicate at most.
        first = _row(db, link_id)
        ids = {r.message()["Message-ID"].strip("<>") for r in smtp.received}
        assert ids == {first.message_id} and len(smtp.received) == 2
        assert _outcomes(db, link_id) == ["", "sent"]
        # The SMS: looked up, found, recorded; never posted a second time.
        assert twilio.posts == 1 and len(twilio.messages) == 1
        assert any(r.method == "GET" for r in twilio.requests)
        assert _outcomes(db, code_id) == [""]
        assert _row(db, code_id).provider_id == twilio.messages[0]["sid"]
        with db.sessions() as s:
            notes = list(s.scalars(select(RequestEvent.reason)))
        assert sum("relay sending it stopped" in n for n in notes) == 2

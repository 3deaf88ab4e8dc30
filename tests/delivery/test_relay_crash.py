"""`kill -9` of a real `courier deliver --now` process after the SMS provider accepted the
message but before the outbox row was updated: the next relay, at once (the claiming
process is gone, so the 900 s lease does not apply), looks the message up and records
it; the patient gets one SMS with one code."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select, update

from delivery.channel import build_channels
from delivery.channel_settings import EmailSettings
from delivery.codes import send_code
from delivery.compose import Branding, Composer
from delivery.grants import GrantKeys, load_secret, new_grant
from delivery.outbox import Outbox
from delivery.relay import Relay
from release.requests import RequestBook
from store.models import Grant, Notification, NotificationAttempt, ReleaseRequest, RequestState
from tests.conftest import COURIER, Database, free_port, write_config
from tests.delivery.conftest import sms_settings
from tests.release.helpers import draft
from tests.twilio_server import Fault, TwilioServer


def test_kill_9_after_acceptance_sends_no_second_sms(db: Database, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    keys = GrantKeys(load_secret(data_dir / "secret.key"))
    book = RequestBook(db.sessions)
    outbox = Outbox(domain="hospital.example")
    req = book.create(draft(), "test")
    with db.sessions() as s, s.begin():
        s.execute(
            update(ReleaseRequest)
            .where(ReleaseRequest.id == req.id)
            .values(state=RequestState.NOTIFIED)
        )
        fresh = s.get(ReleaseRequest, req.id)
        assert fresh is not None
        grant = new_grant(s, keys, fresh, package_id=None, link_days=30, now=datetime.now(UTC))
        row = send_code(s, keys, outbox, grant, now=datetime.now(UTC), ttl_min=10, sends_per_hour=3)
        row_id, grant_id = row.id, grant.id

    with TwilioServer() as twilio:
        # The provider stores the SMS, then holds its answer: the sender waits, and dies.
        twilio.script({1: Fault("timeout", seconds=60, store=True)})
        config = tmp_path / "node.yaml"
        write_config(
            config,
            data_dir,
            free_port(),
            db,
            extra=(
                "sms:\n  backend: twilio\n"
                f"  account_sid: {twilio.sid}\n  auth_token_env: COURIER_TWILIO\n"
                f"  from_number: '+15005550006'\n  api_base: {twilio.base_url}\n"
                "  timeout_s: 60\n"
            ),
        )
        env = dict(os.environ, COURIER_TWILIO=twilio.token)
        url = db.url + (f"?options=-csearch_path%3D{db.schema}" if db.schema else "")
        env["COURIER_TEST_DB_URL"] = url
        proc = subprocess.Popen(
            [str(COURIER), "deliver", "--now", "--json", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(300):  # bounded: until the provider holds the message
                if twilio.messages:
                    break
                time.sleep(0.05)
            assert twilio.messages, "the SMS never reached the provider"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(30)

        with db.sessions() as s:
            left = s.get(Notification, row_id)
            assert left is not None and left.state == "sending"
            attempts = list(
                s.scalars(
                    select(NotificationAttempt).where(NotificationAttempt.notification_id == row_id)
                )
            )
            assert [a.outcome for a in attempts] == [""]  # started, never finished

        # The next relay, right away: well within the dead one's lease and the code's
        # validity; it releases the row because its claimer no longer runs.
        later = datetime.now(UTC)
        email, sms = build_channels(
            EmailSettings(), sms_settings(twilio), data_dir, {"COURIER_TWILIO": twilio.token}
        )
        relay = Relay(
            db.sessions,
            Outbox(domain="hospital.example", clock=lambda: later),
            {"email": email, "sms": sms},  # type: ignore[dict-item]
            Composer(keys, Branding("https://c.example", "H", "H"), lambda: later),
            book,
            clock=lambda: later,
        )

        async def once() -> int:
            try:
                return await relay.run_once()
            finally:
                await email.aclose()
                await sms.aclose()

        assert asyncio.run(once()) == 1
        assert [n.reason for n in book.timeline(req.reference) if "relay sending" in n.reason]
        assert twilio.posts == 1 and len(twilio.messages) == 1
        with db.sessions() as s:
            done = s.get(Notification, row_id)
            g = s.get(Grant, grant_id)
            assert done is not None and done.state == "sent"
            assert g is not None and keys.code(g) in twilio.messages[0]["body"]

"""A code that could not be sent while it was valid is never dropped in silence (issue 16).

The relay that claimed the code SMS died mid-send (its row ``sending``, an attempt
without outcome) and the restarted relay comes after the code's 10 minutes: the
provider is asked first (it does not have the message), the row fails as expired, the
patient's code page says the code could not be sent and offers a new one, and the
second such code of one link alerts staff (once).
"""

from __future__ import annotations

import json

from sqlalchemy import select, update

from delivery.outbox import process_identity
from delivery.relay import CODE_ALERT_AFTER
from store.models import Grant, Notification, NotificationAttempt
from tests.portal.patient_rig import Rig, built_package, post, rig  # noqa: F401


def _strand_latest_code(r: Rig) -> int:
    """Make the newest code row look as a killed relay leaves it."""
    dead = process_identity().rsplit(":", 1)[0] + ":0"  # this pid, another start: gone
    with r.db.sessions() as s, s.begin():
        nid = s.scalars(
            select(Notification.id)
            .where(Notification.kind == "code_sms")
            .order_by(Notification.id.desc())
        ).first()
        assert nid is not None
        s.execute(
            update(Notification)
            .where(Notification.id == nid)
            .values(state="sending", attempts=1, claimed_by=dead, claimed_until=r.clock())
        )
        s.add(
            NotificationAttempt(
                notification_id=nid,
                started_at=r.clock(),
                channel="sms",
                outcome="",
                code="",
                detail="",
                provider_id="",
            )
        )
    return nid


def _alerts(r: Rig) -> list[str]:
    with r.db.sessions() as s:
        return [
            json.loads(p)["alert"]
            for p in s.scalars(
                select(Notification.params).where(Notification.kind.startswith("alert_"))
            )
        ]


def test_a_stranded_code_past_its_validity_is_shown_and_alerted(rig: Rig) -> None:  # noqa: F811
    patient = rig.patient()
    client = rig.client()
    assert client.get(f"/d/{patient.token}").status_code == 303
    for lost in range(1, CODE_ALERT_AFTER + 1):
        assert post(client, "/access/code").status_code == 303
        nid = _strand_latest_code(rig)
        page = client.get("/access/verify")
        assert page.status_code == 200 and 'id="code-lost"' not in page.text
        rig.clock.advance(minutes=11)  # the code's validity ran out while stranded
        rig.relay()  # the stranded row is released, looked up (absent), then expired
        with rig.db.sessions() as s:
            row = s.get(Notification, nid)
            assert row is not None and row.state == "failed"
            assert "expired" in row.last_error
        assert rig.sms_texts() == []  # never sent, never silently: the page says so
        page = client.get("/access/verify")
        assert 'id="code-lost"' in page.text and 'id="resend-code"' in page.text
        with rig.db.sessions() as s:
            grant = s.get(Grant, patient.grant_id)
            assert grant is not None and grant.codes_failed == lost
        assert _alerts(rig).count("code_undelivered") == (1 if lost == CODE_ALERT_AFTER else 0)

    # A new code clears the notice and reaches the patient.
    assert post(client, "/access/code").status_code == 303
    code = rig.last_code()
    assert len(code) == 6
    assert 'id="code-lost"' not in client.get("/access/verify").text
    assert _alerts(rig).count("code_undelivered") == 1

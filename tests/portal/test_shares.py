"""Issue 14 item 4: a signed-in link cannot mail or text the world through the hospital.

Shares are capped per link (active) and per request (a day), checked with the insert in
one transaction; SMS go only to mobile numbers (and countries in sms.allowed_countries),
checked when sharing, when a request is made (CLI, API) and by the relay before sending;
a node-wide breaker holds SMS past sms.max_per_hour and alerts staff once. A clinician
whose shown code was voided by someone's wrong tries gets a new one from the patient.
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from delivery.codes import send_code
from delivery.files import FileChannel
from delivery.relay import Relay
from delivery.smsbreaker import SmsBreaker
from portal.api import create_app
from portal.apikeys import hash_api_key, new_api_key
from release.phonepolicy import PhonePolicy, PhoneRefused
from store.models import Grant, Notification, NotificationState, ReleaseRequest
from tests.conftest import Database
from tests.portal import patient_rig, test_staff
from tests.portal.conftest import Api
from tests.portal.patient_rig import BuiltPackage, Rig, make_rig, post, sign_in
from tests.release import test_cli_requests
from tests.release.helpers import counts, draft_data
from tests.release.test_cli_requests import CREATE, courier

# Fixtures of the rigs, used by name.
rig = patient_rig.rig
built_package = patient_rig.built_package
config = test_cli_requests.config

CLINICIAN_MOBILE = "+447911123457"
PREMIUM = "+449098790000"  # premium rate, as phonenumbers classes it


def _shares(rig: Rig, parent_id: int) -> list[Grant]:
    with rig.db.sessions() as s:
        return list(s.scalars(select(Grant).where(Grant.parent_grant_id == parent_id)))


def _queued(rig: Rig, kind: str) -> int:
    with rig.db.sessions() as s:
        n = s.scalar(
            select(func.count()).select_from(Notification).where(Notification.kind == kind)
        )
    return int(n or 0)


def test_32_parallel_shares_stop_at_the_limit(rig: Rig) -> None:
    """The issue's burst, in parallel: exactly max_shares_per_link shares and emails."""
    p = rig.patient()
    patient = rig.client()
    sign_in(rig, patient, p.token)
    token = patient_rig.csrf_token(patient)
    limit = rig.ctx.portal.max_shares_per_link

    def one(i: int) -> int:
        client = rig.client()
        client.cookies.update(patient.cookies)
        data = {"csrf": token, "email": f"someone{i}@example.net", "mobile": CLINICIAN_MOBILE}
        r = client.post("/files/share", data=data)
        if r.status_code == 429:
            assert "number of active shares allowed" in r.text
        return r.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(one, range(32)))
    assert statuses.count(303) == limit and statuses.count(429) == 32 - limit
    assert len(_shares(rig, p.grant_id)) == limit
    assert _queued(rig, "forward_link_email") == limit
    rig.relay()
    assert len([m for m in rig.emails() if "example.net" in str(m["To"])]) == limit
    # Stopping one makes room for exactly one more.
    first = _shares(rig, p.grant_id)[0]
    assert post(patient, f"/files/share/{first.id}/revoke").status_code == 303
    r = post(patient, "/files/share", email="gp@clinic.example", show_code="1")
    assert r.status_code == 200 and 'id="share-code"' in r.text
    r = post(patient, "/files/share", email="gp2@clinic.example", show_code="1")
    assert r.status_code == 429 and 'id="share-code"' not in r.text
    # A share locked by wrong codes still counts (a new code reopens it) and can be stopped.
    locked = _shares(rig, p.grant_id)[1]
    with rig.db.sessions() as s, s.begin():
        s.execute(update(Grant).where(Grant.id == locked.id).values(locked_at=rig.clock()))
    r = post(patient, "/files/share", email="gp2@clinic.example", show_code="1")
    assert r.status_code == 429 and f'id="revoke-{locked.id}"' in r.text


def test_the_daily_cap_counts_stopped_shares(
    db: Database, tmp_path: Path, built_package: BuiltPackage
) -> None:
    rig = make_rig(
        db, tmp_path, built_package, rate_limit_per_min=1000, max_shares_per_link=2,
        max_shares_per_day=3,
    )  # fmt: skip
    p = rig.patient()
    patient = rig.client()
    sign_in(rig, patient, p.token)
    for i in range(3):
        r = post(patient, "/files/share", email=f"gp{i}@clinic.example", show_code="1")
        assert r.status_code == 200, i
        [newest] = [g for g in _shares(rig, p.grant_id) if g.recipient_email.startswith(f"gp{i}")]
        assert post(patient, f"/files/share/{newest.id}/revoke").status_code == 303
    r = post(patient, "/files/share", email="gp9@clinic.example", show_code="1")
    assert r.status_code == 429 and "as many times as allowed today" in r.text
    assert len(_shares(rig, p.grant_id)) == 3 and _queued(rig, "forward_link_email") == 3
    rig.clock.advance(days=1, seconds=1)
    sign_in(rig, patient, p.token)  # the session went idle in the meantime
    r = post(patient, "/files/share", email="gp9@clinic.example", show_code="1")
    assert r.status_code == 200 and 'id="share-code"' in r.text


@pytest.mark.parametrize(
    ("number", "allowed", "says"),
    [
        ("+447911123456", True, ""),  # a mobile (Guernsey's range of +44)
        ("+12025550123", True, ""),  # the US: fixed line or mobile, not told apart
        ("+33612345678", True, ""),  # a French mobile
        (PREMIUM, False, "premium-rate"),
        ("+34901123456", False, "shared-cost"),  # Spain's 901
        ("+448001234567", False, "toll-free"),
        ("+442079460000", False, "landline"),
        ("+445612345678", False, "VoIP"),
        ("+447012345678", False, "personal"),
        ("+447640123456", False, "pager"),
        ("+445512345678", False, "UAN"),
        ("+447700900123", False, "not a valid phone number"),  # Ofcom drama range
    ],
)
def test_the_sms_number_policy(number: str, allowed: bool, says: str) -> None:
    if allowed:
        assert PhonePolicy().check(number) == number
        return
    with pytest.raises(PhoneRefused, match=says) as refused:
        PhonePolicy().check(number)
    assert number not in str(refused.value) and number[3:] not in str(refused.value)


@pytest.mark.parametrize(
    ("mobile", "countries", "says"),
    [
        (PREMIUM, (), "only to mobile numbers"),
        ("+33612345678", ("GB", "GG"), "mobile numbers of that country"),  # a French mobile
    ],
)
def test_a_share_to_a_number_outside_the_policy_is_refused(
    rig: Rig, mobile: str, countries: tuple[str, ...], says: str
) -> None:
    rig.ctx.phones = PhonePolicy(frozenset(countries))
    p = rig.patient()
    patient = rig.client()
    sign_in(rig, patient, p.token)
    before = rig.counts()
    r = post(patient, "/files/share", email="gp@clinic.example", mobile=mobile)
    assert r.status_code == 400 and says in r.text
    assert rig.counts() == before  # no share, no email, no event
    # An allowed mobile of the same form goes through.
    r = post(patient, "/files/share", email="gp@clinic.example", mobile=CLINICIAN_MOBILE)
    assert r.status_code == 303


@pytest.mark.parametrize(("number", "says"), [(PREMIUM, "premium-rate")])
def test_a_request_second_channel_outside_the_policy_is_refused_by_the_api(
    api: Api, number: str, says: str
) -> None:
    r = api.client.post(
        "/api/v1/requests", json=draft_data(second_channel=f"sms:{number}"), headers=api.auth
    )
    assert r.status_code == 422, r.text
    errors = {e["field"]: e["message"] for e in r.json()["errors"]}
    assert "cannot receive SMS" in errors["second_channel"] and says in errors["second_channel"]
    assert number not in r.text.replace(f"sms:{number}", "")  # the message names no number
    assert counts(api.db.sessions) == (0, 0, 0)


def test_a_premium_second_channel_is_refused_by_the_cli(
    db: Database, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = list(CREATE)
    argv[argv.index("--second-channel") + 1] = f"sms:{PREMIUM}"
    assert courier(config, *argv) != 0
    err = capsys.readouterr().err
    assert "--second-channel: this number cannot receive SMS" in err and "premium-rate" in err
    assert PREMIUM not in err
    assert counts(db.sessions) == (0, 0, 0)


def _sms_relay(rig: Rig, breaker: SmsBreaker | None, phones: PhonePolicy | None = None) -> Relay:
    channels: dict[str, Any] = {
        "email": FileChannel("email", rig.outdir, sender="imaging@hospital.example"),
        "sms": FileChannel("sms", rig.outdir),
    }
    return Relay(
        rig.db.sessions, rig.ctx.outbox, channels, rig.composer, rig.ctx.book,
        clock=rig.clock, breaker=breaker, phones=phones,
    )  # fmt: skip


def _queue_codes(rig: Rig, n: int, ttl_min: int = 10) -> list[int]:
    """One code SMS queued for each of ``n`` new patient links; their outbox ids."""
    ids = []
    for _ in range(n):
        p = rig.patient()
        with rig.db.sessions() as s, s.begin():
            grant = s.get(Grant, p.grant_id)
            assert grant is not None
            row = send_code(
                s, rig.keys, rig.ctx.outbox, grant, now=rig.clock(), ttl_min=ttl_min,
                sends_per_hour=5,
            )  # fmt: skip
            ids.append(row.id)
    return ids


def _states(rig: Rig, ids: list[int]) -> list[tuple[str, int]]:
    with rig.db.sessions() as s:
        rows = s.scalars(
            select(Notification).where(Notification.id.in_(ids)).order_by(Notification.id)
        )
        return [(r.state, r.attempts) for r in rows]


def test_the_sms_breaker_holds_alerts_once_and_resumes(rig: Rig) -> None:
    ids = _queue_codes(rig, 5, ttl_min=120)
    relay = _sms_relay(rig, SmsBreaker(2, rig.ctx.outbox, clock=rig.clock))
    asyncio.run(relay.run_once())
    assert len(rig.sms_texts()) == 2
    states = _states(rig, ids)
    assert states.count((NotificationState.SENT, 1)) == 2
    assert states.count((NotificationState.QUEUED, 0)) == 3  # held: not failed, no attempt
    # Later passes within the hour send no SMS and alert no more.
    rig.clock.advance(minutes=30)
    asyncio.run(relay.run_once())
    _queue_codes(rig, 1, ttl_min=120)
    asyncio.run(relay.run_once())
    assert len(rig.sms_texts()) == 2
    alerts = [m for m in rig.emails() if "SMS sending paused" in str(m["Subject"])]
    assert len(alerts) == 1 and alerts[0]["To"] == patient_rig.STAFF
    assert _queued(rig, "alert_sms_breaker") == 1
    # The hour passes: sending resumes (2 more this hour, the rest held again).
    rig.clock.advance(minutes=30, seconds=1)
    asyncio.run(relay.run_once())
    assert len(rig.sms_texts()) == 4
    assert _states(rig, ids).count((NotificationState.FAILED, 0)) == 0


def test_the_relay_refuses_a_number_outside_the_policy_for_good(rig: Rig) -> None:
    """Defence in depth: a number that reached the outbox anyway is never texted."""
    ids = _queue_codes(rig, 2)
    with rig.db.sessions() as s, s.begin():
        s.execute(update(Notification).where(Notification.id == ids[0]).values(recipient=PREMIUM))
        s.execute(
            update(Notification).where(Notification.id == ids[1]).values(recipient="+33612345678")
        )
    relay = _sms_relay(rig, None, PhonePolicy(frozenset({"GB", "GG"})))
    asyncio.run(relay.run_once())
    assert rig.sms_texts() == []
    with rig.db.sessions() as s:
        rows = list(s.scalars(select(Notification).where(Notification.id.in_(ids))))
    assert all(r.state == NotificationState.FAILED for r in rows)
    assert "premium-rate" in rows[0].last_error and "allowed_countries" in rows[1].last_error
    assert all("+33" not in r.last_error and "909" not in r.last_error for r in rows)
    assert _queued(rig, "alert_failed") == 2  # the patient's request failed: staff told


@pytest.mark.parametrize("how", ["voided", "locked"])
def test_the_patient_makes_a_new_code_for_a_clinician(rig: Rig, how: str) -> None:
    p = rig.patient()
    patient = rig.client()
    sign_in(rig, patient, p.token)
    r = post(patient, "/files/share", email="gp@clinic.example", show_code="1")
    found = re.search(r'id="share-code" dir="ltr">(\d{6})<', r.text)
    assert found is not None
    old = found.group(1)
    [child] = _shares(rig, p.grant_id)
    rig.relay()
    [mail] = [m for m in rig.emails() if m["To"] == "gp@clinic.example"]
    link = re.search(r"/d/([A-Za-z0-9_-]+)", mail.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert link is not None
    gp = rig.client()
    gp.get(f"/d/{link.group(1)}")
    form = gp.get("/access/verify")
    assert 'id="ask-patient"' in form.text  # the clinician learns whom to ask
    if how == "voided":
        wrong = "000000" if old != "000000" else "111111"
        for _ in range(rig.ctx.delivery.code_max_tries):
            assert post(gp, "/access/verify", code=wrong).status_code == 400
        assert post(gp, "/access/verify", code=old).status_code == 400  # voided
    else:
        with rig.db.sessions() as s, s.begin():
            s.execute(update(Grant).where(Grant.id == child.id).values(locked_at=rig.clock()))
    page = patient.get("/files")
    assert f'id="new-code-{child.id}"' in page.text
    r = post(patient, f"/files/share/{child.id}/code")
    assert r.status_code == 200 and "no longer works" in r.text
    found = re.search(r'id="share-code" dir="ltr">(\d{6})<', r.text)
    assert found is not None and found.group(1) != old
    assert found.group(1) not in patient.get("/files").text  # shown once
    assert post(gp, "/access/verify", code=old).status_code == 400
    gp.get(f"/d/{link.group(1)}")
    assert post(gp, "/access/verify", code=found.group(1)).status_code == 303
    assert gp.get("/files").status_code == 200
    reasons = [e.reason for e in rig.events(p.request_id)]
    assert any(f"new shown code for the share grant {child.id}" in r for r in reasons)
    # Only the patient who made the share can renew it, and never an SMS share.
    assert post(gp, f"/files/share/{child.id}/code").status_code == 404
    post(patient, "/files/share", email="gp2@clinic.example", mobile=CLINICIAN_MOBILE)
    sms_share = [g for g in _shares(rig, p.grant_id) if g.second_channel.startswith("sms:")]
    assert post(patient, f"/files/share/{sms_share[0].id}/code").status_code == 404


def test_sms_settings_validate_countries_and_the_breaker() -> None:
    from pydantic import ValidationError

    from delivery.channel_settings import SmsSettings

    assert SmsSettings(allowed_countries=["gb", " IE "]).allowed_countries == ["GB", "IE"]
    with pytest.raises(ValidationError, match="United Kingdom is GB"):
        SmsSettings(allowed_countries=["UK"])
    with pytest.raises(ValidationError):
        SmsSettings(max_per_hour=-1)


def test_a_request_to_a_country_outside_the_list_is_refused_by_the_api(rig: Rig) -> None:
    rig.ctx.phones = PhonePolicy(frozenset({"FR"}))
    key = new_api_key()
    app = create_app(rig.db.sessions, [hash_api_key(key)], clock=rig.clock, portal=rig.ctx)
    client = TestClient(app, base_url=patient_rig.BASE)
    auth = {"Authorization": f"Bearer {key}"}
    r = client.post("/api/v1/requests", json=draft_data(), headers=auth)  # a +44 mobile
    assert r.status_code == 422, r.text
    errors = {e["field"]: e["message"] for e in r.json()["errors"]}
    assert "sms.allowed_countries" in errors["second_channel"]
    assert counts(rig.db.sessions) == (0, 0, 0)
    r = client.post(
        "/api/v1/requests", json=draft_data(second_channel="sms:+33612345678"), headers=auth
    )
    assert r.status_code == 201, r.text


def test_a_request_to_a_country_outside_the_list_is_refused_by_the_cli(
    db: Database, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with config.open("a") as f:
        f.write("sms:\n  allowed_countries: [FR]\n")
    assert courier(config, *CREATE) != 0
    err = capsys.readouterr().err
    assert "second_channel: SMS go only to numbers of FR" in err
    assert counts(db.sessions) == (0, 0, 0)


def test_the_clinicians_send_my_code_is_capped_per_hour(rig: Rig) -> None:
    """The issue's five SMS to one number: still at most code_sends_per_hour a link."""
    p = rig.patient()
    patient = rig.client()
    sign_in(rig, patient, p.token)
    assert (
        post(
            patient, "/files/share", email="gp@clinic.example", mobile=CLINICIAN_MOBILE
        ).status_code
        == 303
    )
    rig.relay()
    [mail] = [m for m in rig.emails() if m["To"] == "gp@clinic.example"]
    link = re.search(r"/d/([A-Za-z0-9_-]+)", mail.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert link is not None
    gp = rig.client()
    gp.get(f"/d/{link.group(1)}")
    cap = rig.ctx.delivery.code_sends_per_hour
    statuses = [post(gp, "/access/code").status_code for _ in range(cap + 3)]
    assert statuses == [303] * cap + [429] * 3
    [child] = _shares(rig, p.grant_id)
    with rig.db.sessions() as s:
        sms = s.scalar(
            select(func.count())
            .select_from(Notification)
            .where(Notification.grant_id == child.id, Notification.kind == "code_sms")
        )
    assert sms == cap


def test_a_request_to_a_country_outside_the_list_is_refused_by_the_staff_form(
    db: Database, tmp_path: Path
) -> None:
    policy = PhonePolicy(frozenset({"FR"}))
    with contextmanager(test_staff.open_site)(db, tmp_path, phones=policy) as site:
        assert site.login().status_code == 303
        r = site.post("/staff/requests/new", test_staff.draft())  # a +44 mobile
        assert r.status_code == 422
        assert 'id="second-value-error-1"' in r.text and "sms.allowed_countries" in r.text
        assert test_staff.count(site, ReleaseRequest) == 0
        r = site.post("/staff/requests/new", test_staff.draft(second_value="+33612345678"))
        assert r.status_code == 303

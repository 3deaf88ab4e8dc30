"""Bad input on the patient pages: guessed, expired, revoked and locked links, scanners
fetching links, wrong and reused codes, floods, missing CSRF tokens, and logs."""

from __future__ import annotations

import json
import logging
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from httpx2 import Response
from sqlalchemy import select, update

from delivery.settings import DeliverySettings
from portal.http import SECURITY_HEADERS
from store.models import Grant, Notification, ReleaseRequest
from tests.conftest import Database
from tests.portal import patient_rig
from tests.portal.patient_rig import BuiltPackage, Rig, csrf_token, make_rig, post, sign_in
from tests.release.helpers import MOBILE

# The rig's fixtures, used by name.
rig = patient_rig.rig
built_package = patient_rig.built_package


def _shape(r: Response) -> tuple[object, ...]:
    """Status, headers (cookie values blanked) and body."""
    headers = []
    for k, v in r.headers.multi_items():
        if k.lower() == "set-cookie":
            v = re.sub(r"^([^=]+)=[^;]*", r"\1=…", v)
        headers.append((k.lower(), v))
    return r.status_code, sorted(headers), r.content


def _fetch(rig: Rig, token: str) -> tuple[tuple[object, ...], tuple[object, ...]]:
    c = rig.client()
    first = c.get(f"/d/{token}")
    return _shape(first), _shape(c.get("/access"))


def test_guessed_expired_revoked_and_locked_links_look_the_same(rig: Rig) -> None:
    dead = []
    for change in ("revoked_at", "locked_at", "expires_at"):
        p = rig.patient()
        with rig.db.sessions() as s, s.begin():
            value = rig.clock() - timedelta(seconds=1)
            s.execute(update(Grant).where(Grant.id == p.grant_id).values({change: value}))
        dead.append(p.token)
    cancelled = rig.patient()
    with rig.db.sessions() as s, s.begin():
        s.execute(
            update(ReleaseRequest)
            .where(ReleaseRequest.id == cancelled.request_id)
            .values(state="cancelled")
        )
    dead.append(cancelled.token)
    live = rig.patient()
    before = rig.counts()
    expected = _fetch(rig, secrets.token_urlsafe(32))
    assert expected[0][0] == 303 and expected[1][0] == 404
    for token in [secrets.token_urlsafe(32) for _ in range(1000)] + dead:
        assert _fetch(rig, token) == expected
    # Odd tokens get the same answer too.
    for token in ("x" * 500, "a%20b", "%C3%BC", "%00"):
        assert _fetch(rig, token) == expected
    assert _fetch(rig, live.token)[0] == expected[0]  # the link itself cannot tell
    assert _fetch(rig, live.token)[1][0] == 200
    # A code typed for any of them gets the one neutral page too, and counts nothing.
    typed = []
    for token in (secrets.token_urlsafe(32), *dead):
        c = rig.client()
        c.get(f"/d/{token}")
        csrf_token(c)
        typed.append(_shape(post(c, "/access/verify", code="123456")))
    assert typed[0][0] == 404 and all(shape == typed[0] for shape in typed)
    assert rig.counts() == before


def test_get_and_head_on_a_link_change_nothing_and_send_nothing(rig: Rig) -> None:
    p = rig.patient()
    before, state = rig.counts(), rig.grant_state(p.grant_id)
    c = rig.client()
    for _ in range(5):
        assert c.get(f"/d/{p.token}").status_code == 303
        assert c.head(f"/d/{p.token}").status_code == 303
        assert c.get("/access").status_code == 200
        assert c.get("/access/verify").status_code == 200
    assert rig.counts() == before and rig.grant_state(p.grant_id) == state
    assert rig.relay() == 0 and rig.sms_texts() == []


def test_the_sixth_try_finds_the_code_void(rig: Rig) -> None:
    p = rig.patient()
    c = rig.client()
    c.get(f"/d/{p.token}")
    post(c, "/access/code")
    code = rig.last_code()
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for _ in range(5):
        r = post(c, "/access/verify", code=wrong)
        assert r.status_code == 400 and "not right" in r.text
    assert rig.grant(p.grant_id).code_hash is None
    r = post(c, "/access/verify", code=code)  # the right code, too late
    assert r.status_code == 400
    assert c.get("/files").status_code == 401


def test_reused_expired_and_another_links_codes_are_refused(rig: Rig) -> None:
    a, b = rig.patient(), rig.patient()
    ca, cb = rig.client(), rig.client()
    ca.get(f"/d/{a.token}")
    cb.get(f"/d/{b.token}")
    post(ca, "/access/code")
    code_a = rig.last_code()
    post(cb, "/access/code")
    code_b = rig.last_code()
    assert post(ca, "/access/verify", code=code_b).status_code == 400
    assert post(ca, "/access/verify", code=code_a).status_code == 303
    # Reused (another browser with the same link and the same code).
    again = rig.client()
    again.get(f"/d/{a.token}")
    assert post(again, "/access/verify", code=code_a).status_code == 400
    # Expired: valid 10 minutes.
    rig.clock.advance(minutes=10, seconds=1)
    assert post(cb, "/access/verify", code=code_b).status_code == 400


def test_checks_of_one_code_at_once_use_it_once_and_lose_no_try(rig: Rig) -> None:
    p = rig.patient()
    clients = [rig.client() for _ in range(8)]
    for c in clients:
        c.get(f"/d/{p.token}")
        csrf_token(c)
    post(clients[0], "/access/code")
    code = rig.last_code()
    with ThreadPoolExecutor(len(clients)) as pool:
        answers = list(pool.map(lambda c: post(c, "/access/verify", code=code), clients))
    assert sorted(r.status_code for r in answers) == [303] + [400] * 7
    g = rig.grant(p.grant_id)
    assert g.code_hash is None and g.failures == 7 and g.code_tries == 7
    reasons = [e.reason for e in rig.events(p.request_id)]
    assert reasons.count("signed in with the right code (first opening)") == 1
    assert {f"wrong code (try {n}, {n} today)" for n in range(1, 8)} <= set(reasons)


def test_code_requests_over_the_hourly_limit_get_429_and_send_nothing(rig: Rig) -> None:
    p = rig.patient()
    c = rig.client()
    c.get(f"/d/{p.token}")
    for _ in range(rig.ctx.delivery.code_sends_per_hour):
        assert post(c, "/access/code").status_code == 303
    before, state = rig.counts(), rig.grant_state(p.grant_id)
    r = post(c, "/access/code")
    assert r.status_code == 429 and r.headers["retry-after"]
    assert rig.counts() == before and rig.grant_state(p.grant_id) == state
    rig.clock.advance(hours=1, seconds=1)
    assert post(c, "/access/code").status_code == 303


def test_posts_over_the_per_address_limit_get_429(
    db: Database, tmp_path: Path, built_package: BuiltPackage
) -> None:
    limited = make_rig(db, tmp_path, built_package, rate_limit_per_min=3)
    p = limited.patient()
    c = limited.client()
    c.get(f"/d/{p.token}")
    for _ in range(3):
        assert post(c, "/access/verify", code="000000").status_code == 400
    before = limited.counts()
    assert post(c, "/access/verify", code="000000").status_code == 429
    assert post(c, "/access/code").status_code == 429
    assert limited.counts() == before


LOCKS = [
    # (delivery.code_daily_failures_lock, None for the default; the wrong code that locks)
    (None, 20),
    (5, 5),
    (8, 8),
]


@pytest.mark.parametrize(("setting", "locking"), LOCKS)
def test_failures_in_a_day_lock_the_link_and_alert_staff(
    rig: Rig, setting: int | None, locking: int
) -> None:
    if setting is not None:
        values = {**rig.ctx.delivery.model_dump(), "code_daily_failures_lock": setting}
        rig.ctx.delivery = DeliverySettings.model_validate(values)
    p = rig.patient()
    c = rig.client()
    c.get(f"/d/{p.token}")
    for i in range(locking - 1):
        if i % 5 == 0:
            post(c, "/access/code")
            rig.clock.advance(minutes=21)  # stay under the hourly cap of codes
        assert post(c, "/access/verify", code="999999").status_code == 400
    assert rig.grant(p.grant_id).locked_at is None
    r = post(c, "/access/verify", code="999999")
    assert r.status_code == 404
    g = rig.grant(p.grant_id)
    assert g.locked_at is not None and g.failures == locking
    reasons = [e.reason for e in rig.events(p.request_id)]
    assert reasons[-2:] == [
        f"wrong code (try {(locking - 1) % 5 + 1}, {locking} today)",
        f"link locked after {locking} wrong codes in a day",
    ]
    with rig.db.sessions() as s:
        alerts = s.scalars(select(Notification).where(Notification.kind == "alert_locked")).all()
    assert len(alerts) == 1 and alerts[0].recipient == "pacs-team@hospital.example"
    assert c.get("/access").status_code == 404
    before = rig.counts()
    assert post(c, "/access/code").status_code == 404
    assert rig.counts() == before


def test_failures_from_yesterday_do_not_count_today(rig: Rig) -> None:
    p = rig.patient()
    c = rig.client()
    c.get(f"/d/{p.token}")
    for _ in range(15):
        post(c, "/access/verify", code="999999")
    rig.clock.advance(days=1, seconds=1)
    c.get(f"/d/{p.token}")  # the link cookie lasts an hour
    for _ in range(15):
        post(c, "/access/verify", code="999999")
    assert rig.grant(p.grant_id).locked_at is None


def test_forms_without_a_csrf_token_are_refused_and_change_nothing(rig: Rig) -> None:
    p = rig.patient()
    c = rig.client()
    sign_in(rig, c, p.token)
    c.get(f"/d/{p.token}")
    before, state = rig.counts(), rig.grant_state(p.grant_id)
    forms = {
        "/access/code": {},
        "/access/verify": {"code": "123456"},
        "/files/share": {"email": "gp@clinic.example", "show_code": "1"},
        "/files/share/1/revoke": {},
        "/signout": {},
    }
    for path, fields in forms.items():
        for token in (None, "wrong-token-of-good-length-xxxxxxxx"):
            data = dict(fields) if token is None else {**fields, "csrf": token}
            r = c.post(path, data=data)
            assert r.status_code == 403, path
        r = c.post(path, json={"csrf": csrf_token(c), **fields})  # not a form: refused
        assert r.status_code == 403, path
    assert rig.counts() == before and rig.grant_state(p.grant_id) == state
    assert c.get("/files").status_code == 200  # still signed in


def test_every_route_carries_the_security_headers(rig: Rig) -> None:
    p = rig.patient()
    c = rig.client()
    answers = [c.get(f"/d/{p.token}"), c.head(f"/d/{p.token}"), c.get("/access")]
    answers.append(post(c, "/access/code"))
    answers.append(c.get("/access/verify"))
    answers.append(post(c, "/access/verify", code="000000"))
    answers.append(c.post("/access/code"))  # 403
    sign_in(rig, c, p.token)
    answers += [c.get("/files"), c.get("/files/preview/0"), c.get("/files/preview/99")]
    part = rig.package.parts.split('"name": "')[1].split('"')[0]
    answers += [
        c.get(f"/files/package/{part}"),
        c.get(f"/files/package/{part}", headers={"Range": "bytes=0-99"}),
        c.get(f"/files/manifest/{part}"),
        c.get("/files/package/nope.zip"),
    ]
    answers.append(post(c, "/files/share", email="x"))
    answers.append(post(c, "/signout"))
    answers += [c.get("/files"), rig.client().get("/access")]
    for r in answers:
        for name, value in SECURITY_HEADERS:
            assert r.headers.get(name.decode()) == value.decode(), (r.request.url, name)
        assert r.headers["strict-transport-security"].startswith("max-age=")
    assert {r.status_code for r in answers} >= {200, 206, 303, 400, 401, 403, 404}


def test_idle_sessions_end(rig: Rig) -> None:
    p = rig.patient()
    c = rig.client()
    sign_in(rig, c, p.token)
    rig.clock.advance(minutes=29)
    assert c.get("/files").status_code == 200
    rig.clock.advance(minutes=29)  # idle time counts from the last request
    assert c.get("/files").status_code == 200
    rig.clock.advance(minutes=31)
    assert c.get("/files").status_code == 401


def test_no_secret_or_patient_data_in_any_log(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    p = rig.patient()
    c = rig.client()
    c.get(f"/d/{p.token}")
    post(c, "/access/code")
    code = rig.last_code()
    post(c, "/access/verify", code="000001")
    post(c, "/access/verify", code=code)
    part = rig.package.parts.split('"name": "')[1].split('"')[0]
    c.get("/files")
    c.get(f"/files/package/{part}")
    post(c, "/files/share", email="gp@clinic.example", mobile="+447911123457")
    rig.relay()
    gp_mail = next(m for m in rig.emails() if m["To"] == "gp@clinic.example")
    gp_token = re.search(r"/d/([A-Za-z0-9_-]+)", str(gp_mail.get_body(("plain",)).get_content()))  # type: ignore[union-attr]
    assert gp_token is not None
    gp = rig.client()
    sign_in(rig, gp, gp_token.group(1))
    rig.relay()
    # Every log record but the test client's own (httpx2 logs the URLs it fetches).
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))
    assert "courier.portal.access" in {r.name for r in caplog.records}
    assert re.search(r"GET /d/[0-9a-f]{8} 303", text)
    for secret in (
        p.token, gp_token.group(1), code, "Test^Patient", "MRN-000123", "patient@example.org",
        MOBILE, MOBILE[1:], "gp@clinic.example", "+447911123457", "19700131",
    ):  # fmt: skip
        assert secret not in text, secret


def test_code_checks_lockouts_and_downloads_are_audited(rig: Rig) -> None:
    from store.audit import events

    values = {**rig.ctx.delivery.model_dump(), "code_daily_failures_lock": 5}
    rig.ctx.delivery = DeliverySettings.model_validate(values)
    locked = rig.patient()
    c = rig.client()
    c.get(f"/d/{locked.token}")
    post(c, "/access/code")
    for _ in range(5):
        post(c, "/access/verify", code="999999")
    good = rig.patient()
    c2 = rig.client()
    sign_in(rig, c2, good.token)
    assert c2.get(f"/files/package/{json.loads(rig.package.parts)[0]['name']}").status_code == 200
    with rig.db.sessions() as s:
        got = [(e.kind, e.outcome, e.actor) for e in events(s)]
    who, ok = f"patient:grant-{locked.grant_id}", f"patient:grant-{good.grant_id}"
    assert got == [
        *[("login", 4, who)] * 4,
        ("security-alert", 8, who),
        ("login", 4, who),
        ("login", 0, ok),
        ("export", 0, ok),
    ]

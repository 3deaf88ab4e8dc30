"""The patient's journey through the real app, database and relay: link → code → files
→ download → share with a clinician → the clinician's journey → revoke."""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile

from sqlalchemy import select

from store.models import Grant, Notification, PortalSession, ReleaseRequest
from tests.portal import patient_rig
from tests.portal.patient_rig import Rig, csrf_token, post, sign_in

# The rig's fixtures, used by name.
rig = patient_rig.rig
built_package = patient_rig.built_package


def test_whole_journey_with_share_and_revoke(rig: Rig) -> None:
    p = rig.patient()
    patient = rig.client()
    r = patient.get(f"/d/{p.token}")
    assert r.status_code == 303 and r.headers["location"] == "/access"
    assert p.token not in r.headers["location"]
    page = patient.get("/access")
    assert page.status_code == 200
    assert 'id="send-code"' in page.text and "+44 •••• ••56" in page.text
    assert "7911123456" not in page.text
    r = post(patient, "/access/code")
    assert r.status_code == 303 and r.headers["location"] == "/access/verify"
    form = patient.get("/access/verify")
    assert 'id="code"' in form.text and 'autocomplete="one-time-code"' in form.text
    code = rig.last_code()
    r = post(patient, "/access/verify", code=code)
    assert r.status_code == 303
    session_cookie = r.headers.get_list("set-cookie")
    assert any(
        c.startswith("__Host-session=") and "Secure" in c and "HttpOnly" in c
        and "SameSite=strict" in c.replace("Strict", "strict") and "Path=/" in c
        for c in session_cookie
    )  # fmt: skip
    assert rig.grant(p.grant_id).first_opened_at == rig.clock()

    files = patient.get("/files")
    assert files.status_code == 200
    assert 'id="download-all"' in files.text and "CT CHEST" in files.text
    part = json.loads(rig.package.parts)[0]
    assert part["sha256"] in files.text
    assert re.search(r'src="/files/preview/0"', files.text)
    thumb = patient.get("/files/preview/0")
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"

    # The request stays notified until a download completes.
    with rig.db.sessions() as s:
        assert s.get(ReleaseRequest, p.request_id).state == "notified"  # type: ignore[union-attr]
    zipped = patient.get(f"/files/package/{part['name']}")
    assert zipped.status_code == 200 and zipped.headers["cache-control"] == "no-store"
    assert hashlib.sha256(zipped.content).hexdigest() == part["sha256"]
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(zipped.content)).read("MANIFEST.json"))
    assert manifest["format"] == "courier-package/1"
    with rig.db.sessions() as s:
        assert s.get(ReleaseRequest, p.request_id).state == "downloaded"  # type: ignore[union-attr]
    assert rig.grant(p.grant_id).downloads == 1

    # Share with a clinician by SMS.
    r = post(patient, "/files/share", email="dr.who@clinic.example", mobile="+447911123457")
    assert r.status_code == 303
    with rig.db.sessions() as s:
        child = s.scalars(select(Grant).where(Grant.parent_grant_id == p.grant_id)).one()
    assert child.purpose == "forward" and child.second_channel == "sms:+447911123457"
    rig.relay()
    [mail] = [m for m in rig.emails() if m["To"] == "dr.who@clinic.example"]
    body = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    link = re.search(r"https://testserver/d/([A-Za-z0-9_-]+)", body)
    assert link is not None and "Test" not in body and "MRN" not in body

    clinician = rig.client()
    sign_in(rig, clinician, link.group(1))
    cfiles = clinician.get("/files")
    assert cfiles.status_code == 200 and 'id="share-email"' not in cfiles.text
    rig.relay()
    used = [m for m in rig.emails() if m["To"] == "patient@example.org"]
    assert len(used) == 1 and "was opened" in str(used[0]["Subject"])

    listing = patient.get("/files")
    assert f'id="revoke-{child.id}"' in listing.text
    r = post(patient, f"/files/share/{child.id}/revoke")
    assert r.status_code == 303
    assert clinician.get("/files").status_code == 401
    assert rig.grant(child.id).revoked_at is not None

    r = post(patient, "/signout")
    assert r.status_code == 200
    assert patient.get("/files").status_code == 401
    with rig.db.sessions() as s:
        ended = s.scalars(select(PortalSession.ended_at)).all()
    assert any(e is not None for e in ended)

    reasons = [e.reason for e in rig.events(p.request_id)]
    for wanted in (
        "code sent (sms)",
        "signed in with the right code (first opening)",
        "downloaded",
        "shared with a clinician",
        "forwarded link used",
        "revoked the share",
    ):
        assert any(wanted in r for r in reasons), wanted
    actors = {e.actor for e in rig.events(p.request_id)}
    assert f"patient:grant-{p.grant_id}" in actors and f"clinician:grant-{child.id}" in actors


def test_share_with_a_shown_code(rig: Rig) -> None:
    p = rig.patient()
    patient = rig.client()
    sign_in(rig, patient, p.token)
    r = post(patient, "/files/share", email="gp@clinic.example", show_code="1")
    assert r.status_code == 200
    shown = re.search(r'id="share-code" dir="ltr">(\d{6})<', r.text)
    assert shown is not None
    code = shown.group(1)
    with rig.db.sessions() as s:
        child = s.scalars(select(Grant).where(Grant.parent_grant_id == p.grant_id)).one()
        queued = s.scalars(select(Notification.params).where(Notification.grant_id == child.id))
        assert all(code not in q for q in queued)
    assert child.code_salt is None and child.second_channel == "shown:"
    assert code not in (child.code_hash or "")
    # Shown once: the page does not show it again.
    assert code not in patient.get("/files").text
    rig.relay()
    [mail] = [m for m in rig.emails() if m["To"] == "gp@clinic.example"]
    token = re.search(r"/d/([A-Za-z0-9_-]+)", mail.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert token is not None
    gp = rig.client()
    gp.get(f"/d/{token.group(1)}")
    access = gp.get("/access")
    assert 'id="enter-code"' in access.text and 'id="send-code"' not in access.text
    assert post(gp, "/access/code").status_code == 303
    assert rig.counts()["notifications"] == 2  # link email + nothing sent for "shown"
    r = post(gp, "/access/verify", code=code)
    assert r.status_code == 303
    assert gp.get("/files").status_code == 200


def test_share_form_errors_keep_nothing(rig: Rig) -> None:
    p = rig.patient()
    patient = rig.client()
    sign_in(rig, patient, p.token)
    before = rig.counts()
    for fields, key in (
        ({"email": "not-an-address", "mobile": "+447911123457"}, "name@example.org"),
        ({"email": "gp@clinic.example"}, "choose to be shown a code"),
        ({"email": "gp@clinic.example", "mobile": "12"}, "country code"),
        ({"email": "gp@clinic.example", "mobile": "+447911123457", "show_code": "1"}, "Choose one"),
    ):
        r = post(patient, "/files/share", **fields)
        assert r.status_code == 400 and key in r.text, fields
    assert rig.counts() == before


def test_a_clinician_cannot_share_further(rig: Rig) -> None:
    p = rig.patient()
    patient = rig.client()
    sign_in(rig, patient, p.token)
    post(patient, "/files/share", email="gp@clinic.example", mobile="+447911123457")
    rig.relay()
    [mail] = [m for m in rig.emails() if m["To"] == "gp@clinic.example"]
    token = re.search(r"/d/([A-Za-z0-9_-]+)", mail.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert token is not None
    gp = rig.client()
    sign_in(rig, gp, token.group(1))
    r = post(gp, "/files/share", email="other@clinic.example", mobile="+447911123458")
    assert r.status_code == 403
    assert csrf_token(gp)


def test_language_from_the_grant_and_switchable(rig: Rig) -> None:
    p = rig.patient(language="ar")
    c = rig.client()
    c.get(f"/d/{p.token}")
    page = c.get("/access")
    assert '<html lang="ar" dir="rtl">' in page.text and "أرسل رمزي" in page.text
    page = c.get("/access?lang=zh-Hans")
    assert '<html lang="zh-Hans" dir="ltr">' in page.text and "发送我的验证码" in page.text
    page = c.get("/access")  # the choice sticks (cookie)
    assert '<html lang="zh-Hans"' in page.text

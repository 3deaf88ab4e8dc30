"""Issue 13 section 4: "who has looked at my images" on the patient's files page.

The real app over SQLite and PostgreSQL, the portal rig's package, an injected clock:
the access history lists sign-ins, wrong codes, downloads and image views of the
patient's link and of their shares, newest first, with the clinician's address masked;
a clinician sees none of it; an active share can be stopped from its rows; the patient
chooses per share to be emailed at every opening or only the first.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from store.audit import record as audit_event
from store.models import Grant, Notification, ReleaseRequest
from tests.conftest import Database
from tests.portal import patient_rig
from tests.portal.patient_rig import BuiltPackage, Patient, Rig, make_rig, post, sign_in

rig = patient_rig.rig
built_package = patient_rig.built_package

GP = "gp@clinic.example"
MASKED = "g•••@clinic.example"


@dataclass(frozen=True)
class Row:
    at: str
    who: str
    what: str
    revoke: str | None  # the revoke form's action, when the row has one


def history(page: str) -> list[Row]:
    """The entries of the page's access-history list, as shown."""
    assert 'id="history"' in page, "no access history on the page"
    listing = page.split('id="history"', 1)[1].split("</ol>", 1)[0]
    rows = []
    for item in re.findall(r"<li>(.*?)</li>", listing, re.S):
        at = re.search(r'datetime="([^"]+)"', item)
        who = re.search(r'<span class="who">(.*?)</span>:', item, re.S)
        what = re.search(r'<span class="what">(.*?)</span>', item, re.S)
        action = re.search(r'action="([^"]+)"', item)
        assert at and who and what, item
        text = [html.unescape(re.sub(r"<[^>]+>", "", m.group(1))).strip() for m in (who, what)]
        rows.append(Row(at.group(1), text[0], text[1], action and action.group(1)))
    return rows


def _share_with_shown_code(rig: Rig, patient: TestClient, email: str = GP) -> tuple[int, str]:
    """Share with ``email`` (a code shown to the patient): the share's id and code."""
    r = post(patient, "/files/share", email=email, show_code="1")
    assert r.status_code == 200
    shown = re.search(r'id="share-code" dir="ltr">(\d{6})<', r.text)
    assert shown is not None
    with rig.db.sessions() as s:
        child = s.scalar(
            select(Grant.id)
            .where(Grant.recipient_email == email, Grant.parent_grant_id.is_not(None))
            .order_by(Grant.id.desc())
        )
    assert child is not None
    return child, shown.group(1)


def _clinician(rig: Rig, share_id: int) -> TestClient:
    """A client holding the share's link cookie (read from its email)."""
    rig.relay()
    with rig.db.sessions() as s:
        grant = s.get(Grant, share_id)
        assert grant is not None
        token = rig.keys.token(grant)
    client = rig.client()
    assert client.get(f"/d/{token}").status_code == 303
    return client


def _share_used_emails(rig: Rig) -> int:
    with rig.db.sessions() as s:
        n = s.scalar(
            select(func.count())
            .select_from(Notification)
            .where(Notification.kind == "share_used_email")
        )
    return int(n or 0)


def _journey(rig: Rig) -> tuple[Patient, TestClient, TestClient, int]:
    """The patient signs in, shares, the clinician types a wrong code then the right
    one, and the patient downloads: each a minute apart."""
    p = rig.patient()
    patient = rig.client()
    sign_in(rig, patient, p.token)
    rig.clock.advance(minutes=1)
    share_id, code = _share_with_shown_code(rig, patient)
    gp = _clinician(rig, share_id)
    rig.clock.advance(minutes=1)
    assert (
        post(gp, "/access/verify", code="000000" if code != "000000" else "111111").status_code
        == 400
    )
    rig.clock.advance(minutes=1)
    assert post(gp, "/access/verify", code=code).status_code == 303
    rig.clock.advance(minutes=1)
    name = rig.package.parts.split('"name": "', 1)[1].split('"', 1)[0]
    r = patient.get(f"/files/package/{name}")
    assert r.status_code == 200
    return p, patient, gp, share_id


def test_the_history_lists_every_access_newest_first(rig: Rig) -> None:
    p, patient, _gp, share_id = _journey(rig)
    rig.clock.advance(minutes=1)
    with rig.db.sessions() as s, s.begin():  # the viewers' audited views, as they record them
        ref = s.scalar(select(ReleaseRequest.reference).where(ReleaseRequest.id == p.request_id))
        assert ref is not None
        audit_event(s, "export", actor=f"clinician:grant-{share_id}", request=ref,
                    detail="viewed study 1 in the portal viewer", at=rig.clock())  # fmt: skip
        rig.clock.advance(minutes=1)
        audit_event(s, "export", actor=f"clinician:grant-{share_id}", request=ref,
                    detail="DICOMweb retrieve (WADO-RS)", at=rig.clock())  # fmt: skip
        # Another request's events never show.
        audit_event(s, "login", actor=f"patient:grant-{p.grant_id + 1000}", request=ref,
                    detail="right code", at=rig.clock())  # fmt: skip
    page = patient.get("/files").text
    rows = history(page)
    assert [(r.who, r.what) for r in rows] == [
        (MASKED, "Opened in a viewer app"),
        (MASKED, "Images viewed"),
        ("You", "Downloaded"),
        (MASKED, "Opened with the code"),
        (MASKED, "Wrong code typed"),
        ("You", "Opened with the code"),
    ]
    assert [r.at for r in rows] == sorted((r.at for r in rows), reverse=True)
    assert rows[-1].at.startswith("2026-03-02T09:00") and rows[-1].at.endswith("+00:00")
    # The clinician's rows carry the stop button (the share is active); the patient's not.
    assert {r.revoke for r in rows if r.who == MASKED} == {f"/files/share/{share_id}/revoke"}
    assert {r.revoke for r in rows if r.who == "You"} == {None}
    listing = page.split('id="history"', 1)[1].split("</ol>", 1)[0]
    assert GP not in listing  # masked in the history


def test_a_clinician_sees_no_history(rig: Rig) -> None:
    _p, _patient, gp, _share_id = _journey(rig)
    page = gp.get("/files")
    assert page.status_code == 200
    for absent in ('id="history"', "Access history", 'id="more-time"', "/notify", "Emails when"):
        assert absent not in page.text
    # Nor can a clinician's session set a share's emails or ask for more time.
    assert post(gp, f"/files/share/{_share_id}/notify", notify="first").status_code == 403
    assert post(gp, "/files/extend").status_code == 403


def test_revoke_from_the_history(rig: Rig) -> None:
    _p, patient, gp, _share_id = _journey(rig)
    [action] = {r.revoke for r in history(patient.get("/files").text) if r.revoke}
    r = post(patient, action)
    assert r.status_code == 303 and r.headers["location"] == "/files?revoked=1"
    rows = history(patient.get("/files").text)
    assert all(r.revoke is None for r in rows)
    assert gp.get("/files").status_code == 401  # the clinician's session ended with it


def test_the_patient_chooses_emails_per_share(rig: Rig) -> None:
    p = rig.patient()
    patient = rig.client()
    sign_in(rig, patient, p.token)
    share_id, code = _share_with_shown_code(rig, patient)
    page = patient.get("/files").text
    assert f'id="notify-every-{share_id}" name="notify" value="every" checked' in page
    # Default: every opening is emailed.
    for _ in range(2):
        gp = _clinician(rig, share_id)
        assert post(gp, "/access/verify", code=code).status_code == 303
    assert _share_used_emails(rig) == 2
    # Only the first: later openings are not emailed (the first one was already).
    r = post(patient, f"/files/share/{share_id}/notify", notify="first")
    assert r.status_code == 200 and "Saved." in r.text
    assert f'id="notify-first-{share_id}" name="notify" value="first" checked' in r.text
    assert rig.grant(share_id).notify_every_access is False
    gp = _clinician(rig, share_id)
    assert post(gp, "/access/verify", code=code).status_code == 303
    assert _share_used_emails(rig) == 2
    assert any("patient emailed at the first opening only" in e.reason
               for e in rig.events(p.request_id))  # fmt: skip
    # Every again.
    assert post(patient, f"/files/share/{share_id}/notify", notify="every").status_code == 200
    gp = _clinician(rig, share_id)
    assert post(gp, "/access/verify", code=code).status_code == 303
    assert _share_used_emails(rig) == 3


def test_only_first_still_emails_the_first_opening(rig: Rig) -> None:
    p = rig.patient()
    patient = rig.client()
    sign_in(rig, patient, p.token)
    share_id, code = _share_with_shown_code(rig, patient)
    assert post(patient, f"/files/share/{share_id}/notify", notify="first").status_code == 200
    for _ in range(2):
        gp = _clinician(rig, share_id)
        assert post(gp, "/access/verify", code=code).status_code == 303
    assert _share_used_emails(rig) == 1


def test_notify_refuses_other_shares_bad_values_and_no_csrf(rig: Rig) -> None:
    p, q = rig.patient(), rig.patient()
    patient, other = rig.client(), rig.client()
    sign_in(rig, patient, p.token)
    sign_in(rig, other, q.token)
    share_id, _code = _share_with_shown_code(rig, patient)
    before = rig.counts()
    assert post(other, f"/files/share/{share_id}/notify", notify="first").status_code == 404
    assert post(patient, f"/files/share/{share_id}/notify", notify="never").status_code == 400
    r = patient.post(f"/files/share/{share_id}/notify", data={"notify": "first"})
    assert r.status_code == 403
    assert rig.counts() == before and rig.grant(share_id).notify_every_access is True


def test_notify_is_rate_limited_per_address(
    db: Database, tmp_path: Path, built_package: BuiltPackage
) -> None:
    small = make_rig(db, tmp_path, built_package, rate_limit_per_min=8)
    p = small.patient()
    patient = small.client()
    sign_in(small, patient, p.token)
    share_id, _code = _share_with_shown_code(small, patient)
    statuses = [
        post(patient, f"/files/share/{share_id}/notify", notify="first").status_code
        for _ in range(9)
    ]
    assert 429 in statuses and set(statuses) <= {200, 429}

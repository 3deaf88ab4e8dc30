"""Staff pages: sign-in, sessions, CSRF, the dashboard, requests and their actions.

Each test runs on SQLite and PostgreSQL (the ``db`` fixture), through FastAPI's
TestClient over ``https://`` (the ``__Host-`` cookies are Secure). Password hashing is
made cheap here; the real scrypt parameters are checked at the end of this file.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from delivery.grants import GrantKeys, new_grant
from delivery.outbox import Outbox
from delivery.settings import DeliverySettings
from portal import csrf, passwords
from portal.api import create_app
from portal.context import PortalContext
from portal.passwords import ScryptParams
from portal.ratelimit import RateLimiter
from portal.settings import PortalSettings
from portal.staff_auth import COOKIE
from release.requests import RequestBook
from release.validation import RequestDraft
from store.models import (
    Grant,
    Notification,
    NotificationState,
    Package,
    PortalSession,
    ReleaseRequest,
    RequestEvent,
    RequestState,
    StaffUser,
    Study,
)
from tests.conftest import Database

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PASSWORD = "correct horse battery"
RATE = 8


@dataclass
class Clock:
    now: datetime = START
    ticks: float = 1000.0  # the rate limiter's monotonic clock

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.ticks

    def advance(self, **delta: float) -> None:
        step = timedelta(**delta)
        self.now += step
        self.ticks += step.total_seconds()


@dataclass
class Site:
    client: TestClient
    db: Database
    clock: Clock
    ctx: PortalContext
    users: dict[str, int] = field(default_factory=dict)

    def csrf(self) -> str:
        token = self.client.cookies.get(csrf.COOKIE)
        if token is None:
            self.client.get("/staff/login")
            token = self.client.cookies.get(csrf.COOKIE)
        assert token
        return token

    def post(self, path: str, data: dict[str, Any] | None = None, **kw: Any) -> Any:
        body = {"csrf": self.csrf(), **(data or {})}
        return self.client.post(path, data=body, follow_redirects=False, **kw)

    def login(self, username: str = "alice", password: str = PASSWORD) -> Any:
        return self.post("/staff/login", {"username": username, "password": password})

    def add_user(self, username: str, password: str = PASSWORD, disabled: bool = False) -> int:
        with self.db.sessions() as s, s.begin():
            user = StaffUser(
                username=username,
                password_hash=passwords.hash_password(password),
                created_at=self.clock(),
                disabled_at=self.clock() if disabled else None,
                failed_logins=0,
            )
            s.add(user)
            s.flush()
            self.users[username] = user.id
            return user.id

    def scalar(self, q: Any) -> Any:
        with self.db.sessions() as s:
            return s.scalar(q)

    def events(self, reference: str) -> list[RequestEvent]:
        return RequestBook(self.db.sessions).timeline(reference)


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "PARAMS", ScryptParams(n=16, r=1, p=1))


def open_site(db: Database, tmp_path: Path, **context: Any) -> Iterator[Site]:
    """The staff pages over a fresh context (extra ``context`` fields, e.g. the PACS
    callables) with the user alice; not signed in."""
    clock = Clock()
    ctx = PortalContext(
        sessions=db.sessions,
        keys=GrantKeys(b"k" * 32),
        outbox=Outbox(clock=clock),
        delivery=DeliverySettings(),
        portal=PortalSettings(rate_limit_per_min=RATE, session_idle_min=30),
        package_dir=tmp_path / "packages",
        hospital="St Example",
        clock=clock,
        limiter=RateLimiter(clock=clock.monotonic),
        **context,
    )
    app = create_app(db.sessions, [], clock=clock, portal=ctx)
    with TestClient(app, base_url="https://testserver") as client:
        s = Site(client, db, clock, ctx)
        s.add_user("alice")
        yield s


@pytest.fixture
def site(db: Database, tmp_path: Path) -> Iterator[Site]:
    yield from open_site(db, tmp_path)


@pytest.fixture
def signed_in(site: Site) -> Site:
    assert site.login().status_code == 303
    return site


def draft(**over: Any) -> dict[str, Any]:
    """A valid new-request form."""
    base = {
        "patient_id": "SYN-1",
        "patient_name": "SYNTHETIC^PATIENT",
        "patient_birth_date": "19700131",
        "recipient_email": "patient@example.org",
        "second_kind": "sms",
        "second_value": "+447911123456",
        "backup_email": "",
        "accessions": "ACC1",
        "study_uids": "",
        "language": "en",
        "urgency": "overnight",
        "link_days": "30",
        "note": "",
        "form_key": "",
    }
    return {**base, **over}


def make_request(site: Site, state: RequestState = RequestState.PENDING) -> str:
    book = RequestBook(site.db.sessions, site.clock)
    req = book.create(
        RequestDraft(
            patient_id="SYN-1",
            patient_name="SYNTHETIC^PATIENT",
            patient_birth_date="19700131",
            recipient_email="patient@example.org",
            second_channel="sms:+447911123456",
            selection=[{"kind": "accession", "value": "ACC1"}],  # type: ignore[list-item]
            requested_by="test",
        ),
        "test",
    )
    path = {
        RequestState.PENDING: [],
        RequestState.OVERDUE: [RequestState.OVERDUE],
        RequestState.NOTIFIED: [RequestState.READY, RequestState.PACKAGING, RequestState.NOTIFIED],
        RequestState.FAILED: [RequestState.READY, RequestState.PACKAGING, RequestState.FAILED],
        RequestState.PACKAGING: [RequestState.READY, RequestState.PACKAGING],
    }[state]
    for target in path:
        book.transition(req.reference, target, "delivery", "test")
    return req.reference


def notified(site: Site) -> tuple[str, int]:
    """A notified request with a package and the patient's grant; returns (ref, grant id)."""
    ref = make_request(site, RequestState.NOTIFIED)
    with site.db.sessions() as s, s.begin():
        req = s.scalars(select(ReleaseRequest).where(ReleaseRequest.reference == ref)).one()
        pkg = Package(
            request_id=req.id,
            folder=ref,
            parts="[]",
            studies=1,
            instances=3,
            size_bytes=1000,
            built_at=site.clock(),
        )
        s.add(pkg)
        s.flush()
        grant = new_grant(s, site.ctx.keys, req, package_id=pkg.id, link_days=30, now=site.clock())
        return ref, grant.id


def grant_row(site: Site, grant_id: int) -> Grant:
    with site.db.sessions() as s:
        g = s.get(Grant, grant_id)
        assert g is not None
        s.expunge(g)
        return g


def count(site: Site, model: Any) -> int:
    return int(site.scalar(select(func.count()).select_from(model)) or 0)


def main_text(html: str) -> str:
    """The page's <main> without the per-browser CSRF token (to compare responses)."""
    main = html.split('<main id="main">', 1)[1].split("</main>", 1)[0]
    return re.sub(r'name="csrf" value="[^"]*"', "", main)


# -- sign-in ----------------------------------------------------------------------------


def test_the_login_form_is_labelled_and_sets_the_csrf_cookie(site: Site) -> None:
    page = site.client.get("/staff/login")
    assert page.status_code == 200
    for needle in ('<label for="username">', '<label for="password">', 'id="sign-in"'):
        assert needle in page.text
    assert "<script" not in page.text
    cookie = page.headers["set-cookie"]
    assert "__Host-csrf=" in cookie and "Secure" in cookie and "HttpOnly" in cookie


def test_right_password_signs_in_with_a_host_cookie(site: Site) -> None:
    r = site.login()
    assert (r.status_code, r.headers["location"]) == (303, "/staff")
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    for attr in ("Secure", "HttpOnly", "SameSite=strict", "Path=/"):
        assert attr.lower() in cookie.lower()
    assert "domain" not in cookie.lower()
    token = site.client.cookies.get(COOKIE)
    with site.db.sessions() as s:
        row = s.scalars(select(PortalSession)).one()
    assert row.kind == "staff" and row.staff_user_id == site.users["alice"]
    assert token and token not in row.token_hash and len(row.token_hash) == 64
    dashboard = site.client.get("/staff")
    assert dashboard.status_code == 200 and "What needs attention" in dashboard.text
    # Usernames are case-insensitive as typed.
    site.client.cookies.delete(COOKIE)
    assert site.login("  ALICE ").status_code == 303


@pytest.mark.parametrize("username", ["alice", "nobody", "ghost"])
def test_wrong_password_and_unknown_user_get_the_same_answer(site: Site, username: str) -> None:
    site.add_user("ghost", disabled=True)
    baseline = site.login("mallory", "not the password at all")
    r = site.login(username, "not the password at all")
    assert r.status_code == baseline.status_code == 200
    assert "Wrong username or password." in r.text
    # Same page but for the echoed username.
    assert main_text(r.text).replace(username, "X") == main_text(baseline.text).replace(
        "mallory", "X"
    )
    assert COOKIE not in r.headers.get("set-cookie", "")
    assert count(site, PortalSession) == 0
    failed = site.scalar(select(StaffUser.failed_logins).where(StaffUser.username == "alice"))
    assert failed == (1 if username == "alice" else 0)


def test_a_disabled_user_cannot_sign_in_even_with_the_right_password(site: Site) -> None:
    site.add_user("ghost", disabled=True)
    r = site.login("ghost")
    assert r.status_code == 200 and "Wrong username or password." in r.text
    assert count(site, PortalSession) == 0


def test_success_resets_the_failure_count(site: Site) -> None:
    site.login("alice", "wrong wrong wrong")
    site.login("alice", "wrong wrong wrong")
    assert site.scalar(select(StaffUser.failed_logins)) == 2
    assert site.login().status_code == 303
    assert site.scalar(select(StaffUser.failed_logins)) == 0


def test_sign_in_is_rate_limited_per_address(site: Site) -> None:
    for _ in range(RATE):  # an unknown name: alice's own delay (per account) stays out of it
        assert site.login("mallory", "wrong wrong wrong").status_code == 200
    r = site.login()  # even the right password, over the limit
    assert r.status_code == 429 and r.headers["retry-after"] == "60"
    assert count(site, PortalSession) == 0
    site.clock.advance(seconds=61)
    assert site.login().status_code == 303


@pytest.mark.parametrize(
    "path",
    ["/staff", "/staff/requests", "/staff/requests/new", "/staff/requests/CR-2222-2222-2"],
)
def test_every_page_needs_a_session(site: Site, path: str) -> None:
    r = site.client.get(path, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/staff/login")
    site.client.cookies.set(COOKIE, "x" * 43, domain="testserver")
    r = site.client.get(path, follow_redirects=False)
    assert r.status_code == 303


def test_idle_sessions_end(signed_in: Site) -> None:
    site = signed_in
    site.clock.advance(minutes=29)
    assert site.client.get("/staff").status_code == 200  # and refreshes last_seen
    site.clock.advance(minutes=29)
    assert site.client.get("/staff").status_code == 200
    site.clock.advance(minutes=30)
    r = site.client.get("/staff", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/staff/login")
    assert site.scalar(select(PortalSession.ended_at)) == site.clock()


def test_a_disabled_user_is_signed_out_at_once(signed_in: Site) -> None:
    with signed_in.db.sessions() as s, s.begin():
        s.get(StaffUser, signed_in.users["alice"]).disabled_at = START  # type: ignore[union-attr]
    assert signed_in.client.get("/staff", follow_redirects=False).status_code == 303


def test_sign_out_ends_the_session(signed_in: Site) -> None:
    site = signed_in
    token = site.client.cookies.get(COOKIE)
    r = site.post("/staff/logout")
    assert (r.status_code, r.headers["location"]) == (303, "/staff/login")
    assert site.scalar(select(PortalSession.ended_at)) is not None
    site.client.cookies.set(COOKIE, token or "", domain="testserver")  # replaying it fails
    assert site.client.get("/staff", follow_redirects=False).status_code == 303


# -- CSRF -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/staff/login",
        "/staff/logout",
        "/staff/requests/new",
        "/staff/requests/{ref}/resend",
        "/staff/requests/{ref}/revoke",
        "/staff/requests/{ref}/extend",
        "/staff/requests/{ref}/reissue",
        "/staff/requests/{ref}/cd",
        "/staff/requests/{ref}/cancel",
    ],
)
@pytest.mark.parametrize("token", [None, "", "forged-token-forged-token-forged"])
def test_posts_without_the_csrf_token_are_refused_and_change_nothing(
    signed_in: Site, path: str, token: str | None
) -> None:
    site = signed_in
    ref, grant_id = notified(site)
    data: dict[str, Any] = {**draft(), "username": "alice", "password": PASSWORD}
    data |= {"grant": str(grant_id), "days": "5", "reason": "x"}
    if token is not None:
        data["csrf"] = token
    before = (count(site, RequestEvent), count(site, Notification), count(site, PortalSession))
    r = site.client.post(path.format(ref=ref), data=data, follow_redirects=False)
    assert r.status_code == 403
    after = (count(site, RequestEvent), count(site, Notification), count(site, PortalSession))
    assert after == before and count(site, ReleaseRequest) == 1
    g = grant_row(site, grant_id)
    assert g.revoked_at is None and g.expires_at == START + timedelta(days=30)
    assert site.scalar(select(PortalSession.ended_at)) is None  # logout did not happen


def test_an_oversized_form_is_413_and_changes_nothing(signed_in: Site) -> None:
    site = signed_in
    r = site.post("/staff/requests/new", draft(note="x" * (64 * 1024)))
    assert r.status_code == 413 and "at most 65536 bytes" in r.text
    assert count(site, ReleaseRequest) == 0


def test_csrf_is_checked_before_the_session(site: Site) -> None:
    r = site.client.post("/staff/requests/new", data=draft(), follow_redirects=False)
    assert r.status_code == 403


# -- creating requests ------------------------------------------------------------------


def test_create_a_request_from_the_form(signed_in: Site) -> None:
    site = signed_in
    page = site.client.get("/staff/requests/new")
    assert page.status_code == 200
    key = re.search(r'name="form_key" value="([^"]+)"', page.text)
    assert key
    for label in ("patient-id", "patient-name", "birth-date", "email", "second-value"):
        assert f'<label for="{label}">' in page.text
    form = draft(form_key=key.group(1), study_uids="1.2.826.0.1.3680043.10.1\n", by_reference="on")
    r = site.post("/staff/requests/new", form)
    assert r.status_code == 303
    ref = r.headers["location"].split("/")[-1].split("?")[0]
    req = RequestBook(site.db.sessions).get(ref)
    assert req.requested_by == "alice" and req.second_channel == "sms:+447911123456"
    assert sorted((s.kind, s.value) for s in req.selections) == [
        ("accession", "ACC1"),
        ("reference", ref),
        ("study_uid", "1.2.826.0.1.3680043.10.1"),
    ]
    assert site.events(ref)[0].actor == "staff:alice"
    shown = site.client.get(r.headers["location"])
    assert "Request created." in shown.text and ref in shown.text
    # The same form posted again (a double click) stores nothing new.
    again = site.post("/staff/requests/new", form)
    assert again.status_code == 303 and count(site, ReleaseRequest) == 1


JUNK = "<script>alert(1)</script>'; DROP TABLE release_requests; --"
BIG = "x" * 10_000


@pytest.mark.parametrize(
    ("changes", "field_id"),
    [
        ({"recipient_email": "not-an-email"}, "email"),
        ({"recipient_email": "a@b@example.org"}, "email"),
        ({"second_value": "07911 123456"}, "second-value"),
        ({"second_value": "+44 7911 123456"}, "second-value"),
        ({"second_value": "+441632960000"}, "second-value"),  # a landline: no SMS
        ({"second_kind": "email", "second_value": "patient@example.org"}, "second-value"),
        ({"second_kind": "email", "second_value": "PATIENT@example.org"}, "second-value"),
        ({"patient_id": BIG}, "patient-id"),
        ({"patient_name": BIG}, "patient-name"),
        ({"note": BIG}, "note"),
        ({"recipient_email": BIG}, "email"),
        ({"patient_name": JUNK}, "patient-name"),
        ({"patient_id": JUNK}, "patient-id"),
        ({"accessions": JUNK}, "studies"),
        ({"patient_birth_date": "1970-01-31"}, "birth-date"),
        ({"link_days": "0"}, "link-days"),
        ({"link_days": "abc"}, "link-days"),
        ({"language": "xx"}, "language"),
        ({"accessions": ""}, "studies"),
        ({"study_uids": "1.2.abc"}, "studies"),
        ({"backup_email": "patient@example.org"}, "backup-email"),
    ],
)
def test_bad_input_is_shown_beside_its_field_and_nothing_is_written(
    signed_in: Site, changes: dict[str, str], field_id: str
) -> None:
    site = signed_in
    events_before = count(site, RequestEvent)
    r = site.post("/staff/requests/new", draft(**changes))
    assert r.status_code == 422
    assert count(site, ReleaseRequest) == 0 and count(site, RequestEvent) == events_before
    assert f'id="{field_id}-error-1"' in r.text, field_id
    assert 'aria-invalid="true"' in r.text and "Nothing was stored" in r.text
    assert "<script>alert" not in r.text  # echoed input is escaped
    # The rest of what was typed is kept.
    if "patient_name" not in changes:
        assert "SYNTHETIC^PATIENT" in r.text


def test_many_problems_at_once_each_have_their_place(signed_in: Site) -> None:
    r = signed_in.post(
        "/staff/requests/new",
        draft(patient_id="", recipient_email="nope", second_value="12", link_days="999"),
    )
    assert r.status_code == 422
    for field_id in ("patient-id", "email", "second-value", "link-days"):
        assert f'id="{field_id}-error-1"' in r.text


def add_study(site: Site, uid: str, patient_id: str = "SYN-1", **over: Any) -> None:
    with site.db.sessions() as s, s.begin():
        s.add(
            Study(
                study_uid=uid,
                patient_id=patient_id,
                patient_name="SYNTHETIC^PATIENT",
                patient_birth_date="19700131",
                accession_number=over.pop("accession", "A" + uid[-3:]),
                study_date=over.pop("study_date", "20260301"),
                study_description=over.pop("description", "CT CHEST"),
                modalities="CT",
                state=over.pop("state", "stable"),
                instance_count=12,
                size_bytes=1000,
                first_received_at=site.clock(),
                last_received_at=site.clock(),
            )
        )


def test_the_study_picker_lists_the_patients_received_studies(signed_in: Site) -> None:
    site = signed_in
    add_study(site, "1.2.826.0.1.3680043.10.101", description="CT CHEST")
    add_study(site, "1.2.826.0.1.3680043.10.102", description="MR KNEE", study_date="20250101")
    add_study(site, "1.2.826.0.1.3680043.10.103", description="PURGED ONE", state="purged")
    add_study(site, "1.2.826.0.1.3680043.10.104", patient_id="OTHER", description="NOT HERS")
    page = site.client.get("/staff/requests/new", params={"patient_id": "SYN-1"})
    assert page.status_code == 200
    assert "CT CHEST" in page.text and "MR KNEE" in page.text
    assert "PURGED ONE" not in page.text and "NOT HERS" not in page.text
    assert '<label for="study-1"' in page.text and '<label for="study-2"' in page.text
    assert page.text.index("CT CHEST") < page.text.index("MR KNEE")  # newest first
    # Name and birth date come from the studies, to be checked by staff.
    assert 'value="SYNTHETIC^PATIENT"' in page.text and 'value="19700131"' in page.text
    ticked = ["1.2.826.0.1.3680043.10.101", "1.2.826.0.1.3680043.10.102"]
    r = site.post("/staff/requests/new", {**draft(accessions=""), "study": ticked})
    assert r.status_code == 303, r.text
    ref = r.headers["location"].split("/")[-1].split("?")[0]
    req = RequestBook(site.db.sessions).get(ref)
    assert sorted(s.value for s in req.selections) == [
        "1.2.826.0.1.3680043.10.101",
        "1.2.826.0.1.3680043.10.102",
    ]
    # No study yet: the page says so and offers the typed selection.
    empty = site.client.get("/staff/requests/new", params={"patient_id": "NOBODY"})
    assert 'id="no-studies"' in empty.text


def test_ticked_studies_stay_ticked_when_the_form_comes_back(signed_in: Site) -> None:
    site = signed_in
    add_study(site, "1.2.826.0.1.3680043.10.101")
    data = {**draft(accessions="", recipient_email="bad"), "study": "1.2.826.0.1.3680043.10.101"}
    r = site.post("/staff/requests/new", data)
    assert r.status_code == 422
    assert re.search(r'value="1\.2\.826\.0\.1\.3680043\.10\.101" checked', r.text)


# -- list and dashboard -----------------------------------------------------------------


def test_list_and_filter_by_state(signed_in: Site) -> None:
    site = signed_in
    pending = make_request(site)
    overdue = make_request(site, RequestState.OVERDUE)
    everything = site.client.get("/staff/requests")
    assert pending in everything.text and overdue in everything.text
    only = site.client.get("/staff/requests", params={"state": "overdue"})
    assert overdue in only.text and pending not in only.text
    none = site.client.get("/staff/requests", params={"state": "cancelled"})
    assert 'id="no-requests"' in none.text
    bad = site.client.get("/staff/requests", params={"state": "<b>nope</b>"})
    assert bad.status_code == 422 and "Unknown state" in bad.text and "<b>nope" not in bad.text


def test_dashboard_shows_what_needs_attention(signed_in: Site) -> None:
    site = signed_in
    quiet = site.client.get("/staff")
    assert 'id="all-clear"' in quiet.text
    overdue = make_request(site, RequestState.OVERDUE)
    failed = make_request(site, RequestState.FAILED)
    stuck = make_request(site, RequestState.PACKAGING)
    locked_ref, grant_id = notified(site)
    with site.db.sessions() as s, s.begin():
        s.get(Grant, grant_id).locked_at = START  # type: ignore[union-attr]
        site.ctx.outbox.alert(s, "locked", reference=locked_ref, request_id=None)
    site.clock.advance(hours=2)
    assert site.login().status_code == 303  # the session idled out meanwhile
    page = site.client.get("/staff").text
    sections = {
        name: page.split(f'id="{name}"', 1)[1][:3000]
        for name in ("overdue", "failed", "locked", "stuck", "alerts")
    }
    assert overdue in sections["overdue"] and failed in sections["failed"]
    assert stuck in sections["stuck"] and locked_ref in sections["locked"]
    assert locked_ref in sections["alerts"] and "locked" in sections["alerts"]
    assert 'id="count-overdue">1<' in page and 'id="count-notified">1<' in page


# -- one request: timeline and actions --------------------------------------------------


def test_the_request_page_tells_the_story(signed_in: Site) -> None:
    site = signed_in
    ref, grant_id = notified(site)
    with site.db.sessions() as s, s.begin():
        g = s.get(Grant, grant_id)
        assert g is not None
        g.first_opened_at = START + timedelta(hours=1)
        row = site.ctx.outbox.enqueue(
            s,
            kind="link_email",
            channel="email",
            recipient="patient@example.org",
            request_id=g.request_id,
            grant_id=g.id,
        )
        row.state, row.sent_at = NotificationState.SENT, START
    page = site.client.get(f"/staff/requests/{ref.lower()}")
    assert page.status_code == 200
    timeline = page.text.split('id="timeline"', 1)[1].split("</table>", 1)[0]
    for text in ("created", "pending → ready", "packaging → notified", "delivery"):
        assert text in timeline
    milestones = page.text.split('id="milestones"', 1)[1].split("</ol>", 1)[0]
    assert re.search(r'class="reached"><span class="milestone">notified', milestones)
    assert re.search(r'class="reached"><span class="milestone">opened', milestones)
    assert re.search(r'class="not-yet"><span class="milestone">downloaded', milestones)
    grants = page.text.split('id="grants"', 1)[1].split("</table>", 1)[0]
    assert "p•••@example.org" in grants and "+44 •••• ••56" in grants and "active" in grants
    assert "patient@example.org" not in grants and "+447911123456" not in grants
    for action in ("resend", "extend", "revoke", "cd", "cancel"):
        assert f'id="action-{action}"' in page.text
    assert 'id="action-reissue"' not in page.text  # nothing is locked
    assert site.client.get("/staff/requests/CR-2222-2222-3").status_code == 404


def last_event(site: Site, ref: str) -> RequestEvent:
    return site.events(ref)[-1]


def test_resend_queues_the_link_email_and_is_audited(signed_in: Site) -> None:
    site = signed_in
    ref, grant_id = notified(site)
    r = site.post(f"/staff/requests/{ref}/resend")
    assert (r.status_code, r.headers["location"]) == (303, f"/staff/requests/{ref}?done=resend")
    with site.db.sessions() as s:
        rows = list(s.scalars(select(Notification)))
    assert [(n.kind, n.grant_id) for n in rows] == [("link_email", grant_id)]
    event = last_event(site, ref)
    assert (event.actor, event.from_state, event.to_state) == (
        "staff:alice",
        "notified",
        "notified",
    )
    assert "resent" in event.reason
    # Not before a link exists.
    pending = make_request(site)
    r = site.post(f"/staff/requests/{pending}/resend")
    assert r.status_code == 409 and "No link has been sent yet" in r.text
    assert last_event(site, pending).actor == "test"


def test_resend_refuses_a_link_that_is_not_active(signed_in: Site) -> None:
    site = signed_in
    ref, grant_id = notified(site)
    with site.db.sessions() as s, s.begin():
        g = s.get(Grant, grant_id)
        assert g is not None
        g.locked_at = START
    events = len(site.events(ref))
    r = site.post(f"/staff/requests/{ref}/resend")
    assert r.status_code == 409 and "link is not active" in r.text
    assert count(site, Notification) == 0 and len(site.events(ref)) == events


def test_revoke_stops_the_link_and_those_forwarded_from_it(signed_in: Site) -> None:
    site = signed_in
    ref, grant_id = notified(site)
    with site.db.sessions() as s, s.begin():
        req = s.scalars(select(ReleaseRequest)).one()
        child = new_grant(
            s, site.ctx.keys, req, package_id=None, link_days=5, now=START, purpose="clinician"
        )
        child.parent_grant_id = grant_id
        s.add(
            PortalSession(
                token_hash="a" * 64,
                kind="grant",
                grant_id=child.id,
                created_at=START,
                last_seen_at=START,
            )
        )
        child_id = child.id
    r = site.post(f"/staff/requests/{ref}/revoke", {"grant": str(grant_id)})
    assert r.status_code == 303
    assert grant_row(site, grant_id).revoked_at == START
    assert grant_row(site, child_id).revoked_at == START
    with site.db.sessions() as s:
        ended = s.scalars(select(PortalSession.ended_at).where(PortalSession.kind == "grant"))
        assert list(ended) == [START]
    event = last_event(site, ref)
    assert event.actor == "staff:alice" and "revoked" in event.reason
    again = site.post(f"/staff/requests/{ref}/revoke", {"grant": str(grant_id)})
    assert again.status_code == 409 and "already revoked" in again.text


def test_a_grant_of_another_request_cannot_be_touched(signed_in: Site) -> None:
    site = signed_in
    ref, _ = notified(site)
    _, other_grant = notified(site)
    for action in ("revoke", "extend", "reissue"):
        r = site.post(f"/staff/requests/{ref}/{action}", {"grant": str(other_grant), "days": "3"})
        assert r.status_code == 409, action
    assert grant_row(site, other_grant).revoked_at is None


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        ("7", timedelta(days=37)),
        ("365", timedelta(days=365)),
        ("0", None),
        ("x", None),
        ("366", None),
        ("-1", None),
    ],
)
def test_extend(signed_in: Site, days: str, expected: timedelta | None) -> None:
    site = signed_in
    ref, grant_id = notified(site)
    r = site.post(f"/staff/requests/{ref}/extend", {"grant": str(grant_id), "days": days})
    if expected is None:
        assert r.status_code == 409 and "number of days" in r.text
        assert grant_row(site, grant_id).expires_at == START + timedelta(days=30)
        return
    assert r.status_code == 303
    assert grant_row(site, grant_id).expires_at == START + expected
    event = last_event(site, ref)
    assert event.actor == "staff:alice" and f"extended by {days} days" in event.reason


def test_an_expired_link_is_extended_from_now(signed_in: Site) -> None:
    site = signed_in
    ref, grant_id = notified(site)
    site.clock.advance(days=40)
    assert site.login().status_code == 303  # the session idled out meanwhile
    assert (
        site.post(
            f"/staff/requests/{ref}/extend", {"grant": str(grant_id), "days": "3"}
        ).status_code
        == 303
    )
    assert grant_row(site, grant_id).expires_at == site.clock() + timedelta(days=3)


def test_a_locked_link_is_reissued_as_a_new_link(signed_in: Site) -> None:
    site = signed_in
    ref, grant_id = notified(site)
    with site.db.sessions() as s, s.begin():
        g = s.get(Grant, grant_id)
        assert g is not None
        g.locked_at, g.failures = START, 20
        old_hash, expiry = g.token_hash, g.expires_at
    page = site.client.get(f"/staff/requests/{ref}")
    assert 'id="action-reissue"' in page.text and 'id="reissue-grant"' in page.text
    assert "locked" in page.text.split('id="grants"', 1)[1]
    r = site.post(f"/staff/requests/{ref}/reissue", {"grant": str(grant_id)})
    assert r.status_code == 303
    with site.db.sessions() as s:
        grants = list(s.scalars(select(Grant).order_by(Grant.id)))
        mails = list(s.scalars(select(Notification)))
    old, new = grants
    assert old.revoked_at == START and new.revoked_at is None and new.locked_at is None
    assert new.token_hash != old_hash and new.expires_at == expiry and new.failures == 0
    assert new.package_id == old.package_id and new.purpose == "patient"
    assert [(m.kind, m.grant_id, m.recipient) for m in mails] == [
        ("link_email", new.id, "patient@example.org")
    ]
    event = last_event(site, ref)
    assert event.actor == "staff:alice" and f"re-issued as link #{new.id}" in event.reason
    # An active link is not re-issued.
    r = site.post(f"/staff/requests/{ref}/reissue", {"grant": str(new.id)})
    assert r.status_code == 409


def test_mark_for_cd_once(signed_in: Site) -> None:
    site = signed_in
    ref = make_request(site, RequestState.OVERDUE)
    r = site.post(f"/staff/requests/{ref}/cd")
    assert r.status_code == 303
    event = last_event(site, ref)
    assert (event.actor, event.reason, event.to_state) == (
        "staff:alice",
        "marked for CD",
        "overdue",
    )
    page = site.client.get(f"/staff/requests/{ref}")
    assert 'id="cd-marked"' in page.text and 'id="action-cd"' not in page.text
    assert site.post(f"/staff/requests/{ref}/cd").status_code == 409


def test_cancel_revokes_links_and_records_the_reason(signed_in: Site) -> None:
    site = signed_in
    ref, grant_id = notified(site)
    r = site.post(f"/staff/requests/{ref}/cancel", {"reason": "wrong  patient\nchosen"})
    assert r.status_code == 303
    event = last_event(site, ref)
    assert (event.actor, event.from_state, event.to_state, event.reason) == (
        "staff:alice",
        "notified",
        "cancelled",
        "wrong patient chosen",
    )
    assert grant_row(site, grant_id).revoked_at == START
    page = site.client.get(f"/staff/requests/{ref}")
    assert "Nothing can be changed on this request." in page.text
    again = site.post(f"/staff/requests/{ref}/cancel")
    assert again.status_code == 409
    assert site.post("/staff/requests/CR-2222-2222-3/cancel").status_code == 404


def test_logs_name_references_and_users_only(
    signed_in: Site, caplog: pytest.LogCaptureFixture
) -> None:
    site = signed_in
    caplog.set_level(logging.DEBUG)
    ref, grant_id = notified(site)
    site.post("/staff/requests/new", draft(form_key="k1"))
    site.post(f"/staff/requests/{ref}/extend", {"grant": str(grant_id), "days": "2"})
    site.post(f"/staff/requests/{ref}/revoke", {"grant": str(grant_id)})
    site.login("alice", "wrong wrong wrong")
    site.login("nobody", PASSWORD)
    text = caplog.text
    assert ref in text and "staff alice" in text
    for secret in (
        "SYN-1",
        "SYNTHETIC",
        "patient@example.org",
        "+447911123456",
        PASSWORD,
        "wrong wrong",
        "nobody",
    ):
        assert secret not in text, secret
    assert site.client.cookies.get(COOKIE) not in text


# -- passwords --------------------------------------------------------------------------


def test_password_hashes_use_the_documented_scrypt_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(passwords, "PARAMS", ScryptParams())
    stored = passwords.hash_password(PASSWORD)
    assert stored.startswith("scrypt$n=32768,r=8,p=3$") and PASSWORD not in stored
    assert passwords.verify(PASSWORD, stored) and not passwords.verify(PASSWORD + "x", stored)
    assert stored != passwords.hash_password(PASSWORD)  # salted
    assert not passwords.needs_rehash(stored)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "scrypt$n=16,r=1,p=1$AAAA",
        "bcrypt$n=16,r=1,p=1$AAAA$AAAA",
        "scrypt$n=17,r=1,p=1$AAAA$AAAA",
        "scrypt$n=1073741824,r=8,p=1$AAAA$AAAA",
        "scrypt$n=16,r=1,p=1$!!$AAAA",
    ],
)
def test_a_malformed_or_hostile_stored_hash_never_matches(stored: str) -> None:
    assert passwords.verify(PASSWORD, stored) is False
    assert passwords.verify_or_dummy(PASSWORD, stored) is False


@pytest.mark.parametrize("bad", ["short", "x" * 1025, "newline\nin the middle"])
def test_unusable_passwords_are_refused(bad: str) -> None:
    with pytest.raises(passwords.PasswordError):
        passwords.hash_password(bad)


def test_an_unknown_user_costs_a_real_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = passwords._derive

    def counting(password: str, salt: bytes, params: ScryptParams) -> bytes:
        calls.append(params.n)
        return real(password, salt, params)

    passwords.verify_or_dummy(PASSWORD, None)  # the dummy is made once, outside the count
    monkeypatch.setattr(passwords, "_derive", counting)
    stored = passwords.hash_password(PASSWORD)
    calls.clear()
    assert passwords.verify_or_dummy("guess guess guess", stored) is False
    assert passwords.verify_or_dummy("guess guess guess", None) is False
    assert passwords.verify_or_dummy("x" * 5000, stored) is False
    assert calls == [passwords.PARAMS.n] * 3
    assert json.dumps(calls)  # plain ints


def test_an_empty_field_says_required(signed_in: Site) -> None:
    r = signed_in.post("/staff/requests/new", draft(second_value="", recipient_email=""))
    assert r.status_code == 422
    for field_id in ("second-value", "email"):
        assert f'<p class="error" id="{field_id}-error-1">required</p>' in r.text


def test_sign_in_and_out_are_audited(site: Site) -> None:
    from store.audit import events

    site.login("alice", "wrong wrong wrong")
    site.login("nobody-here", "wrong wrong wrong")
    assert site.login().status_code == 303
    site.post("/staff/logout")
    with site.db.sessions() as s:
        got = [(e.kind, e.outcome, e.actor, e.detail) for e in events(s)]
    assert got == [
        ("login", 4, "staff:alice", "staff sign-in refused"),
        ("login", 4, "staff:unknown", "staff sign-in refused"),
        ("login", 0, "staff:alice", "staff signed in"),
        ("logout", 0, "staff:alice", "staff signed out"),
    ]

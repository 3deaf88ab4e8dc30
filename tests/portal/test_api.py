"""The REST API over SQLite and PostgreSQL: what it creates, refuses and shows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import sessionmaker

from delivery.grants import GrantKeys, new_grant
from portal.api import create_app
from portal.apikeys import hash_api_key, new_api_key
from portal.http import SECURITY_HEADERS
from release.requests import RequestBook
from store.models import (
    Notification,
    ReleaseRequest,
    RequestEvent,
    RequestState,
    Study,
    StudyState,
)
from tests.portal.conftest import NOW, Api
from tests.release.helpers import counts, draft_data

URL = "/api/v1/requests"


def errors_of(body: dict[str, Any]) -> dict[str, str]:
    return {e["field"]: e["message"] for e in body["errors"]}


def create(api: Api, **overrides: Any) -> dict[str, Any]:
    r = api.client.post(URL, json=draft_data(**overrides), headers=api.auth)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def test_create_records_the_request_and_who_made_it(api: Api) -> None:
    body = create(api)
    assert body["created"] is True and body["state"] == "pending"
    assert body["reference"].startswith("CR-")
    assert body["selection"] == [
        {"kind": "accession", "value": "ACC0001", "expected_instances": None}
    ]
    with api.db.sessions() as s:
        actors = s.scalars(select(RequestEvent.actor)).all()
    assert actors == [f"api:{hash_api_key(api.key)[:8]}"]


def test_the_same_idempotency_key_returns_the_existing_request(api: Api) -> None:
    first = create(api, idempotency_key="ris-42")
    again = api.client.post(URL, json=draft_data(idempotency_key="ris-42"), headers=api.auth)
    assert again.status_code == 200
    assert again.json()["reference"] == first["reference"] and again.json()["created"] is False
    assert counts(api.db.sessions) == (1, 1, 1)


def test_the_same_key_for_other_content_is_a_conflict(api: Api) -> None:
    create(api, idempotency_key="ris-42")
    r = api.client.post(
        URL, json=draft_data(idempotency_key="ris-42", note="other"), headers=api.auth
    )
    assert r.status_code == 409
    assert "different content" in r.json()["detail"]
    assert counts(api.db.sessions) == (1, 1, 1)


@pytest.mark.parametrize(
    ("overrides", "field", "says"),
    [
        ({"recipient_email": "not-an-address"}, "recipient_email", "e-mail"),
        ({"second_channel": "sms:07911123456"}, "second_channel", "E.164"),
        ({"second_channel": "sms:+4479"}, "second_channel", "number"),
        ({"second_channel": "email:patient@example.org"}, "second_channel", "must differ"),
        ({"patient_name": "<script>alert(1)</script>"}, "patient_name", "not allowed"),
        ({"patient_id": "1'; DROP TABLE x;--"}, "patient_id", "not allowed"),
        ({"note": "x" * 10_240}, "note", "at most"),
        ({"patient_name": "A" * 10_240}, "patient_name", "at most"),
        ({"selection": [{"kind": "mrn", "value": "1"}]}, "selection.0.kind", "accession"),
        ({"shoe_size": 42}, "shoe_size", "unknown field"),
    ],
)
def test_bad_fields_are_named_and_nothing_is_written(
    api: Api, overrides: dict[str, Any], field: str, says: str
) -> None:
    r = api.client.post(URL, json=draft_data(**overrides), headers=api.auth)
    assert r.status_code == 422, r.text
    errors = errors_of(r.json())
    assert field in errors, errors
    assert says in errors[field]
    assert counts(api.db.sessions) == (0, 0, 0)


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b'{"patient_id": ', "application/json", 422),
        (b"\xff\xfe", "application/json", 422),
        (b"[]", "application/json", 422),
        (b"", "application/json", 422),
        (b'{"patient_id": "1"}', "application/json; charset=utf-8", 422),
        (b"patient_id=1", "application/x-www-form-urlencoded", 415),
        (b'{"patient_id": "1"}', "text/plain", 415),
        (b'{"patient_id": "1"}', "", 415),
    ],
)
def test_malformed_or_mistyped_bodies_are_refused(
    api: Api, content: bytes, content_type: str, status: int
) -> None:
    headers = {**api.auth, "Content-Type": content_type}
    r = api.client.post(URL, content=content, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["errors" if status == 422 else "detail"]
    assert counts(api.db.sessions) == (0, 0, 0)


def test_an_anonymous_caller_learns_nothing_from_a_bad_body(api: Api) -> None:
    """The key is checked before the body is parsed: no validation errors leak."""
    for headers in ({}, {"X-API-Key": "ck_no"}):
        r = api.client.post(
            URL, content=b'{"patient_id": ', headers={**headers, "Content-Type": "text/plain"}
        )
        assert r.status_code in (401, 403) and "errors" not in r.json()


def test_an_oversized_body_is_refused_with_or_without_a_length(api: Api) -> None:
    headers = {**api.auth, "Content-Type": "application/json"}
    r = api.client.post(URL, content=b" " * 300_000, headers=headers)
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for _ in range(40):
            yield b" " * 10_000

    r = api.client.post(URL, content=chunks(), headers=headers)
    assert r.status_code == 413, r.text
    assert counts(api.db.sessions) == (0, 0, 0)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", URL),
        ("GET", URL),
        ("GET", f"{URL}/CR-7KQ4-M2XD-9"),
        ("POST", f"{URL}/CR-7KQ4-M2XD-9/cancel"),
        ("POST", f"{URL}/CR-7KQ4-M2XD-9/resend"),
        ("GET", "/api/v1/studies"),
    ],
)
def test_every_route_needs_a_known_key(api: Api, method: str, path: str) -> None:
    missing = api.client.request(method, path, json=draft_data())
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = api.client.request(method, path, json=draft_data(), headers={"X-API-Key": "ck_no"})
    assert wrong.status_code == 403
    bearer = api.client.request(
        method, path, json=draft_data(), headers={"Authorization": "Bearer ck_no"}
    )
    assert bearer.status_code == 403
    assert counts(api.db.sessions) == (0, 0, 0)


def test_the_x_api_key_header_works_too(api: Api) -> None:
    r = api.client.get(URL, headers={"X-API-Key": api.key})
    assert r.status_code == 200 and r.json() == []


def test_list_filters_by_state_and_is_bounded(api: Api) -> None:
    a = create(api, selection=[{"kind": "accession", "value": "A1"}])
    b = create(api, selection=[{"kind": "accession", "value": "A2"}])
    api.client.post(f"{URL}/{a['reference']}/cancel", json={"reason": "dup"}, headers=api.auth)
    listed = api.client.get(URL, headers=api.auth).json()
    assert {r["reference"] for r in listed} == {a["reference"], b["reference"]}
    pending = api.client.get(URL, params={"state": "pending"}, headers=api.auth).json()
    assert [r["reference"] for r in pending] == [b["reference"]]
    assert len(api.client.get(URL, params={"limit": 1}, headers=api.auth).json()) == 1
    for bad in ({"limit": 0}, {"limit": 501}, {"limit": "many"}, {"state": "lost"}):
        r = api.client.get(URL, params=bad, headers=api.auth)
        assert r.status_code == 422
        assert set(errors_of(r.json())) <= {"limit", "state"}


def test_get_shows_selection_and_timeline_and_cancel_is_recorded(api: Api) -> None:
    ref = create(api)["reference"]
    r = api.client.post(
        f"{URL}/{ref.lower()}/cancel", json={"reason": "wrong patient"}, headers=api.auth
    )
    assert r.status_code == 200
    assert r.json()["state"] == "cancelled"
    assert r.json()["event"]["reason"] == "wrong patient"
    shown = api.client.get(f"{URL}/{ref}", headers=api.auth).json()
    assert shown["selection"][0]["value"] == "ACC0001"
    assert [(e["from"], e["to"]) for e in shown["timeline"]] == [
        ("", "pending"),
        ("pending", "cancelled"),
    ]
    again = api.client.post(f"{URL}/{ref}/cancel", json={"reason": "again"}, headers=api.auth)
    assert again.status_code == 409
    junk = api.client.post(f"{URL}/{ref}/cancel", json={"reason": "x", "y": 1}, headers=api.auth)
    assert junk.status_code == 422


@pytest.mark.parametrize("reason", ["x" * 10_240, "bell\x07", 42])
def test_a_bad_cancel_reason_is_a_field_error_and_changes_nothing(api: Api, reason: Any) -> None:
    ref = create(api)["reference"]
    r = api.client.post(f"{URL}/{ref}/cancel", json={"reason": reason}, headers=api.auth)
    assert r.status_code == 422
    assert list(errors_of(r.json())) == ["reason"]
    assert api.client.get(f"{URL}/{ref}", headers=api.auth).json()["state"] == "pending"


@pytest.mark.parametrize("ref", ["CR-7KQ4-M2XD-9", "CR-0000", "999999", "<b>", "x" * 64])
def test_an_unknown_reference_is_404(api: Api, ref: str) -> None:
    assert api.client.get(f"{URL}/{ref}", headers=api.auth).status_code == 404
    for action in ("cancel", "resend"):
        r = api.client.post(f"{URL}/{ref}/{action}", json={}, headers=api.auth)
        assert r.status_code == 404, action


S = RequestState
TO = {  # how a new (pending) request reaches each state
    S.PENDING: [],
    S.NOTIFIED: [S.READY, S.PACKAGING, S.NOTIFIED],
    S.DOWNLOADED: [S.READY, S.PACKAGING, S.NOTIFIED, S.DOWNLOADED],
    S.FAILED: [S.READY, S.PACKAGING, S.FAILED],
    S.CANCELLED: [S.CANCELLED],
}


def with_link(api: Api, state: RequestState, link: str | None) -> tuple[str, int | None]:
    """A request in ``state`` whose patient link (if any) is ``link``: (reference, grant id)."""
    ref = create(api)["reference"]
    book = RequestBook(api.db.sessions, lambda: NOW)
    for target in TO[state]:
        book.transition(ref, target, "delivery", "test")
    if link is None:
        return ref, None
    with api.db.sessions() as s, s.begin():
        req = s.scalars(select(ReleaseRequest).where(ReleaseRequest.reference == ref)).one()
        grant = new_grant(s, GrantKeys(b"k" * 32), req, package_id=None, link_days=30, now=NOW)
        if link == "locked":
            grant.locked_at = NOW
        elif link == "revoked":
            grant.revoked_at = NOW
        elif link == "expired":
            grant.expires_at = NOW - timedelta(seconds=1)
        return ref, grant.id


@pytest.mark.parametrize(
    ("state", "link", "status", "says"),
    [
        (S.NOTIFIED, "active", 200, ""),
        (S.DOWNLOADED, "active", 200, ""),
        (S.FAILED, "active", 200, ""),
        (S.NOTIFIED, "locked", 409, "no active link"),
        (S.NOTIFIED, "revoked", 409, "no active link"),
        (S.NOTIFIED, "expired", 409, "no active link"),
        (S.NOTIFIED, None, 409, "no active link"),
        (S.PENDING, None, 409, "no link has been sent yet"),
        (S.CANCELLED, None, 409, "nothing to resend"),
    ],
)
def test_resend_queues_the_link_email_again_or_says_why_not(
    api: Api, state: RequestState, link: str | None, status: int, says: str
) -> None:
    ref, grant_id = with_link(api, state, link)
    before = len(RequestBook(api.db.sessions).timeline(ref))
    r = api.client.post(
        f"{URL}/{ref.lower()}/resend", json={"reason": "lost the email"}, headers=api.auth
    )
    assert r.status_code == status, r.text
    timeline = RequestBook(api.db.sessions).timeline(ref)
    with api.db.sessions() as s:
        queued = [(n.kind, n.grant_id, n.recipient) for n in s.scalars(select(Notification))]
    if status != 200:
        assert says in r.json()["detail"]
        assert queued == [] and len(timeline) == before
        return
    body = r.json()
    assert body["state"] == str(state) and body["event"]["reason"] == "lost the email"
    assert queued == [("link_email", grant_id, "patient@example.org")]
    event = timeline[-1]
    assert len(timeline) == before + 1
    assert (event.actor, event.from_state, event.to_state) == (
        f"api:{hash_api_key(api.key)[:8]}",
        str(state),
        str(state),
    )


def test_a_bad_resend_body_is_a_field_error(api: Api) -> None:
    ref, _ = with_link(api, S.NOTIFIED, "active")
    for body, field in (({"reason": "x" * 10_240}, "reason"), ({"y": 1}, "y")):
        r = api.client.post(f"{URL}/{ref}/resend", json=body, headers=api.auth)
        assert r.status_code == 422 and list(errors_of(r.json())) == [field]
    with api.db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Notification)) == 0


def test_studies_newest_first_and_by_state(api: Api) -> None:
    with api.db.sessions() as s, s.begin():
        for i, state in enumerate([StudyState.STABLE, StudyState.RECEIVING]):
            s.add(
                Study(
                    study_uid=f"1.2.3.{i}",
                    accession_number=f"ACC{i}",
                    state=state,
                    first_received_at=NOW.replace(hour=9 + i),
                    last_received_at=NOW.replace(hour=9 + i),
                )
            )
    rows = api.client.get("/api/v1/studies", headers=api.auth).json()
    assert [r["study_uid"] for r in rows] == ["1.2.3.1", "1.2.3.0"]
    stable = api.client.get("/api/v1/studies?state=stable&limit=5", headers=api.auth).json()
    assert [r["study_uid"] for r in stable] == ["1.2.3.0"]
    assert api.client.get("/api/v1/studies?limit=0", headers=api.auth).status_code == 422


def test_security_headers_on_every_response(api: Api) -> None:
    ref = create(api)["reference"]
    responses = [
        api.client.get(URL, headers=api.auth),
        api.client.get(f"{URL}/{ref}", headers=api.auth),
        api.client.get(f"{URL}/nope", headers=api.auth),
        api.client.post(f"{URL}/{ref}/resend", json={}, headers=api.auth),
        api.client.post(f"{URL}/{ref}/cancel", json={}, headers=api.auth),
        api.client.post(URL, json={}, headers=api.auth),
        api.client.get("/api/v1/studies", headers=api.auth),
        api.client.get("/api/v1/studies"),
        api.client.get("/api/openapi.json"),
        api.client.get("/no/such/page"),
    ]
    for r in responses:
        for name, value in SECURITY_HEADERS:
            assert r.headers[name.decode()] == value.decode(), (r.url, name)


def test_a_database_outage_is_503_with_a_clear_message(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'index.db'}")
    key = new_api_key()
    app = create_app(sessionmaker(engine), [hash_api_key(key)])
    with TestClient(app) as client:
        for method, path in [("GET", URL), ("GET", "/api/v1/studies"), ("POST", URL)]:
            r = client.request(
                method, path, json=draft_data(), headers={"Authorization": f"Bearer {key}"}
            )
            assert r.status_code == 503
            assert "database is unavailable" in r.json()["detail"]
            assert r.headers["Cache-Control"] == "no-store"
    engine.dispose()

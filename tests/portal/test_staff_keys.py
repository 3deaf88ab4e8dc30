"""The staff Keys page (portal.staff_keys): administrators (portal.staff_admins) make a
key, shown once, that the API accepts at once, and revoke it, refused at once; other
staff get 403; every form is CSRF-checked and works without JavaScript. On SQLite and
PostgreSQL, through the staff site rig of ``test_staff``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from portal.apikeys import hash_api_key
from portal.settings import PortalSettings
from store.models import ApiKey, AuditEvent
from tests.conftest import Database
from tests.portal.test_staff import RATE, Site, cheap_hashes, open_site

__all__ = ["cheap_hashes"]  # the rig's autouse fixture: cheap password hashes here too


@pytest.fixture
def admin(db: Database, tmp_path: Path) -> Iterator[Site]:
    for site in open_site(db, tmp_path):
        site.ctx.portal = PortalSettings(
            rate_limit_per_min=RATE, session_idle_min=30, staff_admins=["Alice"]
        )
        site.add_user("bob")
        assert site.login().status_code == 303
        yield site


def _api(site: Site, key: str) -> int:
    return site.client.get("/api/v1/studies", headers={"X-API-Key": key}).status_code


def test_an_admin_makes_a_key_shown_once_that_works_at_once_then_revokes_it(
    admin: Site,
) -> None:
    made = admin.post("/staff/keys", {"label": "RIS feed"})
    assert made.status_code == 200 and made.headers["cache-control"] == "no-store"
    key = re.search(r'id="new-key"[^>]*value="(ck_[^"]+)"', made.text)
    assert key is not None
    key_text = key.group(1)
    assert _api(admin, key_text) == 200
    row = admin.scalar(select(ApiKey))
    assert (row.label, row.created_by, row.digest) == (
        "RIS feed",
        "staff:alice",
        hash_api_key(key_text),
    )
    listed = admin.client.get("/staff/keys")
    assert listed.status_code == 200 and key_text not in listed.text
    assert (
        f"<code>{row.digest[:12]}</code>" in listed.text and f'id="revoke-{row.id}"' in listed.text
    )
    gone = admin.post(f"/staff/keys/{row.id}/revoke")
    assert gone.status_code == 200 and "revoked" in gone.text
    assert _api(admin, key_text) == 403
    again = admin.post(f"/staff/keys/{row.id}/revoke")
    assert again.status_code == 409
    kinds = admin.scalar(
        select(AuditEvent.detail).where(AuditEvent.kind == "api-key").order_by(AuditEvent.id.desc())
    )
    assert kinds.startswith("revoked API key #1")


@pytest.mark.parametrize(
    ("path", "data", "status"),
    [
        ("/staff/keys", {"label": ""}, 422),  # a label is required
        ("/staff/keys/99/revoke", {}, 404),
    ],
)
def test_refusals_say_why_and_make_nothing(
    admin: Site, path: str, data: dict[str, str], status: int
) -> None:
    rsp = admin.post(path, data)
    assert rsp.status_code == status and 'id="keys-error"' in rsp.text
    assert admin.scalar(select(ApiKey)) is None


def test_other_staff_get_403_and_nothing_is_made(admin: Site) -> None:
    assert 'href="/staff/keys"' in admin.client.get("/staff").text  # the admin's nav
    admin.post("/staff/logout")
    assert admin.login("bob").status_code == 303
    assert 'href="/staff/keys"' not in admin.client.get("/staff").text  # not offered to bob
    assert admin.client.get("/staff/keys").status_code == 403
    assert admin.post("/staff/keys", {"label": "x"}).status_code == 403
    assert admin.scalar(select(ApiKey)) is None


def test_a_form_without_the_csrf_token_is_refused(admin: Site) -> None:
    rsp = admin.client.post("/staff/keys", data={"label": "x"}, follow_redirects=False)
    assert rsp.status_code == 403
    assert admin.scalar(select(ApiKey)) is None

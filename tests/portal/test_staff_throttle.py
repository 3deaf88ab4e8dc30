"""Per-account sign-in delay for staff: after portal.staff_login_free_failures wrong
passwords the account's sign-in is paused (even for the right password, from any
address), for a delay that doubles with each further failure up to a cap; audited; a
success resets it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from portal.staff_auth import BAD_SIGN_IN, DELAYED
from store.models import AuditEvent, PortalSession, StaffUser
from tests.conftest import Database
from tests.portal.test_staff import COOKIE, Site, count, open_site
from tests.portal.test_staff import cheap_hashes as cheap_hashes  # autouse fixture

WRONG = "not the password at all"


@pytest.fixture
def site(db: Database, tmp_path: Path) -> Site:
    for s in open_site(db, tmp_path):
        # the limiter per address is generous here: this is about the account
        s.ctx.portal = s.ctx.portal.model_copy(
            update={"rate_limit_per_min": 1000, "staff_login_free_failures": 3,
                    "staff_login_delay_s": 30, "staff_login_delay_max_s": 100}
        )  # fmt: skip
        return s
    raise AssertionError("no site")


def _blocked(site: Site) -> object:
    return site.scalar(select(StaffUser.login_blocked_until).where(StaffUser.username == "alice"))


@pytest.mark.parametrize(
    ("failures", "delay_s"),
    [(1, None), (2, None), (3, 30), (4, 60), (5, 100), (8, 100)],  # 30 x 2^(n-3), capped
)
def test_the_delay_grows_with_each_failure_up_to_the_cap(
    site: Site, failures: int, delay_s: int | None
) -> None:
    for _ in range(failures):
        blocked = _blocked(site)
        if blocked is not None:
            site.clock.now = blocked  # type: ignore[assignment]  # wait the delay out
        r = site.login("alice", WRONG)
        assert r.status_code == 200 and BAD_SIGN_IN in r.text
    blocked = _blocked(site)
    if delay_s is None:
        assert blocked is None
        assert site.login().status_code == 303
        return
    assert blocked == site.clock() + timedelta(seconds=delay_s)
    r = site.login()  # the right password, during the delay
    assert r.status_code == 429 and DELAYED in r.text and BAD_SIGN_IN not in r.text
    assert r.headers["retry-after"] == str(delay_s)
    assert COOKIE not in r.headers.get("set-cookie", "") and count(site, PortalSession) == 0
    site.clock.advance(seconds=delay_s - 1)
    assert site.login().status_code == 429
    site.clock.advance(seconds=1)
    assert site.login().status_code == 303  # the delay is over: the right password works
    user = site.scalar(select(StaffUser).where(StaffUser.username == "alice"))
    assert user.failed_logins == 0 and user.login_blocked_until is None


def test_refusals_during_the_delay_do_not_lengthen_it_and_are_audited(site: Site) -> None:
    for _ in range(3):
        site.login("alice", WRONG)
    blocked = _blocked(site)
    for _ in range(10):
        assert site.login("alice", WRONG).status_code == 429
    assert _blocked(site) == blocked
    assert site.scalar(select(StaffUser.failed_logins)) == 3
    with site.db.sessions() as s:
        details = [e.detail for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert details.count("staff sign-in refused") == 3
    assert details.count("staff sign-in refused: account paused after repeated failures") == 10


def test_the_delay_is_per_account_not_per_address(site: Site) -> None:
    site.add_user("bob")
    for _ in range(3):
        site.login("alice", WRONG)
    # Another address, another browser: still paused.
    with TestClient(
        site.client.app, base_url="https://testserver", client=("192.0.2.7", 50000)
    ) as client:
        elsewhere = Site(client, site.db, site.clock, site.ctx)
        assert elsewhere.login().status_code == 429
    assert site.login("bob").status_code == 303  # other accounts are untouched
    # Unknown names are never paused (they have no row): the same page as always.
    for _ in range(5):
        assert site.login("nobody", WRONG).status_code == 200

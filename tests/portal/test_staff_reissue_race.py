"""Two staff members re-issuing the same locked link make one new link, and one email.

The staff action's revoke is a conditional UPDATE (still locked, not revoked): the
transaction whose UPDATE changed the row issues the new link; the other is refused with
:data:`portal.staff_actions.ALREADY_REISSUED` and queues nothing. One after the other on
SQLite and PostgreSQL; at once on PostgreSQL only (SQLite has one writer at a time, so
the second cannot read before the first commits): a second node's re-issue holds its
transaction open while the page's re-issue waits on its row lock.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import select, text

from portal.forms import Form
from portal.staff_actions import ALREADY_REISSUED, reissue
from store.models import Grant, Notification, ReleaseRequest, RequestState
from tests.conftest import Database
from tests.pglocks import wait_until_blocked_on
from tests.portal import test_staff
from tests.portal.test_staff import Site, notified

site = test_staff.site
signed_in = test_staff.signed_in
cheap_hashes = test_staff.cheap_hashes


def _locked(site: Site) -> tuple[str, int]:
    """A notified request whose patient link is locked; returns (ref, grant id)."""
    ref, grant_id = notified(site)
    with site.db.sessions() as s, s.begin():
        g = s.get(Grant, grant_id)
        assert g is not None
        g.locked_at, g.failures = site.clock(), 20
    return ref, grant_id


def _page_reissue(site: Site, ref: str, grant_id: int) -> Any:
    return site.post(f"/staff/requests/{ref}/reissue", {"grant": str(grant_id)})


def _one_after_the_other(db: Database, site: Site, ref: str, grant_id: int) -> list[Any]:
    return [_page_reissue(site, ref, grant_id) for _ in range(2)]


def _at_once(db: Database, site: Site, ref: str, grant_id: int) -> list[Any]:
    """A second node re-issues (as staff:bob) and has not committed yet; the page's
    re-issue starts then and waits on the grant's row lock until that commit."""
    other = db.sessions()
    other.begin()
    try:
        req = other.scalars(select(ReleaseRequest).where(ReleaseRequest.reference == ref)).one()
        now = site.clock()
        why = reissue(other, site.ctx, req, Form([("grant", str(grant_id))]), now)
        state = RequestState(req.state)
        site.ctx.book.move(other, req, state, state, "staff:bob", why, now)
        xid = other.scalar(text("SELECT pg_current_xact_id()::text"))
        answers: list[Any] = []
        worker = threading.Thread(target=lambda: answers.append(_page_reissue(site, ref, grant_id)))
        worker.start()
        try:
            wait_until_blocked_on(db.engine, xid, worker)  # the page waits on the row lock
            other.commit()
        finally:
            worker.join(30)
    finally:
        other.close()
    assert not worker.is_alive()
    return answers


# (the database, how the two re-issues meet)
CASES = [
    pytest.param("sqlite", _one_after_the_other, id="sqlite-one-after-the-other"),
    pytest.param("postgresql", _one_after_the_other, id="postgresql-one-after-the-other"),
    pytest.param("postgresql", _at_once, id="postgresql-at-once"),
]


@pytest.mark.parametrize(("db", "how"), CASES, indirect=["db"])
def test_two_reissues_of_one_locked_link_make_one_new_link(
    db: Database, signed_in: Site, how: Any
) -> None:
    site = signed_in
    ref, grant_id = _locked(site)
    answers = how(db, site, ref, grant_id)

    codes = [r.status_code for r in answers]
    refused = [r for r in answers if r.status_code == 409]
    assert len(refused) == 1, codes
    assert ALREADY_REISSUED in refused[0].text
    with site.db.sessions() as s:
        grants = list(s.scalars(select(Grant).order_by(Grant.id)))
        mails = [(m.kind, m.channel, m.grant_id) for m in s.scalars(select(Notification))]
    live = [g for g in grants if g.revoked_at is None]
    assert len(grants) == 2 and len(live) == 1 and live[0].id != grant_id
    assert grants[0].revoked_at is not None
    assert mails == [("link_email", "email", live[0].id)]  # one email, no code sent twice
    reissued = [e for e in site.events(ref) if "re-issued as link" in e.reason]
    assert [e.reason.split("link #")[-1].split(";")[0] for e in reissued] == [str(live[0].id)]

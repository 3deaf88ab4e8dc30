"""The request page shows the release hold; staff release early or hold longer (audited).

Through the staff pages (FastAPI's TestClient, SQLite and PostgreSQL), on the pages'
injected clock; the site's zone is node.yaml's default, Europe/London.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from release.embargo import EMBARGO, NONE, REPORT, STAFF
from release.requests import RequestBook
from store.models import AuditEvent, ReleaseRequest, RequestState
from tests.conftest import Database
from tests.portal.test_staff import START, Site, make_request, open_site

# The autouse fixture that makes password hashing cheap, re-exported so it applies here.
from tests.portal.test_staff import cheap_hashes as cheap_hashes


@pytest.fixture
def site(db: Database, tmp_path: Path) -> Iterator[Site]:
    for s in open_site(db, tmp_path):
        assert s.login().status_code == 303
        yield s


def held(site: Site, kind: str, until: datetime | None, urgency: str = "now") -> str:
    ref = make_request(site)
    RequestBook(site.db.sessions, site.clock).transition(ref, RequestState.READY, "rules", "x")
    with site.db.sessions() as s, s.begin():
        req = s.scalars(select(ReleaseRequest).where(ReleaseRequest.reference == ref)).one()
        req.hold_kind, req.hold_until, req.hold_checked_at = kind, until, START
        req.urgency = urgency
    return ref


def row(site: Site, ref: str) -> ReleaseRequest:
    return RequestBook(site.db.sessions).get(ref)


def test_the_page_says_embargoed_until_and_staff_release_it_early(site: Site) -> None:
    ref = held(site, EMBARGO, START + timedelta(hours=72))
    page = site.client.get(f"/staff/requests/{ref}").text
    assert "embargoed until 2026-03-05 09:00 GMT" in page
    assert 'id="action-release-now"' in page and 'id="action-hold"' in page

    refused = site.post(f"/staff/requests/{ref}/release-now", {"reason": " "})
    assert refused.status_code == 422 and "Reason: required" in refused.text
    assert row(site, ref).hold_kind == EMBARGO

    reason = "patient flies abroad <tomorrow>"
    done = site.post(f"/staff/requests/{ref}/release-now", {"reason": reason})
    assert done.status_code == 303
    assert (row(site, ref).hold_kind, row(site, ref).hold_until) == (NONE, None)
    page = site.client.get(done.headers["location"]).text
    assert "The request was released (audited)" in page and "Nothing holds it" in page
    assert "flies abroad &lt;tomorrow&gt;" in page and "<tomorrow>" not in page
    last = site.events(ref)[-1]
    assert last.actor == "staff:alice" and last.reason.startswith(
        "released early by staff (embargoed until 2026-03-05 09:00 GMT)"
    )
    with site.db.sessions() as s:
        [event] = s.scalars(select(AuditEvent).where(AuditEvent.kind == "release-hold"))
        assert (event.actor, event.request_ref) == ("staff:alice", ref)


def test_waiting_for_the_report_and_staff_hold_longer(site: Site) -> None:
    ref = held(site, REPORT, START + timedelta(days=7), urgency="overnight")
    page = site.client.get(f"/staff/requests/{ref}").text
    assert "waiting for the report (at most until 2026-03-09 09:00 GMT)" in page

    bad = site.post(f"/staff/requests/{ref}/hold", {"until": "next week", "reason": "x"})
    assert bad.status_code == 422 and "Hold until:" in bad.text
    past = site.post(f"/staff/requests/{ref}/hold", {"until": "2026-03-01T10:00", "reason": "x"})
    assert past.status_code == 422 and "must be in the future" in past.text

    # A local time in the site's zone: 10:00 BST on 2 April is 09:00 UTC.
    reason = "the clinic explains the results first"
    done = site.post(f"/staff/requests/{ref}/hold", {"until": "2026-04-02T10:00", "reason": reason})
    assert done.status_code == 303
    found = row(site, ref)
    assert (found.hold_kind, found.hold_until) == (STAFF, datetime(2026, 4, 2, 9, 0, tzinfo=UTC))
    page = site.client.get(f"/staff/requests/{ref}").text
    assert "held by staff until 2026-04-02 10:00 BST" in page

    done = site.post(f"/staff/requests/{ref}/hold", {"until": "", "reason": "ask the consultant"})
    assert done.status_code == 303
    page = site.client.get(f"/staff/requests/{ref}").text
    assert "held for staff: release it when ready" in page
    with site.db.sessions() as s:
        kinds = s.scalars(select(AuditEvent.kind).where(AuditEvent.kind == "release-hold"))
        assert len(list(kinds)) == 2


def test_no_hold_actions_once_packaged(site: Site) -> None:
    ref = make_request(site, RequestState.NOTIFIED)
    page = site.client.get(f"/staff/requests/{ref}").text
    assert 'id="release-hold"' not in page
    refused = site.post(f"/staff/requests/{ref}/hold", {"until": "", "reason": "late"})
    assert refused.status_code == 409 and "only a request not yet packaged" in refused.text

"""Staff pages show times in the site's local time (``delivery.timezone``) with the
zone's abbreviation, as the dashboard's "Checked" column does, never a bare UTC time.

Through the staff pages (SQLite and PostgreSQL), the site's zone node.yaml's default,
Europe/London: a request made in winter (GMT) and one in summer (BST, UTC+1).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.portal import test_staff
from tests.portal.test_staff import Site, make_request

site = test_staff.site
signed_in = test_staff.signed_in
cheap_hashes = test_staff.cheap_hashes

# (the instant the request is made, in UTC; what the page says)
CASES = [
    (datetime(2026, 1, 15, 9, 0, tzinfo=UTC), "2026-01-15 09:00 GMT"),
    (datetime(2026, 7, 1, 9, 0, tzinfo=UTC), "2026-07-01 10:00 BST"),
    (datetime(2026, 10, 25, 0, 30, tzinfo=UTC), "2026-10-25 01:30 BST"),  # before the change
    (datetime(2026, 10, 25, 1, 30, tzinfo=UTC), "2026-10-25 01:30 GMT"),  # after it
]


@pytest.mark.parametrize(("at", "shown"), CASES, ids=[c[1] for c in CASES])
def test_the_request_page_and_list_show_local_times_with_the_zone(
    signed_in: Site, at: datetime, shown: str
) -> None:
    site = signed_in
    site.clock.now = at
    assert site.login().status_code == 303  # a fresh session at that instant
    ref = make_request(site)
    page = site.client.get(f"/staff/requests/{ref}").text
    assert f'<time datetime="{at.isoformat()}">{shown}</time>' in page  # the timeline
    assert "(local times, Europe/London)" in page and "times in UTC" not in page
    listing = site.client.get("/staff/requests").text
    assert f'<time datetime="{at.isoformat()}">{shown}</time>' in listing

"""Staff see every request a release hold keeps back: the dashboard and the request list.

Through the staff pages (FastAPI's TestClient, SQLite and PostgreSQL) on the pages'
injected clock; the site's zone is node.yaml's default, Europe/London. A request held
because the report did not come by max_wait (``max_wait_passed``), one whose study's rule
no longer exists (``rule_missing``) and one a staff member held until released sit with
what needs attention, each saying why.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from portal import staff_dashboard
from portal.staff_dashboard import dashboard
from release.embargo import (
    ACTOR,
    EMBARGO,
    MAX_WAIT,
    REPORT,
    RULE_MISSING,
    STAFF,
    rule_missing_why,
)
from release.progress import note
from release.requests import RequestBook
from store.models import ReleaseRequest, RequestState
from tests.conftest import Database
from tests.portal.conftest import Api
from tests.portal.test_staff import START, Site, make_request, open_site

# The autouse fixture that makes password hashing cheap, re-exported so it applies here.
from tests.portal.test_staff import cheap_hashes as cheap_hashes
from tests.release.test_cli_requests import CREATE, courier

# `courier request list` reads node.yaml: the CLI tests' fixture, re-exported.
from tests.release.test_cli_requests import config as config


@pytest.fixture
def site(db: Database, tmp_path: Path) -> Iterator[Site]:
    for s in open_site(db, tmp_path):
        assert s.login().status_code == 303
        yield s


def held(
    site: Site,
    kind: str,
    until: datetime | None,
    *,
    state: RequestState = RequestState.READY,
    name: str = "",
    since: datetime = START,
) -> str:
    """A request in ``state`` (pending or ready) held ``kind`` until ``until`` since
    ``since``; a ``max_wait_passed`` or ``rule_missing`` one with the policy's line on
    its timeline."""
    ref = make_request(site)
    if state == RequestState.READY:
        RequestBook(site.db.sessions, site.clock).transition(ref, state, "rules", "x")
    with site.db.sessions() as s, s.begin():
        req = s.scalars(select(ReleaseRequest).where(ReleaseRequest.reference == ref)).one()
        req.hold_kind, req.hold_until, req.hold_checked_at = kind, until, since
        if name:
            req.patient_name = name
        if kind in (MAX_WAIT, RULE_MISSING):
            note(s, req, ACTOR, WHY if kind == MAX_WAIT else RULE_WHY, since)
    return ref


# What release.embargo.decide writes when the report did not come by max_wait.
WHY = (
    "the final report did not come by 2026-03-02 09:00 GMT (rule us-report: max_wait 7d "
    "from arrival): held for staff to decide"
)
# What release.embargo.ReleaseKeeper.verdict writes when a study's rule is gone.
RULE_WHY = rule_missing_why("ct-gone")


@pytest.fixture
def holds(site: Site) -> dict[str, str]:
    """One request of each kind of hold, one whose embargo ended, one packaged since."""
    made = {
        "embargo": held(site, EMBARGO, START + timedelta(hours=72)),
        "report": held(site, REPORT, START + timedelta(days=7)),
        "staff_until": held(site, STAFF, START + timedelta(days=1), state=RequestState.PENDING),
        "for_staff": held(site, STAFF, None),
        "max_wait": held(site, MAX_WAIT, None),
        "rule_missing": held(site, RULE_MISSING, None),
        "ended": held(site, EMBARGO, START - timedelta(minutes=1)),
        "free": make_request(site),
    }
    gone = held(site, EMBARGO, START + timedelta(hours=72))
    RequestBook(site.db.sessions, site.clock).transition(
        gone, RequestState.PACKAGING, "delivery", "x"
    )
    made["packaging"] = gone
    return made


def test_the_dashboard_counts_and_lists_each_kind_of_hold(
    site: Site, holds: dict[str, str]
) -> None:
    with site.db.sessions() as s:
        board = dashboard(s, START)
    assert board.held_counts == {
        "max_wait_passed": 1,
        "rule_missing": 1,
        "staff_open": 1,
        "embargo": 1,
        "report": 1,
        "staff_until": 1,
    }
    assert board.held == 6 and board.for_staff_count == 3
    assert [h.reference for h in board.for_staff] == [
        holds["for_staff"],
        holds["max_wait"],
        holds["rule_missing"],
    ]
    assert [h.kind for h in board.for_staff] == [STAFF, MAX_WAIT, RULE_MISSING]
    assert board.for_staff[1].text == WHY  # why, with the max_wait, from the timeline
    assert board.for_staff[2].text == RULE_WHY  # the lost rule named, what to do next
    assert [h.reference for h in board.embargoed] == [holds["embargo"]]
    assert [h.reference for h in board.report_wait] == [holds["report"]]
    assert [h.reference for h in board.staff_until] == [holds["staff_until"]]
    assert board.embargoed[0].until == START + timedelta(hours=72)
    assert board.for_staff[0].since == START and not board.quiet

    page = site.client.get("/staff").text
    assert 'id="all-clear"' not in page
    # Held for staff: with what needs attention, before the overdue/failed sections.
    needs = page.index('id="needs-decision"')
    assert needs < page.index('id="held"') and needs < page.index('id="counts"')
    assert "Held for you to decide (3)" in page
    assert f'id="held-for-staff-{holds["for_staff"]}"' in page
    assert f'id="held-for-staff-{holds["max_wait"]}"' in page
    assert "held for staff: release it when ready" in page
    assert f'<span class="hold hold-max_wait_passed">{WHY}</span>' in page
    assert f'<span class="hold hold-rule_missing">{RULE_WHY}</span>' in page
    assert 'id="held-count-rule-missing">1<' in page
    assert 'id="held-count-embargo">1<' in page and 'id="held-count-report">1<' in page
    assert 'id="held-count-staff-until">1<' in page and 'id="held-count-max-wait">1<' in page
    assert 'id="held-count-staff-open">1<' in page and "more:" not in page
    assert "Held by the release policy (6)" in page
    # The local time (Europe/London), and when each was held.
    assert "embargoed until 2026-03-05 09:00 GMT" in page
    assert "waiting for the report (at most until 2026-03-09 09:00 GMT)" in page
    assert "held by staff until 2026-03-03 09:00 GMT" in page
    assert f'id="held-embargo-{holds["embargo"]}"' in page
    assert f'<time datetime="{START.isoformat()}">2026-03-02 09:00 GMT</time>' in page
    for gone in ("ended", "free", "packaging"):
        assert f"held-embargo-{holds[gone]}" not in page


def test_a_quiet_dashboard_says_nothing_is_held(site: Site) -> None:
    make_request(site)
    held(site, EMBARGO, START - timedelta(hours=1))  # ended: the sweep has not cleared it
    page = site.client.get("/staff").text
    assert 'id="none-held"' in page and 'id="needs-decision"' not in page
    assert "Held by the release policy (0)" in page


def test_an_embargo_alone_is_no_alarm(site: Site) -> None:
    held(site, EMBARGO, START + timedelta(hours=1))
    held(site, REPORT, START + timedelta(days=1))
    page = site.client.get("/staff").text
    assert 'id="all-clear"' in page and 'id="needs-decision"' not in page
    assert "Held by the release policy (2)" in page


def test_the_list_shows_a_hold_badge_and_filters_by_hold(site: Site, holds: dict[str, str]) -> None:
    page = site.client.get("/staff/requests").text
    assert '<th scope="col">Release hold</th>' in page
    assert (
        f'<span class="hold hold-embargo" id="hold-{holds["embargo"]}">'
        "embargoed until 2026-03-05 09:00 GMT</span>"
    ) in page
    assert f'id="hold-{holds["for_staff"]}">held for staff: release it when ready' in page
    for free in ("ended", "free", "packaging"):
        assert f'id="hold-{holds[free]}"' not in page

    def listed(query: str) -> set[str]:
        got = site.client.get(f"/staff/requests?{query}")
        assert got.status_code == 200
        return {ref for ref in holds.values() if f'href="/staff/requests/{ref}"' in got.text}

    assert f'id="hold-{holds["max_wait"]}">{WHY}' in page
    # The request page's Release section says the same, and offers both actions.
    one = site.client.get(f"/staff/requests/{holds['max_wait']}").text
    assert f'<p class="notice" id="hold-state"><strong>{WHY}</strong></p>' in one
    assert 'id="action-release-now"' in one and 'id="action-hold"' in one
    # A lost rule's request page says which rule and what to do next.
    lost = site.client.get(f"/staff/requests/{holds['rule_missing']}").text
    assert f'<p class="notice" id="hold-state"><strong>{RULE_WHY}</strong></p>' in lost
    assert f'id="hold-{holds["rule_missing"]}">{RULE_WHY}' in page
    wanted = {
        holds[k]
        for k in ("embargo", "report", "staff_until", "for_staff", "max_wait", "rule_missing")
    }
    assert listed("hold=held") == wanted
    assert listed("hold=embargo") == {holds["embargo"]}
    assert listed("hold=report") == {holds["report"]}
    assert listed("hold=max_wait_passed") == {holds["max_wait"]}
    assert listed("hold=rule_missing") == {holds["rule_missing"]}
    assert listed("hold=staff") == {holds["staff_until"], holds["for_staff"]}
    assert listed("hold=staff&state=pending") == {holds["staff_until"]}
    assert listed("hold=held&state=ready") == wanted - {holds["staff_until"]}
    page = site.client.get("/staff/requests?hold=embargo").text
    assert "<h1>Requests, embargoed</h1>" in page
    assert '<option value="embargo" selected>' in page


def test_an_unknown_hold_is_refused_and_not_echoed(site: Site) -> None:
    held(site, EMBARGO, START + timedelta(hours=1))
    got = site.client.get("/staff/requests", params={"hold": "<script>x</script>"})
    assert got.status_code == 422
    assert 'id="hold-error"' in got.text and "Unknown hold; choose one of held" in got.text
    assert "<script>x" not in got.text and "&lt;script&gt;x" not in got.text
    assert 'aria-describedby="hold-error" aria-invalid="true"' in got.text


def test_patient_data_beside_a_hold_is_escaped_and_isolated(site: Site) -> None:
    name = '<img src=x onerror="alert(1)">\u202eEMAN'
    held(site, STAFF, None, name=name)
    page = site.client.get("/staff/requests?hold=staff").text
    assert "<img src=x" not in page
    assert "<bdi>&lt;img src=x onerror=&#34;alert(1)&#34;&gt;\u202eEMAN</bdi>" in page
    board = site.client.get("/staff").text
    assert "<img src=x" not in board and "EMAN" not in board  # the dashboard names no patient


# -- the REST API and `courier request list --held` ---------------------------------------


def test_the_api_lists_held_requests(site: Site, holds: dict[str, str], api: Api) -> None:
    def listed(query: str) -> set[str]:
        got = api.client.get(f"/api/v1/requests?{query}", headers=api.auth)
        assert got.status_code == 200, got.text
        return {r["reference"] for r in got.json()}

    assert listed("held=held") == {
        holds[k]
        for k in ("embargo", "report", "staff_until", "for_staff", "max_wait", "rule_missing")
    }
    assert listed("held=rule_missing") == {holds["rule_missing"]}
    assert listed("held=embargo") == {holds["embargo"]}
    assert listed("held=max_wait_passed") == {holds["max_wait"]}
    assert listed("held=staff&state=ready") == {holds["for_staff"]}
    assert len(listed("")) == len(holds)
    bad = api.client.get("/api/v1/requests?held=%3Cx%3E", headers=api.auth)
    assert bad.status_code == 422


def test_courier_request_list_held(
    db: Database, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refs = []
    for _ in range(4):
        assert courier(config, *CREATE, "--json") == 0
        refs.append(json.loads(capsys.readouterr().out)["reference"])
    far, past = datetime(2099, 1, 1, tzinfo=UTC), datetime(2000, 1, 1, tzinfo=UTC)
    with db.sessions() as s, s.begin():
        holds = [(EMBARGO, far), (STAFF, None), (EMBARGO, past), (MAX_WAIT, None)]
        for ref, (kind, until) in zip(refs, holds, strict=True):
            req = s.scalars(select(ReleaseRequest).where(ReleaseRequest.reference == ref)).one()
            req.hold_kind, req.hold_until = kind, until

    assert courier(config, "request", "list", "--held", "--json") == 0
    assert {r["reference"] for r in json.loads(capsys.readouterr().out)} == {
        refs[0],
        refs[1],
        refs[3],
    }
    for kind, ref in (("staff", refs[1]), ("max_wait_passed", refs[3])):
        assert courier(config, "request", "list", "--held", kind, "--json") == 0
        listed = json.loads(capsys.readouterr().out)
        assert [(r["reference"], r["hold"]) for r in listed] == [(ref, kind)]
    assert courier(config, "request", "list") == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].split()[-1] == "HOLD"
    hold = {line.split()[0]: line.split()[-1] for line in text[1:]}
    assert hold == {refs[0]: "embargo", refs[1]: "staff", refs[2]: "-", refs[3]: MAX_WAIT}


def test_every_kind_of_hold_is_offered_by_the_cli_the_api_and_the_list() -> None:
    from node.cli import parser
    from portal.api import Held
    from portal.staff_requests import HOLDS
    from release.holds import HOLD_FILTERS

    assert tuple(HOLDS) == HOLD_FILTERS
    assert Held.__origin__.__args__ == HOLD_FILTERS  # type: ignore[attr-defined]
    with pytest.raises(SystemExit):
        parser("request").parse_args(["request", "list", "--held", "nonsense"])
    for kind in (MAX_WAIT, RULE_MISSING):
        args = parser("request").parse_args(["request", "list", "--held", kind])
        assert args.held == kind


def test_the_held_lists_are_sorted_before_they_are_cut(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Older holds of other kinds never push a list's first lines out, and the dashboard
    says how many more there are."""
    monkeypatch.setattr(staff_dashboard, "LIST_LIMIT", 1)
    old = START - timedelta(days=3)
    # Held longest, ending last first: cut before sorting, the soonest would be missing.
    embargoes = [
        held(site, EMBARGO, START + timedelta(days=9 - n), since=old + timedelta(hours=n))
        for n in range(4)
    ]
    newer = held(site, STAFF, None, since=START)
    oldest = held(site, MAX_WAIT, None, since=START - timedelta(hours=1))
    with site.db.sessions() as s:
        board = dashboard(s, START)
    assert [h.reference for h in board.embargoed] == [embargoes[-1]]  # soonest to end
    assert [h.reference for h in board.for_staff] == [oldest]  # longest held
    assert board.for_staff_count == 2 and board.held_counts["embargo"] == 4
    assert newer not in {h.reference for h in board.for_staff}
    page = site.client.get("/staff").text
    assert 'id="for-staff-more">And 1 more:' in page
    assert 'id="held-embargo-more">And 3 more:' in page
    assert 'href="/staff/requests?hold=max_wait_passed"' in page


def test_the_hold_checked_time_is_the_sites_local_time(site: Site) -> None:
    """The column is when the policy last looked at the request (hold_checked_at), which
    the sweep rewrites at every run for a report wait: labelled so, never "Held since"."""
    summer = datetime(2026, 7, 1, 8, 30, tzinfo=UTC)
    site.clock.now = summer + timedelta(days=1)
    assert site.login().status_code == 303  # the session from START ran out
    held(site, STAFF, None, since=summer)
    page = site.client.get("/staff").text
    assert f'<time datetime="{summer.isoformat()}">2026-07-01 09:30 BST</time>' in page
    assert '<th scope="col">Checked</th>' in page and "Held since" not in page

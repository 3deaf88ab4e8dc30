"""The staff Reports page: charts that parse as SVG, obey the CSP (no script, no inline
style), say what they show in words, and tables holding exactly the report's numbers.

On SQLite and PostgreSQL, through the staff site rig of ``test_staff`` with the known
history of ``tests/release/test_report.py`` (its clock set to that history's "now").
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from portal.http import CSP
from release.report import CAUSES, OUTCOMES, Report, Reports
from tests.conftest import Database
from tests.portal.test_staff import Site, cheap_hashes, open_site
from tests.release.test_report import HISTORY, NOW, write

__all__ = ["cheap_hashes"]  # the rig's autouse fixture: cheap password hashes here too

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def site(db: Database, tmp_path: Path) -> Iterator[Site]:
    with db.sessions() as s, s.begin():
        for n, (ref, past) in enumerate(HISTORY.items()):
            write(s, ref, past, n)
    for staff in open_site(db, tmp_path):
        staff.clock.now = NOW
        assert staff.login().status_code == 303
        yield staff


def element(html: str, tag: str, id_: str) -> ET.Element:
    """The ``<tag id=id_>`` of the page, parsed as XML (it must be well-formed)."""
    found = re.search(rf'<{tag}\b[^>]*\bid="{id_}".*?</{tag}>', html, re.S)
    assert found, f"no <{tag} id={id_}>"
    return ET.fromstring(found.group(0))


def svgs(html: str) -> list[ET.Element]:
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", html, re.S)]


def rows(table: ET.Element) -> list[list[str]]:
    body = table.find("tbody")
    assert body is not None
    return [["".join(cell.itertext()).strip() for cell in tr] for tr in body]


def built(site: Site, days: int) -> Report:
    return Reports(site.db.sessions, clock=site.clock).build(days)


@pytest.mark.parametrize("days", [30, 365])
def test_the_tables_hold_the_reports_numbers(site: Site, days: int) -> None:
    r = site.client.get(f"/staff/reports?days={days}")
    assert r.status_code == 200
    report = built(site, days)
    per_day = rows(element(r.text, "table", "outcomes-table"))
    assert per_day == [
        [d.day.isoformat(), *(str(d.counts[k]) for k in OUTCOMES)] for d in report.per_day
    ]
    assert len(per_day) == days

    def hours(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f}"

    weeks = rows(element(r.text, "table", "times-table"))
    assert weeks == [
        [w.week, str(w.downloads), hours(w.median_h), hours(w.p90_h), str(w.under_2_days)]
        for w in report.weeks
    ]
    causes = rows(element(r.text, "table", "failures-table"))
    assert causes == [[CAUSES[k], str(n)] for k, n in report.failures.items()]
    if days == 30:  # the hand-worked numbers, once more, through the page
        assert ["2026-W11", "3", "24.0", "192.0", "2"] in weeks
        assert [CAUSES["packaging"], "3"] in causes


def test_charts_are_svg_images_with_words_and_no_inline_style_or_script(site: Site) -> None:
    r = site.client.get("/staff/reports")
    assert r.status_code == 200
    assert r.headers["content-security-policy"] == CSP.decode()
    html = r.text
    assert not re.search(r"\sstyle\s*=", html, re.I), "inline style: the CSP blocks it"
    assert "<script" not in html.lower() and "<style" not in html.lower()
    charts = svgs(html)
    assert len(charts) == 3
    report = built(site, 30)
    for svg in charts:
        assert svg.get("role") == "img"
        title, desc = svg.find(f"{SVG}title"), svg.find(f"{SVG}desc")
        assert title is not None and title.text and desc is not None and desc.text
        assert svg.get("aria-labelledby") == f"{title.get('id')} {desc.get('id')}"
        assert svg.get("viewBox", "").startswith("0 0 360 ")
    outcomes, times, failures = charts
    # Each strip says its outcome and total in words, not by colour alone.
    labels = [t.text for t in outcomes.iter(f"{SVG}text")]
    for key, label in OUTCOMES.items():
        assert f"{label}: {report.totals[key]}" in labels
    # One bar per day with something in it, per outcome.
    busy = sum(1 for d in report.per_day for n in d.counts.values() if n)
    assert len(list(outcomes.iter(f"{SVG}rect"))) == busy
    assert len(list(times.iter(f"{SVG}rect"))) == 2 * sum(1 for w in report.weeks if w.downloads)
    counts = [t.text for t in failures.iter(f"{SVG}text") if t.get("class") == "count"]
    assert counts == [str(n) for n in report.failures.values()]
    assert 'href="/staff/reports" aria-current="page"' in html  # the nav link


def test_an_empty_period_draws_no_bars_and_lists_every_day(db: Database, tmp_path: Path) -> None:
    for site in open_site(db, tmp_path):
        site.clock.now = NOW
        assert site.login().status_code == 303
        r = site.client.get("/staff/reports")
        assert r.status_code == 200
        assert all(not list(svg.iter(f"{SVG}rect")) for svg in svgs(r.text))
        per_day = rows(element(r.text, "table", "outcomes-table"))
        assert len(per_day) == 30 and all(cells[1:] == ["0"] * 5 for cells in per_day)


@pytest.mark.parametrize("days", ["7", "abc", "-30", "365365365"])
def test_another_period_is_refused_with_the_30_days_shown(site: Site, days: str) -> None:
    r = site.client.get(f"/staff/reports?days={days}")
    assert r.status_code == 400
    assert 'id="period-error"' in r.text
    assert len(rows(element(r.text, "table", "outcomes-table"))) == 30


def test_the_page_needs_a_session(db: Database, tmp_path: Path) -> None:
    for site in open_site(db, tmp_path):
        r = site.client.get("/staff/reports", follow_redirects=False)
        assert (r.status_code, r.headers["location"]) == (303, "/staff/login")

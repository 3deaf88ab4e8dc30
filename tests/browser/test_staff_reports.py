"""The staff Reports page in Chromium, under the portal's real CSP: nothing refused by
the policy, axe-core finds nothing serious or critical, it fits a 390 px phone, and the
charts are drawn (their bars have a size on screen).

A few weeks of synthetic history are written into the running node's database (the
tables as :mod:`release.report` reads them; exact numbers are checked in
``tests/release/test_report.py``). With ``COURIER_SCREENSHOTS=1`` the phone screenshot
goes to ``docs/screenshots/staff-reports.png``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, expect

from node.app import open_store
from node.config import load_config
from tests.browser.conftest import (
    AXE,
    ContextFactory,
    Site,
    new_page,
    page_width,
    screenshot,
)
from tests.browser.test_accessibility import _RUN_AXE, BLOCKING
from tests.browser.test_staff_journey import add_staff_user, sign_in
from tests.conftest import need
from tests.release.test_report import Past, write

pytestmark = pytest.mark.peers  # Chromium and dcmtk


def history(now: datetime) -> dict[str, Past]:
    """Five weeks of requests: most downloaded within a day or two, some slower, a few
    expired unopened, failed, sent on CD or to a hospital; a few failures of each kind."""
    out: dict[str, Past] = {}
    day0 = now.replace(hour=8, minute=0, second=0, microsecond=0)
    for i in range(36):
        created = day0 - timedelta(days=i)
        for j in range(1 + (i * 7) % 4):
            ref = f"RPT-{i:02d}-{j}"
            kind = (i + j) % 9
            later = created + timedelta(hours=6 + ((i * 13 + j * 5) % 70))
            if later >= now:
                continue
            if kind in (0, 1, 2, 3, 4):
                out[ref] = Past(created, [("notified", "downloaded", later)], opened=True)
            elif kind == 5:
                out[ref] = Past(created, [("notified", "expired", later)], opened=False)
            elif kind == 6:
                out[ref] = Past(
                    created,
                    [("notified", "failed", later)],
                    attempts=[("email" if i % 2 else "sms", "permanent", later)],
                )
            elif kind == 7:
                out[ref] = Past(created, [("pending", "overdue", later)], burned=later)
            else:
                out[ref] = Past(created, [("packaging", "delivered", later)], dicom=True)
    return out


def test_reports_page_under_the_csp(
    site: Site, new_context: ContextFactory, screenshot_dir: Path
) -> None:
    need("axe-core", os.path.isfile(AXE))
    cfg = load_config(site.node.config, compile_rules=False)
    engine, sessions, _content = open_store(cfg)
    try:
        with sessions() as s, s.begin():
            for n, (ref, past) in enumerate(history(datetime.now(UTC)).items()):
                write(s, ref, past, n)
    finally:
        engine.dispose()
    add_staff_user(site)

    ctx = new_context()  # the portal's CSP intact
    page = new_page(ctx)
    refused: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if "Content Security Policy" in msg.text or "Refused to" in msg.text:
            refused.append(msg.text)

    page.on("console", on_console)
    sign_in(page, site)
    page.locator("a[href='/staff/reports']").first.click()
    page.wait_for_url(site.base_url + "/staff/reports")
    expect(page.locator("h1")).to_have_text("Reports")
    charts = page.locator("svg.chart")
    expect(charts).to_have_count(3)
    for i in range(3):
        box = charts.nth(i).bounding_box()
        assert box is not None and 200 < box["width"] <= 390, box
    assert page.locator("svg.chart rect").count() > 30  # bars drawn
    # The stylesheet's classes reach the SVG (no inline style needed): a bar has a fill.
    fill = page.locator("svg.chart rect.bar").first.evaluate("e => getComputedStyle(e).fill")
    assert fill not in ("", "none", "rgb(0, 0, 0)"), fill
    screenshot(page, screenshot_dir, "staff-reports.png")
    page.goto(site.base_url + "/staff/reports?days=365")
    expect(page.locator("#period-365")).to_have_attribute("aria-current", "page")
    assert refused == [], refused

    problems: list[str] = []
    for path in ("/staff/reports", "/staff/reports?days=365"):
        audit = new_context(bypass_csp=True, storage_state=ctx.storage_state())
        try:
            p = new_page(audit)
            p.goto(site.base_url + path)
            p.locator("details").evaluate_all("ds => ds.forEach(d => d.open = true)")
            width = page_width(p)
            if width > 390:
                problems.append(f"{path}: {width} CSS px wide on a 390 px phone")
            p.add_script_tag(path=str(AXE))
            for v in p.evaluate(_RUN_AXE):
                if v["impact"] in BLOCKING:
                    problems.append(f"{path}: {v['impact']} {v['id']} ({v['help']})")
        finally:
            audit.close()
    assert not problems, "accessibility problems:\n" + "\n".join(problems)

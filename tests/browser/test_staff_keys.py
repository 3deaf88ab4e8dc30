"""The staff Keys page in Chromium, under the portal's real CSP: an administrator
(``portal.staff_admins``) makes a key from the keyboard, sees it once, and revokes it,
with no JavaScript of ours; axe-core finds nothing serious or critical on the list and
on the page showing a new key, and both fit a 390 px phone.
"""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import AXE, ContextFactory, Site, new_page, page_width
from tests.browser.test_accessibility import _RUN_AXE, BLOCKING
from tests.browser.test_staff_journey import add_staff_user, sign_in
from tests.conftest import need

pytestmark = pytest.mark.peers  # Chromium and dcmtk


def _audit(page: Page, label: str) -> list[str]:
    problems = []
    width = page_width(page)
    if width > 390:
        problems.append(f"{label}: {width} CSS px wide on a 390 px phone")
    page.add_script_tag(path=str(AXE))
    for v in page.evaluate(_RUN_AXE):
        if v["impact"] in BLOCKING:
            problems.append(f"{label}: {v['impact']} {v['id']} ({v['help']}): {v['targets'][:3]}")
    return problems


def test_an_admin_makes_and_revokes_a_key_on_the_keys_page(
    site: Site, new_context: ContextFactory
) -> None:
    need("axe-core", os.path.isfile(AXE))
    add_staff_user(site)
    ctx = new_context(java_script_enabled=False)  # the forms work without JavaScript
    page = new_page(ctx)
    sign_in(page, site)
    page.locator("a[href='/staff/keys']").first.click()
    page.wait_for_url(site.base_url + "/staff/keys")
    expect(page.locator("#no-keys")).to_be_visible()
    page.locator("#label").fill("RIS feed")
    page.locator("#make-key").press("Enter")
    key = page.locator("#new-key").input_value()
    assert key.startswith("ck_")
    listed = site.cli("apikey", "list")
    assert [(k["label"], k["revoked_at"]) for k in listed] == [("RIS feed", None)]

    problems: list[str] = []
    audit = new_context(bypass_csp=True, storage_state=ctx.storage_state())
    try:
        p = new_page(audit)
        p.goto(site.base_url + "/staff/keys")
        assert key not in p.content()  # shown once only
        problems += _audit(p, "keys")
        p.locator("#label").fill("scripts")
        p.locator("#make-key").press("Enter")
        expect(p.locator("#made-key")).to_be_visible()
        problems += _audit(p, "keys with a new key")
    finally:
        audit.close()

    page.goto(site.base_url + "/staff/keys")
    page.locator(f"#revoke-{listed[0]['id']}").press("Enter")
    expect(page.locator("#keys-notice")).to_contain_text("revoked")
    revoked = [k for k in site.cli("apikey", "list") if k["label"] == "RIS feed"]
    assert revoked[0]["revoked_at"] is not None
    assert problems == [], "\n".join(problems)

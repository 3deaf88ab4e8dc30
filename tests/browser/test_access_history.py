"""Issue 13 section 4 in Chromium: the patient's access history, on a real node.

The patient signs in, shares with a clinician (a code shown to pass on); the clinician
types a wrong code, then the right one; the patient downloads. The patient's files page
then lists those accesses newest first, with the clinician's address masked and the stop
button beside the active share; the clinician's page has no history. axe-core finds no
serious or critical violation on the page with its history, in English and Arabic, nor
after "Ask for more time". With ``COURIER_SCREENSHOTS=1`` the history goes to
``docs/screenshots/06-access-history.png`` (the README and docs/portal.md show it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import (
    AXE,
    CLINICIAN_EMAIL,
    PATIENT_MOBILE,
    ContextFactory,
    Site,
    assert_cookie,
    new_page,
    patient_link,
    screenshot,
    text_of,
)
from tests.browser.test_accessibility import Audit
from tests.conftest import need

pytestmark = pytest.mark.peers  # Chromium and dcmtk

MASKED = "c•••@example.org"


def _more_time(page: Page) -> None:
    page.locator("#more-time").press("Enter")
    expect(page.locator("#more-time-result")).to_be_visible()


def test_the_patient_sees_who_opened_their_imaging(
    site: Site, new_context: ContextFactory, screenshot_dir: Path
) -> None:
    need("axe-core", os.path.isfile(AXE))
    _ref, link = patient_link(site, "ACCHIST1")
    base = site.base_url

    journey = new_context()
    patient = new_page(journey)
    patient.goto(link)
    patient.wait_for_url(base + "/access")
    assert_cookie(journey, "__Host-link")
    seen = len(site.sms_to(PATIENT_MOBILE))
    patient.locator("#send-code").click()
    patient.wait_for_url(base + "/access/verify")
    patient.locator("#code").fill(site.wait_code(PATIENT_MOBILE, seen))
    patient.locator("#verify").click()
    patient.wait_for_url(base + "/files")

    # A share with a code shown to the patient.
    patient.locator("#share-email").fill(CLINICIAN_EMAIL)
    patient.locator("#share-show-code").check()
    patient.locator("#share-submit").click()
    expect(patient.locator("#share-code")).to_be_visible()
    shown = re.sub(r"\D", "", patient.locator("#share-code").text_content() or "")
    assert len(shown) == 6

    # The clinician: a wrong code, then the right one.
    gp_link = site.link_in(site.wait_mail(CLINICIAN_EMAIL, lambda m: "/d/" in text_of(m)))
    gp_ctx = new_context()
    gp = new_page(gp_ctx)
    gp.goto(gp_link)
    gp.wait_for_url(base + "/access")
    gp.locator("#enter-code").click()
    gp.wait_for_url(base + "/access/verify")
    gp.locator("#code").fill("000000" if shown != "000000" else "111111")
    gp.locator("#verify").click()
    expect(gp.locator("#code-error")).to_be_visible()
    gp.locator("#code").fill(shown)
    gp.locator("#verify").click()
    gp.wait_for_url(base + "/files")
    expect(gp.locator("#history")).to_have_count(0)  # a clinician sees no history
    expect(gp.locator("#more-time")).to_have_count(0)

    # The patient downloads everything (the whole file: a completed download).
    patient.goto(base + "/files")
    href = patient.locator("#download-all").get_attribute("href")
    assert href
    got = patient.request.get(base + href)
    assert got.ok and len(got.body()) > 0

    patient.goto(base + "/files")
    entries = patient.locator("#history li")
    expect(entries).to_have_count(4)
    expect(entries.nth(0)).to_contain_text("Downloaded")
    expect(entries.nth(0)).to_contain_text("You")
    expect(entries.nth(1)).to_contain_text("Opened with the code")
    expect(entries.nth(1)).to_contain_text(MASKED)
    expect(entries.nth(2)).to_contain_text("Wrong code typed")
    expect(entries.nth(3)).to_contain_text("Opened with the code")
    expect(entries.nth(1).locator("button")).to_contain_text("Stop sharing")
    expect(entries.nth(0).locator("button")).to_have_count(0)
    assert CLINICIAN_EMAIL not in (patient.locator("#history").text_content() or "")
    patient.locator("#access-history").evaluate("e => e.scrollIntoView({block: 'start'})")
    screenshot(patient, screenshot_dir, "06-access-history.png")

    audit = Audit(new_context, base)
    audit.page("files with its access history", "/files", journey)
    audit.page("files, more time", "/files", journey, _more_time)
    assert len(audit.audited) == 4, audit.audited
    assert not audit.problems, "accessibility problems:\n" + "\n".join(audit.problems)

    # Stopping the share from its history entry ends the clinician's session.
    patient.goto(base + "/files")
    patient.locator("#history li").nth(1).locator("button").click()
    patient.wait_for_url(re.compile(re.escape(base) + r"/files(\?.*)?$"))
    expect(patient.locator("#history button")).to_have_count(0)
    gp.goto(base + "/files")
    assert gp.locator("#download-all").count() == 0

"""Issue 13 section 1 in Chromium: a radiology report on the patient's files page.

A real node whose release rule says ``reports: with_images`` (hot-reloaded); the PACS
pushes the study and a Comprehensive SR with dcmtk's storescu; the patient signs in and
the files page lists the report, which opens as an HTML page in the patient's language
frame. axe-core finds no serious or critical violation on the files page with its
reports section, nor on the viewer page, which lists the report too. With
``COURIER_SCREENSHOTS=1`` the page goes to
``docs/screenshots/07-report-on-files-page.png`` and the report itself to
``docs/screenshots/08-report.png``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pydicom
import pytest
from playwright.sync_api import expect

from tests import synthetic
from tests.browser.conftest import (
    AXE,
    PATIENT_EMAIL,
    PATIENT_MOBILE,
    RULES,
    ContextFactory,
    Site,
    new_page,
    screenshot,
    text_of,
)
from tests.browser.test_accessibility import Audit
from tests.conftest import need
from tests.ris.reportdata import make_sr
from tests.scu import storescu

pytestmark = pytest.mark.peers  # Chromium and dcmtk

WITH_REPORTS = RULES.replace(
    "    join: {accession: AccessionNumber}\n",
    "    join: {accession: AccessionNumber}\n    reports: with_images\n",
)


def _reload_rules(site: Site) -> None:
    (site.tmp / "rules.yaml").write_text(WITH_REPORTS)
    for _ in range(100):  # bounded: the node checks its rules file every 0.3 s
        if site.node.log.read_text(errors="replace").count("rules reloaded") >= 1:
            return
        time.sleep(0.1)
    raise AssertionError("the node did not reload its rules")


def test_the_report_is_on_the_files_page(
    site: Site, new_context: ContextFactory, screenshot_dir: Path
) -> None:
    need("axe-core", os.path.isfile(AXE))
    _reload_rules(site)
    accession = "ACCREPT1"
    ref = site.create_request(accession, "--urgency", "now")
    ct = synthetic.make_ct_series(
        site.tmp / "ct-report", n_slices=4, rows=96, cols=96, accession=accession
    )
    study_uid = str(pydicom.dcmread(ct[0]).StudyInstanceUID)
    sr, _ = make_sr(site.tmp, study_uid, patient_id="SYN0001", accession=accession)
    out = storescu(site.node.port, [*ct, sr], timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    site.wait_state(ref, "notified")
    link = site.link_in(site.wait_mail(PATIENT_EMAIL, lambda m: "/d/" in text_of(m)))

    context = new_context()
    page = new_page(context)
    page.goto(link)
    page.wait_for_url(site.base_url + "/access")
    seen = len(site.sms_to(PATIENT_MOBILE))
    page.locator("#send-code").click()
    page.wait_for_url(site.base_url + "/access/verify")
    page.locator("#code").fill(site.wait_code(PATIENT_MOBILE, seen))
    page.locator("#verify").click()
    page.wait_for_url(site.base_url + "/files")

    expect(page.locator("#reports-heading")).to_be_visible()
    expect(page.locator("#report-1")).to_be_visible()
    audit = Audit(new_context, site.base_url)
    audit.page("files with a report", "/files", context)
    audit.page("viewer with a report", "/files/view/1/1/1", context)  # it lists them too
    assert not audit.problems, "accessibility problems:\n" + "\n".join(audit.problems)
    page.locator("#reports-heading").scroll_into_view_if_needed()
    screenshot(page, screenshot_dir, "07-report-on-files-page.png")

    report = new_page(context)
    report.goto(site.base_url + "/files/report/1")
    expect(report.locator("h1")).to_have_text("Radiology report")
    body = report.locator(".report").text_content() or ""
    assert "12.5 mm" in body and "Nodule" in body
    assert "<b>unchanged</b>" in body  # the SR's text as written, shown, not markup
    screenshot(report, screenshot_dir, "08-report.png")

    viewer = new_page(context)
    viewer.goto(site.base_url + "/files/view/1/1/1")
    expect(viewer.locator("#viewer-reports-heading")).to_be_visible()
    expect(viewer.locator("#viewer-report-1")).to_have_attribute("href", "/files/report/1")

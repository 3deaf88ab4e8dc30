"""The patient's journey in Chromium on a phone, as a patient would make it.

The link from the email captured by aiosmtpd → ``/access`` (the token leaves the address
bar) → "send my code" → the code from the SMS captured by the Twilio-compatible endpoint
→ ``/files`` → the ZIP downloaded and checked against its MANIFEST.json → a share with a
clinician by SMS, whose own journey follows (and the patient is told by email when it is
used) → a share with a shown code → the patient stops the first share and the
clinician's link shows the neutral page. Screenshots for the README are saved on the way
(``docs/screenshots`` with ``COURIER_SCREENSHOTS=1``; synthetic data only).
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.conftest import (
    ACTION_MS,
    CLINICIAN2_EMAIL,
    CLINICIAN_EMAIL,
    CLINICIAN_MOBILE,
    PATIENT_EMAIL,
    PATIENT_MOBILE,
    ContextFactory,
    Site,
    assert_cookie,
    html_language,
    new_page,
    patient_link,
    screenshot,
    text_of,
)

pytestmark = pytest.mark.peers  # Chromium and dcmtk

NEUTRAL_TITLE = "This link cannot be used"


def open_link(page: Page, link: str, base_url: str) -> None:
    """Follow an emailed link: one 303 to ``/access``, and the token is gone."""
    token = link.rsplit("/", 1)[1]
    response = page.goto(link)
    assert response is not None
    assert page.url == base_url + "/access"
    assert token not in page.url
    hop = response.request.redirected_from
    assert hop is not None and hop.url == link
    first = hop.response()
    assert first is not None and first.status == 303


def sign_in_with_sms(page: Page, site: Site, mobile: str) -> str:
    """From ``/access``: ask for a code, read it from the SMS, type it. Returns the code
    (already used) after landing on ``/files``."""
    seen = len(site.sms_to(mobile))
    page.locator("#send-code").click()
    page.wait_for_url(site.base_url + "/access/verify")
    code = site.wait_code(mobile, seen)
    page.locator("#code").fill(code)
    return code


def verify_zip(path: Path, page_sha256: str) -> dict[str, object]:
    """Check the downloaded ZIP against the page's fingerprint and its MANIFEST.json."""
    assert hashlib.sha256(path.read_bytes()).hexdigest() == page_sha256
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        manifest = json.loads(z.read("MANIFEST.json"))
        files = {f["path"]: f for f in manifest["files"]}
        stored = {n for n in z.namelist() if not n.endswith("/")} - {"MANIFEST.json"}
        assert set(files) == stored, "MANIFEST.json must list every other file in the ZIP"
        for name, entry in files.items():
            data = z.read(name)
            assert len(data) == entry["size"], name
            assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
    assert "DICOMDIR" in files and "README.html" in files
    assert manifest["counts"]["instances"] == 4
    return dict(manifest)


def download_all(page: Page, tmp: Path) -> Path:
    """Click "Download all" and save what Chromium downloaded."""
    with page.expect_download(timeout=ACTION_MS * 4) as info:
        page.locator("#download-all").click()
    download = info.value
    assert download.failure() is None
    target = tmp / download.suggested_filename
    download.save_as(target)
    return target


def share_row(page: Page, email: str) -> tuple[str, int]:
    """The revoke button's id for the share with ``email``, and the grant id in it."""
    button = page.locator(".shares li", has_text=email).locator("button[id^='revoke-']")
    expect(button).to_have_count(1)
    button_id = button.get_attribute("id") or ""
    found = re.fullmatch(r"revoke-(\d+)", button_id)
    assert found, f"revoke button id {button_id!r} is not revoke-<grant id>"
    return button_id, int(found.group(1))


def test_patient_journey(
    site: Site, new_context: ContextFactory, screenshot_dir: Path, tmp_path: Path
) -> None:
    shots = screenshot_dir
    _ref, link = patient_link(site, "ACCWEB1")
    assert link.startswith(site.base_url + "/d/")

    # -- the patient follows the link, asks for a code, types it -------------------------
    patient_ctx: BrowserContext = new_context()
    patient = new_page(patient_ctx)
    open_link(patient, link, site.base_url)
    assert_cookie(patient_ctx, "__Host-link")
    assert html_language(patient) == ("en", "ltr")
    expect(patient.locator(".masked")).to_have_text("+44 •••• ••" + PATIENT_MOBILE[-2:])
    expect(patient.locator("#send-code")).to_be_visible()
    screenshot(patient, shots, "01-access.png")

    patient_code = sign_in_with_sms(patient, site, PATIENT_MOBILE)
    screenshot(patient, shots, "02-code.png")
    patient.locator("#verify").click()
    patient.wait_for_url(site.base_url + "/files")
    assert_cookie(patient_ctx, "__Host-session")
    expect(patient.locator("#download-all")).to_be_visible()
    screenshot(patient, shots, "03-files.png")

    # -- the download, checked as a careful patient (or their doctor) would --------------
    page_sha = (patient.locator(".checksums code").first.text_content() or "").strip()
    assert re.fullmatch(r"[0-9a-f]{64}", page_sha), page_sha
    zip_path = download_all(patient, tmp_path)
    verify_zip(zip_path, page_sha)

    # -- share with a clinician, who gets codes by SMS -----------------------------------
    patient.locator("#share-email").fill(CLINICIAN_EMAIL)
    patient.locator("#share-mobile").fill(CLINICIAN_MOBILE)
    patient.locator("#share-submit").click()
    patient.wait_for_url(re.compile(re.escape(site.base_url) + r"/files(\?.*)?$"))
    _button, clinician_grant = share_row(patient, CLINICIAN_EMAIL)
    patient.locator(".shares").evaluate("e => e.scrollIntoView({block: 'end'})")
    screenshot(patient, shots, "04-share.png")

    mail = site.wait_mail(CLINICIAN_EMAIL, lambda m: "/d/" in text_of(m))
    clinician_link = site.link_in(mail)
    assert clinician_link != link
    for secret in ("SYN0001", "Synthetic", "19700131"):
        assert secret not in str(mail["Subject"]) and secret not in text_of(mail)

    clinician_ctx = new_context()
    clinician = new_page(clinician_ctx)
    open_link(clinician, clinician_link, site.base_url)
    assert_cookie(clinician_ctx, "__Host-link")
    expect(clinician.locator(".masked")).to_have_text("+44 •••• ••" + CLINICIAN_MOBILE[-2:])
    patient_mails_before = len(site.mails_to(PATIENT_EMAIL))
    sign_in_with_sms(clinician, site, CLINICIAN_MOBILE)
    clinician.locator("#verify").click()
    clinician.wait_for_url(site.base_url + "/files")
    expect(clinician.locator("#download-all")).to_be_visible()
    expect(clinician.locator("#share-email")).to_have_count(0)  # no forwarding further
    verify_zip(download_all(clinician, tmp_path / "clinician"), page_sha)

    # The patient is told by email that the forwarded link was used.
    told = site.wait_mail(PATIENT_EMAIL, since=patient_mails_before)
    assert "/d/" not in text_of(told), "the notice must not carry a link"
    assert "opened" in str(told["Subject"])

    # -- a second share, with a code shown to the patient --------------------------------
    patient.goto(site.base_url + "/files")
    patient.locator("#share-email").fill(CLINICIAN2_EMAIL)
    patient.locator("#share-show-code").check()
    patient.locator("#share-submit").click()
    expect(patient.locator("#share-code")).to_be_visible()  # shown once, in this answer
    shown = (patient.locator("#share-code").text_content() or "").strip()
    shown_code = re.sub(r"\D", "", shown)
    assert len(shown_code) == 6, f"the shown code is not 6 digits: {shown!r}"
    share_row(patient, CLINICIAN2_EMAIL)

    gp_link = site.link_in(site.wait_mail(CLINICIAN2_EMAIL, lambda m: "/d/" in text_of(m)))
    gp_ctx = new_context()
    gp = new_page(gp_ctx)
    open_link(gp, gp_link, site.base_url)
    expect(gp.locator("#send-code")).to_have_count(0)  # nothing to send: the patient has it
    gp.locator("#enter-code").click()
    gp.wait_for_url(site.base_url + "/access/verify")
    gp.locator("#code").fill(shown_code)
    gp.locator("#verify").click()
    gp.wait_for_url(site.base_url + "/files")
    expect(gp.locator("#download-all")).to_be_visible()

    # -- the patient stops the first share: the clinician's link is dead -----------------
    patient.goto(site.base_url + "/files")
    patient.locator(f"#revoke-{clinician_grant}").click()
    patient.wait_for_url(re.compile(re.escape(site.base_url) + r"/files(\?.*)?$"))
    expect(patient.locator(f"#revoke-{clinician_grant}")).to_have_count(0)
    expect(patient.locator(f"#{share_row(patient, CLINICIAN2_EMAIL)[0]}")).to_be_visible()

    clinician.reload()
    expect(clinician.locator("#download-all")).to_have_count(0)  # the session ended too
    response = clinician.goto(clinician_link)
    assert response is not None and response.status == 404
    assert clinician.url == site.base_url + "/access"
    expect(clinician.locator("h1")).to_have_text(NEUTRAL_TITLE)
    expect(clinician.locator("#send-code")).to_have_count(0)

    # The second clinician and the patient are unaffected.
    gp.reload()
    expect(gp.locator("#download-all")).to_be_visible()
    patient.reload()
    expect(patient.locator("#download-all")).to_be_visible()

    # -- the language links: the same page in Arabic, right to left ----------------------
    patient.locator("header a[hreflang='ar']").click()
    patient.wait_for_url(site.base_url + "/files?lang=ar")
    assert html_language(patient) == ("ar", "rtl")
    expect(patient.locator("#download-all")).to_be_visible()
    screenshot(patient, shots, "05-files-ar.png")
    patient.locator("header a[hreflang='en']").click()
    patient.wait_for_url(site.base_url + "/files?lang=en")
    assert html_language(patient) == ("en", "ltr")

    # -- after the whole journey, no log line holds a secret or a patient detail ----------
    log = site.node.log.read_text(encoding="utf-8", errors="replace")
    token = link.rsplit("/d/", 1)[1]
    for secret in (
        token,
        clinician_link.rsplit("/d/", 1)[1],
        patient_code,
        shown_code,
        "SYN0001",
        "Synthetic",
        "19700131",
        PATIENT_EMAIL,
        CLINICIAN_EMAIL,
        PATIENT_MOBILE,
        PATIENT_MOBILE.lstrip("+"),
        CLINICIAN_MOBILE.lstrip("+"),
    ):
        assert secret not in log, "a secret or a patient detail reached the node's log"
    assert "/d/" in log  # the access log ran, with the token replaced by its short hash

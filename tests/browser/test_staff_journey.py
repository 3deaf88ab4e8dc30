"""A staff member in Chromium: signs in, finds a patient's study, creates a request for
it in the browser and reads its timeline until the link email has gone.

The account is made beforehand as an administrator would: ``courier staff add USER
--password-file FILE``.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import (
    MESSAGE_S,
    PATIENT_EMAIL,
    PATIENT_MOBILE,
    STATE_S,
    ContextFactory,
    Site,
    assert_cookie,
    new_page,
    text_of,
)
from tests.conftest import COURIER

pytestmark = pytest.mark.peers  # Chromium and dcmtk

DESKTOP = {"width": 1280, "height": 900}
USERNAME = "radiographer.one"
PASSWORD = "correct horse battery staple 7"  # test-only, at least 12 characters
ACCESSION = "ACCSTAFF1"


def add_staff_user(site: Site) -> None:
    """``courier staff add`` with the password in a file (never on the command line)."""
    secret = site.tmp / "staff-password.txt"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    out = subprocess.run(
        [
            str(COURIER),
            "staff",
            "add",
            USERNAME,
            "--password-file",
            str(secret),
            "--config",
            str(site.node.config),
        ],
        capture_output=True,
        text=True,
        env=site.node.env,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, f"`courier staff add` failed ({out.returncode}): {out.stderr}"
    assert PASSWORD not in out.stdout + out.stderr


def wait_for_study(site: Site, accession: str, timeout: float = STATE_S) -> str:
    """The study's UID once the node has it stable (and the rules have seen it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for st in site.cli("studies", "list", "--state", "stable") or []:
            if st.get("accession_number") == accession:
                time.sleep(1.0)  # a matching sweep (every 0.3 s) has decided on it
                return str(st["study_uid"])
        time.sleep(0.5)
    raise AssertionError(f"no stable study with accession {accession} after {timeout:.0f} s")


def timeline(page: Page) -> list[str]:
    """The timeline's rows as text, oldest first."""
    return [t.strip() for t in page.locator("#timeline tbody tr").all_inner_texts()]


def sign_in(page: Page, site: Site) -> None:
    """From a staff page: a wrong password first (refused), then the right one."""
    page.goto(site.base_url + "/staff")
    assert page.url.split("?")[0] == site.base_url + "/staff/login"  # not signed in yet
    page.locator("#username").fill(USERNAME)
    page.locator("#password").fill(PASSWORD + "x")
    page.locator("#sign-in").click()
    expect(page.locator("#sign-in-error")).to_be_visible()

    page.locator("#username").fill(USERNAME)
    page.locator("#password").fill(PASSWORD)
    page.locator("#sign-in").click()
    page.wait_for_url(site.base_url + "/staff")
    assert_cookie(page.context, "__Host-staff")
    expect(page.locator("h1")).to_be_visible()
    expect(page.locator("header")).to_contain_text(USERNAME)


def create_request(page: Page, *, accession: str = "", study_uid: str = "") -> str:
    """Fill in the new-request form (fields named as in release.validation.RequestDraft;
    its second_channel "sms:+E164" is two controls) and create it; returns the reference."""
    page.get_by_role("link", name="New request").click()
    page.wait_for_url(re.compile(r".*/staff/requests/new$"))
    if study_uid:
        page.locator("#find-patient-id").fill("SYN0001")
        page.locator("#find-studies").click()
        page.wait_for_url(re.compile(r".*/staff/requests/new\?patient_id=SYN0001$"))
        page.locator(f"input[name='study'][value='{study_uid}']").check()
    form = page.locator("form[action='/staff/requests/new'][method='post']")
    if accession:
        form.locator("[name='accessions']").fill(accession)
    form.locator("[name='patient_id']").fill("SYN0001")
    form.locator("[name='patient_name']").fill("Synthetic^Patient")
    form.locator("[name='patient_birth_date']").fill("19700131")
    form.locator("[name='recipient_email']").fill(PATIENT_EMAIL)
    form.locator("[name='second_kind']").select_option("sms")
    form.locator("[name='second_value']").fill(PATIENT_MOBILE)
    form.locator("[name='language']").select_option("en")
    form.locator("[name='urgency']").select_option("now")
    form.locator("[name='link_days']").fill("14")
    form.locator("[name='note']").fill("Synthetic test request")
    page.locator("#create-request").click()

    page.wait_for_url(re.compile(r".*/staff/requests/CR-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]\b.*"))
    ref = page.url.split("/staff/requests/", 1)[1].split("?", 1)[0]
    expect(page.locator("#done")).to_be_visible()
    expect(page.locator("h1")).to_contain_text(ref)
    expect(page.locator(".details")).to_contain_text(USERNAME)  # requested by
    rows = timeline(page)
    assert rows and "created" in rows[0], "timeline:\n" + "\n".join(rows)
    return ref


def read_timeline_until(page: Page, needle: str, timeout: float = MESSAGE_S) -> list[str]:
    """Reload the request page (bounded) until a timeline row mentions ``needle``."""
    deadline = time.monotonic() + timeout
    rows = timeline(page)
    while not any(needle in r for r in rows) and time.monotonic() < deadline:
        time.sleep(1.0)
        page.reload()
        rows = timeline(page)
    assert any(needle in r for r in rows), f"no {needle!r} in the timeline:\n" + "\n".join(rows)
    return rows


def test_staff_journey(site: Site, new_context: ContextFactory) -> None:
    """The usual order: the request first (from the browser), then the PACS push."""
    add_staff_user(site)
    ctx = new_context(viewport=DESKTOP, is_mobile=False, has_touch=False)
    page = new_page(ctx)
    sign_in(page, site)

    ref = create_request(page, accession=ACCESSION)
    expect(page.locator("#milestones")).to_be_visible()
    site.push(ACCESSION)
    rows = read_timeline_until(page, "link email sent")
    assert any("ready" in r for r in rows), rows
    expect(page.locator("#matched-studies")).to_contain_text(ACCESSION)
    expect(page.locator("#grants")).to_be_visible()
    site.link_in(site.wait_mail(PATIENT_EMAIL, lambda m: "/d/" in text_of(m)))

    # The request is listed; the dashboard is reachable; signing out ends the session.
    page.get_by_role("link", name="Requests", exact=True).click()
    expect(page.get_by_text(ref)).to_be_visible()
    page.get_by_role("link", name="Dashboard").click()
    page.wait_for_url(site.base_url + "/staff")
    page.locator("#sign-out").click()
    page.goto(site.base_url + "/staff")
    assert page.url.split("?")[0] == site.base_url + "/staff/login"


def test_staff_request_for_a_study_already_received(
    site: Site, new_context: ContextFactory
) -> None:
    """The other order: the study arrived first; staff find it and tick it. The request
    must go on to the link email like any other."""
    add_staff_user(site)
    site.push(ACCESSION)
    study_uid = wait_for_study(site, ACCESSION)
    ctx = new_context(viewport=DESKTOP, is_mobile=False, has_touch=False)
    page = new_page(ctx)
    sign_in(page, site)
    create_request(page, study_uid=study_uid)
    read_timeline_until(page, "link email sent")

"""axe-core on every patient page, in English and in Arabic (right to left).

The journey runs in an ordinary context (the portal's CSP intact). Each page is audited
in a context of its own made with ``bypass_csp=True`` (the CSP forbids the injected
script otherwise) and the journey's cookies, so an audit changes nothing the journey
sees. Pages that only a POST shows (a wrong code, a share's errors, a shown code) are
reached by posting the form inside the audit context, from the keyboard (so a layout
that hides a button from the pointer does not stop the audit; the Reflow check below
reports such a layout).

Per page and language: no axe violation of impact "serious" or "critical"; ``<html>``
carries the language and direction; the page fits a 390 px phone without scrolling
sideways (WCAG 1.4.10 Reflow, which axe does not test). Every problem of every page is
collected first, then reported together.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.conftest import (
    AXE,
    CLINICIAN_EMAIL,
    PATIENT_MOBILE,
    PHONE,
    ContextFactory,
    Site,
    assert_cookie,
    html_language,
    new_page,
    page_width,
    patient_link,
    screenshot,
)
from tests.browser.test_staff_journey import add_staff_user, sign_in, wait_for_study
from tests.conftest import need

pytestmark = pytest.mark.peers  # Chromium and dcmtk

LANGUAGES = {"en": "ltr", "ar": "rtl"}
BLOCKING = ("serious", "critical")
_RUN_AXE = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations.map(v => ({
    id: v.id,
    impact: v.impact,
    help: v.help,
    targets: v.nodes.map(n => n.target.join(" ")),
  }));
}"""

Action = Callable[[Page], None]


class Audit:
    """Audits pages and gathers their problems."""

    def __init__(self, new_context: ContextFactory, base_url: str) -> None:
        self.new_context = new_context
        self.base_url = base_url
        self.problems: list[str] = []
        self.audited: list[str] = []

    def page(
        self,
        name: str,
        path: str,
        cookies_from: BrowserContext | None = None,
        action: Action | None = None,
    ) -> None:
        """Audit ``path`` in each language (``action`` then leads to the page to check)."""
        for lang, direction in LANGUAGES.items():
            state: Any = cookies_from.storage_state() if cookies_from is not None else None
            ctx = self.new_context(bypass_csp=True, storage_state=state)
            try:
                page = new_page(ctx)
                page.goto(f"{self.base_url}{path}?lang={lang}")
                if action is not None:
                    action(page)
                self._check(page, f"{name} [{lang}]", lang, direction)
            finally:
                ctx.close()

    def staff_page(self, name: str, path: str, cookies_from: BrowserContext) -> None:
        """Audit a staff page (English only: the staff pages are not translated)."""
        ctx = self.new_context(bypass_csp=True, storage_state=cookies_from.storage_state())
        try:
            page = new_page(ctx)
            page.goto(f"{self.base_url}{path}")
            self._check(page, name, "en", "ltr")
        finally:
            ctx.close()

    def _check(self, page: Page, label: str, lang: str, direction: str) -> None:
        self.audited.append(label)
        if html_language(page) != (lang, direction):
            self.problems.append(
                f"{label}: <html> is {html_language(page)}, not {lang}/{direction}"
            )
        width = page_width(page)
        if width > PHONE["width"]:
            self.problems.append(
                f"{label}: {width} CSS px wide on a {PHONE['width']} px phone: scrolls "
                "sideways (WCAG 1.4.10 Reflow)"
            )
        page.add_script_tag(path=str(AXE))
        for v in page.evaluate(_RUN_AXE):
            if v["impact"] in BLOCKING:
                targets = "; ".join(v["targets"][:5])
                self.problems.append(f"{label}: {v['impact']} {v['id']} ({v['help']}): {targets}")


def type_code(code: str) -> Action:
    def act(page: Page) -> None:
        page.locator("#code").fill(code)
        page.locator("#verify").press("Enter")
        expect(page.locator("#code-error")).to_be_visible()

    return act


def share(email: str, mobile: str = "", show_code: bool = False, expect_id: str = "") -> Action:
    def act(page: Page) -> None:
        page.locator("#share-email").fill(email)
        if mobile:
            page.locator("#share-mobile").fill(mobile)
        if show_code:
            page.locator("#share-show-code").press("Space")
            expect(page.locator("#share-show-code")).to_be_checked()
        page.locator("#share-submit").press("Enter")
        expect(page.locator(f"#{expect_id}")).to_be_visible()

    return act


def test_patient_pages_are_accessible(site: Site, new_context: ContextFactory) -> None:
    need("axe-core", os.path.isfile(AXE))
    _ref, link = patient_link(site, "ACCA11Y")
    audit = Audit(new_context, site.base_url)

    # The neutral page (any unusable link) and the signed-out page: no cookies needed.
    audit.page("neutral", "/access")
    audit.page("signed out", "/files")

    journey = new_context()
    page = new_page(journey)
    page.goto(link)
    page.wait_for_url(site.base_url + "/access")
    assert_cookie(journey, "__Host-link")
    audit.page("access", "/access", journey)

    seen = len(site.sms_to(PATIENT_MOBILE))
    page.locator("#send-code").click()
    page.wait_for_url(site.base_url + "/access/verify")
    code = site.wait_code(PATIENT_MOBILE, seen)
    audit.page("verify", "/access/verify", journey)
    wrong = "000000" if code != "000000" else "111111"
    audit.page("verify, wrong code", "/access/verify", journey, type_code(wrong))

    page.locator("#code").fill(code)
    page.locator("#verify").click()
    page.wait_for_url(site.base_url + "/files")
    audit.page("files", "/files", journey)
    audit.page(
        "files, share errors",
        "/files",
        journey,
        share(CLINICIAN_EMAIL, mobile="12", expect_id="share-errors"),
    )
    audit.page(
        "files, shown code",
        "/files",
        journey,
        share(CLINICIAN_EMAIL, show_code=True, expect_id="share-code"),
    )

    assert len(audit.audited) == 2 * 8, audit.audited
    assert not audit.problems, "accessibility problems:\n" + "\n".join(audit.problems)


def _held_for_staff_by_policy(site: Site, ref: str) -> str:
    """Hold ``ref`` as the release policy does when the report did not come by max_wait
    (``max_wait_passed``, since 2026-03-02 09:00 UTC), in the node's own database."""
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from release.embargo import ACTOR, MAX_WAIT
    from release.progress import note
    from store.models import ReleaseRequest

    since = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    engine = create_engine(f"sqlite:///{site.node.data_dir / 'courier.db'}")
    try:
        with Session(engine) as s, s.begin():
            req = s.scalars(select(ReleaseRequest).where(ReleaseRequest.reference == ref)).one()
            req.hold_kind, req.hold_until, req.hold_checked_at = MAX_WAIT, None, since
            why = (
                "the final report did not come by 2026-03-02 23:00 +14 (rule us-report: "
                "max_wait 7d from arrival): held for staff to decide"
            )
            note(s, req, ACTOR, why, since)
    finally:
        engine.dispose()
    return ref


def test_staff_studies_pages_are_accessible(
    site: Site, new_context: ContextFactory, screenshot_dir: Path
) -> None:
    """The staff Studies page, a held study's page, a request waiting with its reason,
    the dashboard (with requests staff hold), the held requests and the HTML error pages
    (staff in English; the patient's 404 in both languages): axe 0 serious/critical,
    each fits the phone. With
    ``COURIER_SCREENSHOTS=1`` the Studies page and the waiting request go to
    docs/screenshots. The held study is then attached from the request page (a plain
    form, no JavaScript)."""
    need("axe-core", os.path.isfile(AXE))
    add_staff_user(site)
    site.push("ACCHELD1")  # by-accession matches, but no request has the key: held
    uid = wait_for_study(site, "ACCHELD1")
    ref = site.create_request("ACCWAIT1")  # nothing with this accession has arrived
    # Two requests staff hold: one until released (the dashboard's "held for you to
    # decide"), one until a time (its "held by the release policy" section).
    held = {
        site.create_request("ACCHOLD1"): "",
        site.create_request("ACCHOLD2"): "2099-01-01T10:00",
    }

    ctx = new_context()  # the portal's CSP intact
    page = new_page(ctx)
    sign_in(page, site)
    page.locator("a[href='/staff/studies']").first.click()
    page.wait_for_url(site.base_url + "/staff/studies")
    expect(page.locator("#studies")).to_contain_text("ACCHELD1")
    expect(page.locator("#studies .state-held").first).to_be_visible()
    page.locator("#search").evaluate("e => e.scrollIntoView({block: 'start'})")  # results
    screenshot(page, screenshot_dir, "staff-studies.png")
    page.goto(f"{site.base_url}/staff/requests/{ref}")
    expect(page.locator("#waiting .wait-none-arrived")).to_contain_text("ACCWAIT1")
    expect(page.locator("#candidate-studies")).to_contain_text("ACCHELD1")
    screenshot(page, screenshot_dir, "staff-request-waiting.png")
    for held_ref, until in held.items():
        page.goto(f"{site.base_url}/staff/requests/{held_ref}")
        page.locator("#hold-until").fill(until)
        page.locator("#hold-reason").fill("ask the consultant first")
        page.locator("#action-hold").click()
        page.wait_for_url(f"{site.base_url}/staff/requests/{held_ref}?done=hold")
    # A third whose final report did not come by max_wait (the policy's own kind and
    # line, written as release.embargo writes them): the dashboard says why.
    late = _held_for_staff_by_policy(site, site.create_request("ACCHOLD3"))
    page.goto(f"{site.base_url}/staff")
    expect(page.locator("#needs-decision")).to_contain_text(next(iter(held)))
    expect(page.locator(f"#held-for-staff-{late}")).to_contain_text("max_wait 7d")
    # Checked: the site's local time (Pacific/Kiritimati, UTC+14) with its zone.
    expect(page.locator(f"#held-for-staff-{late} time")).to_have_text("2026-03-02 23:00 +14")
    expect(page.locator("#held-count-max-wait")).to_have_text("1")
    expect(page.locator("#held-staff-until")).to_be_visible()
    page.goto(f"{site.base_url}/staff/requests/{ref}")  # back to the waiting request

    audit = Audit(new_context, site.base_url)
    staff_pages = {
        "studies": "/staff/studies",
        "studies, held only": "/staff/studies?status=held",
        "studies, bad search": "/staff/studies?date=soon",
        "held study": f"/staff/studies/{uid}",
        "request waiting": f"/staff/requests/{ref}",
        "dashboard": "/staff",
        "requests, held only": "/staff/requests?hold=held",
        "staff 404": "/staff/nowhere",
    }
    for name, path in staff_pages.items():
        audit.staff_page(name, path, ctx)
    audit.page("patient 404", "/nowhere")
    assert len(audit.audited) == len(staff_pages) + 2, audit.audited
    assert not audit.problems, "accessibility problems:\n" + "\n".join(audit.problems)

    page.locator("#attach-c1").click()  # from the request page, as staff would
    page.wait_for_url(f"{site.base_url}/staff/requests/{ref}?done=study-attach")
    expect(page.locator("#matched-studies")).to_contain_text("ACCHELD1")

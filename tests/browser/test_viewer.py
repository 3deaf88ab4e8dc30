"""The portal's image viewer in Chromium, under the portal's real CSP.

The patient opens the viewer from the files page: the first image is drawn, the arrow
key shows the next slice, a preset changes the picture, with no console error and no
CSP violation (``securitypolicyviolation`` listened for from the first script); axe finds
nothing serious (English and Arabic). With JavaScript disabled the plain links do the
same. A clinician's grant can view; once the patient stops that share, it cannot.
Screenshots (phone and desktop) go to ``docs/screenshots`` with ``COURIER_SCREENSHOTS=1``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.conftest import (
    AXE,
    CLINICIAN2_EMAIL,
    PATIENT_MOBILE,
    SCREENSHOT_MAX_BYTES,
    ContextFactory,
    Site,
    assert_fits_phone,
    new_page,
    patient_link,
    screenshot,
    text_of,
)
from tests.browser.test_patient_journey import open_link, share_row, sign_in_with_sms
from tests.conftest import need

pytestmark = pytest.mark.peers  # Chromium and dcmtk

# Installed before any page script: every CSP violation is kept for the test to read.
WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(e.violatedDirective + " " + e.blockedURI);
});
"""
_RUN_AXE = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations
    .filter(v => v.impact === "serious" || v.impact === "critical")
    .map(v => v.id + " " + v.nodes.map(n => n.target.join(" ")).join("; "));
}"""
DESKTOP = {"width": 1280, "height": 800}


def drawn(page: Page, fragment: str) -> None:
    """Wait (bounded) until the viewer's image is ``fragment``'s and is drawn."""
    page.wait_for_function(
        """(frag) => {
          const img = document.getElementById("view-image");
          return img && img.src.includes(frag) && img.complete && img.naturalWidth > 0;
        }""",
        arg=fragment,
    )


def picture(page: Page) -> bytes:
    return page.locator("#view-image").screenshot(animations="disabled")


def watch(ctx: BrowserContext) -> list[str]:
    """Console errors and uncaught exceptions of every page of ``ctx`` (CSP violations
    log one too)."""
    errors: list[str] = []
    ctx.add_init_script(WATCH_CSP)

    def console(msg: Any) -> None:
        where = str(msg.location.get("url", ""))
        if msg.type == "error" and not where.endswith("/favicon.ico"):  # the browser's own
            errors.append(f"{msg.text} ({where})")

    ctx.on("console", console)
    ctx.on("page", lambda page: page.on("pageerror", lambda exc: errors.append(str(exc))))
    return errors


def sign_in(site: Site, ctx: BrowserContext, link: str) -> Page:
    page = new_page(ctx)
    open_link(page, link, site.base_url)
    sign_in_with_sms(page, site, PATIENT_MOBILE)
    page.locator("#verify").click()
    page.wait_for_url(site.base_url + "/files")
    return page


def save_shot(page: Page, directory: Path, name: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    page.screenshot(path=str(path), full_page=False, animations="disabled", caret="hide")
    assert path.stat().st_size < SCREENSHOT_MAX_BYTES


def test_the_viewer_with_and_without_javascript_and_for_a_clinician(
    site: Site, new_context: ContextFactory, screenshot_dir: Path
) -> None:
    _ref, link = patient_link(site, "ACCVIEW1")
    patient_ctx = new_context()
    errors = watch(patient_ctx)
    patient = sign_in(site, patient_ctx, link)

    # -- with JavaScript: open, draw, next slice by the arrow key, a preset -------------
    patient.locator("#view-study-1").click()
    patient.wait_for_url(site.base_url + "/files/view/1/1/1")
    drawn(patient, "/files/view/1/1/1/image")
    expect(patient.locator("#view-number")).to_have_text("Image 1 of 4")
    expect(patient.locator("#view-slider")).to_be_visible()  # the script ran
    assert_fits_phone(patient)
    screenshot(patient, screenshot_dir, "viewer-phone.png")

    first = picture(patient)
    patient.locator("body").press("ArrowRight")
    expect(patient.locator("#view-number")).to_have_text("Image 2 of 4")
    drawn(patient, "/files/view/1/1/2/image")
    assert patient.url == site.base_url + "/files/view/1/1/2"
    second = picture(patient)
    assert second != first

    patient.locator("#preset-lung").click()
    drawn(patient, "/files/view/1/1/2/image?w=lung")
    expect(patient.locator("#preset-lung")).to_have_attribute("aria-current", "true")
    assert picture(patient) != second
    patient.locator("#view-next").click()
    drawn(patient, "/files/view/1/1/3/image?w=lung")

    # Drag on the image: a window of its own (centre and width from the lung preset's).
    box = patient.locator("#view-stage").bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    patient.mouse.move(x, y)
    patient.mouse.down()
    patient.mouse.move(x - 60, y + 40, steps=4)
    patient.mouse.up()
    patient.wait_for_function(
        """() => { const i = document.getElementById("view-image");
                   return i.src.includes("/files/view/1/1/3/image?c=") && i.naturalWidth > 0; }"""
    )
    expect(patient.locator("#view-window")).to_contain_text("Window centre")

    csp = patient.evaluate("window.__csp")
    assert csp == [], f"CSP violations: {csp}"
    assert errors == [], f"console errors: {errors}"

    # -- axe on the viewer, English and Arabic (a context that may inject axe) ----------
    need("axe-core", os.path.isfile(AXE))
    state: Any = patient_ctx.storage_state()
    for lang in ("en", "ar"):
        audit_ctx = new_context(bypass_csp=True, storage_state=state)
        page = new_page(audit_ctx)
        page.goto(f"{site.base_url}/files/view/1/1/1?lang={lang}")
        drawn(page, "/files/view/1/1/1/image")
        page.add_script_tag(path=str(AXE))
        found = page.evaluate(_RUN_AXE)
        assert found == [], f"axe [{lang}]: {found}"
        audit_ctx.close()

    # -- desktop screenshot --------------------------------------------------------------
    desk_ctx = new_context(storage_state=state, viewport=DESKTOP, is_mobile=False, has_touch=False)
    desk = new_page(desk_ctx)
    desk.goto(f"{site.base_url}/files/view/1/1/2?w=soft")
    drawn(desk, "/files/view/1/1/2/image?w=soft")
    save_shot(desk, screenshot_dir, "viewer-desktop.png")

    # -- without JavaScript: the same moves through plain links --------------------------
    plain_ctx = new_context(storage_state=state, java_script_enabled=False)
    plain = new_page(plain_ctx)
    images: list[tuple[str, int, str]] = []
    plain.on(
        "response",
        lambda r: (
            images.append((r.url, r.status, r.headers.get("content-type", "")))
            if "/image" in r.url
            else None
        ),
    )
    plain.goto(f"{site.base_url}/files/view/1/1/1")
    expect(plain.locator("#view-slider")).to_be_hidden()  # no script: no slider
    plain.locator("#view-next").click()
    plain.wait_for_url(site.base_url + "/files/view/1/1/2")
    expect(plain.locator("#view-number")).to_have_text("Image 2 of 4")
    plain.locator("#preset-bone").click()
    plain.wait_for_url(site.base_url + "/files/view/1/1/2?w=bone")
    plain.locator("#view-prev").click()
    plain.wait_for_url(site.base_url + "/files/view/1/1/1?w=bone")
    box = plain.locator("#view-image").bounding_box()
    assert box is not None and box["width"] > 0 and box["height"] > 0
    expected = ["/1/1/1/image", "/1/1/2/image", "/1/1/2/image?w=bone", "/1/1/1/image?w=bone"]
    for fragment in expected:
        assert any(
            url.endswith(fragment) and status == 200 and kind == "image/jpeg"
            for url, status, kind in images
        ), f"{fragment} not loaded: {images}"

    # -- a clinician's grant can view; stopped, it cannot ---------------------------------
    patient.goto(site.base_url + "/files")
    patient.locator("#share-email").fill(CLINICIAN2_EMAIL)
    patient.locator("#share-show-code").check()
    patient.locator("#share-submit").click()
    shown = re.sub(r"\D", "", patient.locator("#share-code").text_content() or "")
    _row, grant_id = share_row(patient, CLINICIAN2_EMAIL)
    gp_link = site.link_in(site.wait_mail(CLINICIAN2_EMAIL, lambda m: "/d/" in text_of(m)))
    gp_ctx = new_context()
    gp_errors = watch(gp_ctx)
    gp = new_page(gp_ctx)
    open_link(gp, gp_link, site.base_url)
    gp.locator("#enter-code").click()
    gp.wait_for_url(site.base_url + "/access/verify")
    gp.locator("#code").fill(shown)
    gp.locator("#verify").click()
    gp.wait_for_url(site.base_url + "/files")
    gp.locator("#view-study-1").click()
    drawn(gp, "/files/view/1/1/1/image")
    gp.keyboard.press("End")
    expect(gp.locator("#view-number")).to_have_text("Image 4 of 4")
    drawn(gp, "/files/view/1/1/4/image")
    assert gp_errors == [] and gp.evaluate("window.__csp") == []

    patient.goto(site.base_url + "/files")
    patient.locator(f"#revoke-{grant_id}").click()
    expect(patient.locator(f"#revoke-{grant_id}")).to_have_count(0)
    response = gp.goto(f"{site.base_url}/files/view/1/1/1")
    assert response is not None and response.status == 401
    expect(gp.locator("#view-image")).to_have_count(0)
    image = gp.request.get(f"{site.base_url}/files/view/1/1/1/image")
    assert image.status == 401 and not image.body().startswith(b"\xff\xd8")

"""The offline viewer opened the way a patient opens it: from the unzipped package (or the
disc image's files) with ``file://``, in Chromium with the network off."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pycdlib
import pytest
from playwright.sync_api import ConsoleMessage, Page

from delivery.disc import write_disc_image
from delivery.packaging.package import build_package
from delivery.packaging.viewer import ViewerOptions
from tests import synthetic
from tests.browser.conftest import ContextFactory, screenshot
from tests.delivery.test_package import INFO, items_for

OPTIONS = ViewerOptions(max_side=256)


def _unzipped(tmp_path: Path) -> Path:
    paths = synthetic.make_ct_series(tmp_path / "src", n_slices=4, rows=64, cols=64)
    paths += synthetic.make_small_instances(tmp_path / "small", n=3, n_series=1)
    result = build_package(items_for(paths), tmp_path / "out", info=INFO, viewer=OPTIONS)
    root = tmp_path / "unzipped"
    with zipfile.ZipFile(result.parts[0]) as zf:
        zf.extractall(root)
    return root


def _disc_tree(tmp_path: Path) -> Path:
    """The disc image's files as a computer shows them (the Joliet names), extracted."""
    paths = synthetic.make_ct_series(tmp_path / "src", n_slices=4, rows=64, cols=64)
    image = tmp_path / "disc.iso"
    write_disc_image(items_for(paths), image, info=INFO, viewer=OPTIONS)
    root = tmp_path / "disc"
    iso = pycdlib.PyCdlib()
    iso.open(str(image))
    try:
        for parent, _dirs, files in iso.walk(joliet_path="/"):
            folder = root / parent.lstrip("/")
            folder.mkdir(parents=True, exist_ok=True)
            for name in files:
                source = f"{parent.rstrip('/')}/{name}"
                iso.get_file_from_iso(str(folder / name), joliet_path=source)
    finally:
        iso.close()
    return root


def _watch(page: Page) -> list[str]:
    errors: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            errors.append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def _drawn(page: Page, selector: str) -> Any:
    return page.wait_for_function(
        "s => { const i = document.querySelector(s);"
        " return i && i.complete && i.naturalWidth > 0 ? i.getAttribute('src') : null; }",
        arg=selector,
    ).json_value()


def _browse(new_context: ContextFactory, start: Path) -> None:
    ctx = new_context(offline=True)
    page = ctx.new_page()
    errors = _watch(page)
    page.goto(start.as_uri())
    page.wait_for_url("**/VIEWER/index.html")
    first = _drawn(page, "#view")
    assert first.endswith("00001.jpg")
    assert page.locator("#list").is_hidden()
    assert "1" in page.locator("#counter").inner_text()
    page.keyboard.press("ArrowRight")
    page.wait_for_function("() => document.getElementById('view').src.endsWith('00002.jpg')")
    assert _drawn(page, "#view").endswith("00002.jpg")
    assert "2" in page.locator("#counter").inner_text()
    page.locator("#next").click()
    page.wait_for_function("() => document.getElementById('view').src.endsWith('00003.jpg')")
    _drawn(page, "#view")
    page.locator("#prev").click()
    page.wait_for_function("() => document.getElementById('view').src.endsWith('00002.jpg')")
    assert errors == []


def test_the_unzipped_package_opens_offline(new_context: ContextFactory, tmp_path: Path) -> None:
    root = _unzipped(tmp_path)
    _browse(new_context, root / "VIEWER" / "index.html")


def test_the_series_picker_shows_another_series(
    new_context: ContextFactory, tmp_path: Path
) -> None:
    root = _unzipped(tmp_path)
    page = new_context(offline=True).new_page()
    errors = _watch(page)
    page.goto((root / "VIEWER" / "index.html").as_uri())
    _drawn(page, "#view")
    assert page.locator("#series-picker option").count() == 2
    page.locator("#series-picker").select_option("1")
    page.wait_for_function("() => document.getElementById('view').src.includes('/S002/')")
    _drawn(page, "#view")
    assert errors == []


def test_without_javascript_the_plain_list_works(
    new_context: ContextFactory, tmp_path: Path
) -> None:
    root = _unzipped(tmp_path)
    page = new_context(offline=True, java_script_enabled=False).new_page()
    page.goto((root / "VIEWER" / "index.html").as_uri())
    assert page.locator("#viewer").is_hidden()
    links = page.locator("ol.images a")
    assert links.count() == 7
    _drawn(page, "img.first")
    links.nth(1).click()
    page.wait_for_url("**/S001/00002.jpg")


def test_the_disc_opens_offline_from_index_htm(new_context: ContextFactory, tmp_path: Path) -> None:
    root = _disc_tree(tmp_path)
    assert (root / "INDEX.HTM").is_file()
    _browse(new_context, root / "INDEX.HTM")


@pytest.mark.parametrize("width", [360])
def test_fits_a_phone(new_context: ContextFactory, tmp_path: Path, width: int) -> None:
    root = _unzipped(tmp_path)
    page = new_context(offline=True, viewport={"width": width, "height": 740}).new_page()
    page.goto((root / "VIEWER" / "index.html").as_uri())
    _drawn(page, "#view")
    assert page.evaluate("document.documentElement.scrollWidth") <= width


def test_screenshot_on_a_phone(
    new_context: ContextFactory, tmp_path: Path, screenshot_dir: Path
) -> None:
    """The README's picture of the offline viewer (COURIER_SCREENSHOTS=1 writes it)."""
    paths = synthetic.make_ct_series(tmp_path / "src", n_slices=5, rows=512, cols=512)
    result = build_package(items_for(paths), tmp_path / "out", info=INFO, viewer=ViewerOptions())
    root = tmp_path / "unzipped"
    with zipfile.ZipFile(result.parts[0]) as zf:
        zf.extractall(root)
    page = new_context(offline=True).new_page()
    page.goto((root / "VIEWER" / "index.html").as_uri())
    _drawn(page, "#view")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("() => document.getElementById('view').src.endsWith('00003.jpg')")
    _drawn(page, "#view")
    screenshot(page, screenshot_dir, "09-offline-viewer.png")


@pytest.mark.parametrize("language", ["en", "ar"])
@pytest.mark.parametrize("javascript", [True, False])
def test_axe_finds_nothing_serious(
    new_context: ContextFactory, tmp_path: Path, language: str, javascript: bool
) -> None:
    import os

    from delivery.packaging.package import PackageInfo
    from tests.browser.conftest import AXE
    from tests.browser.test_accessibility import _RUN_AXE, BLOCKING
    from tests.conftest import need

    need("axe-core", os.path.isfile(AXE))
    paths = synthetic.make_ct_series(tmp_path / "src", n_slices=3, rows=64, cols=64)
    info = PackageInfo(INFO.reference, language, INFO.contact, INFO.created)
    result = build_package(items_for(paths), tmp_path / "out", info=info, viewer=OPTIONS)
    root = tmp_path / "unzipped"
    with zipfile.ZipFile(result.parts[0]) as zf:
        zf.extractall(root)
    page = new_context(offline=True).new_page()
    page.goto((root / "VIEWER" / "index.html").as_uri())
    _drawn(page, "#view")
    if not javascript:  # axe needs script: the no-JavaScript page is the list, shown
        page.evaluate(
            "() => { document.getElementById('viewer').hidden = true;"
            " document.getElementById('list').hidden = false; }"
        )
    page.add_script_tag(path=str(AXE))
    serious = [v for v in page.evaluate(_RUN_AXE) if v["impact"] in BLOCKING]
    assert serious == []

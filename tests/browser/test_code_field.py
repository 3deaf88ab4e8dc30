"""The code field's ``pattern`` as Chromium applies it: a code typed with any script's
digits (and spaces or a dash) can be submitted; letters are stopped by the browser too
(the server refuses them anyway: tests/portal/test_code_digits.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser

TEMPLATE = Path(__file__).resolve().parents[2] / "portal/templates/patient/verify.html.j2"


@pytest.mark.parametrize(
    ("typed", "valid"),
    [
        ("123456", True),
        ("123 456", True),
        ("123-456", True),
        ("١٢٣٤٥٦", True),  # Arabic-Indic
        ("۱۲۳۴۵۶", True),  # Persian
        ("１２３４５６", True),  # full-width
        ("12345a", False),
        ("12.456", False),
    ],
)
def test_the_browser_lets_any_digits_through(browser: Browser, typed: str, valid: bool) -> None:
    match = re.search(r'<input id="code"[^>]*pattern="([^"]*)"', TEMPLATE.read_text())
    assert match is not None
    page = browser.new_page()
    try:
        page.set_content(f'<form><input id="code" pattern="{match.group(1)}"></form>')
        page.locator("#code").fill(typed)
        assert page.evaluate("document.getElementById('code').checkValidity()") is valid
    finally:
        page.close()

"""The portal's catalogs translate every string the pages show; new messages render."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from delivery import messages
from delivery.i18n import LOCALE_DIR
from portal.pages import TEMPLATES

CATALOGS = {"ar": "ar", "zh-Hans": "zh_Hans"}


def page_msgids() -> set[str]:
    found = extract_from_dir(
        str(TEMPLATES),
        method_map=[("**.j2", "jinja2")],
        options_map={"**.j2": {"extensions": "jinja2.ext.i18n"}},
    )
    return {msg for _, _, msg, _, _ in found if isinstance(msg, str)}


@pytest.mark.parametrize("language", ["ar", "zh-Hans"])
def test_portal_catalogs_translate_every_page_string(language: str) -> None:
    po = LOCALE_DIR / CATALOGS[language] / "LC_MESSAGES" / "portal.po"
    with po.open("rb") as f:
        catalog = read_po(f, locale=CATALOGS[language])
    ids = page_msgids()
    assert len(ids) > 50
    for msgid in sorted(ids):
        entry = catalog.get(msgid)
        assert entry is not None and entry.string, f"{language}: untranslated {msgid!r}"
        assert entry.string != msgid
        placeholders = set(re.findall(r"%\((\w+)\)s", msgid))
        assert set(re.findall(r"%\((\w+)\)s", str(entry.string))) == placeholders


@pytest.mark.parametrize("language", ["en", "ar", "zh-Hans"])
@pytest.mark.parametrize("shown", [True, False])
def test_clinician_link_email_names_no_patient(language: str, shown: bool) -> None:
    msg = messages.forward_link_email(
        to="gp@clinic.example",
        link_url="https://courier.example/d/Zx9",
        expires=date(2030, 1, 31),
        hospital="St Elsewhere",
        language=language,
        message_id=f"f-{language}@courier.test",
        shown_code=shown,
        contact="imaging@hospital.example",
    )
    for part in (msg.subject, msg.text, msg.html or ""):
        assert "{{" not in part and "%(" not in part
        assert "gp@clinic.example" not in part
    assert "https://courier.example/d/Zx9" in msg.text
    if language != "en":
        assert "A patient of" not in msg.text and "The link works" not in msg.text


@pytest.mark.parametrize("language", ["en", "ar", "zh-Hans"])
def test_shared_link_used_email(language: str) -> None:
    msg = messages.share_used_email(
        to="patient@example.org",
        opened_at=datetime(2030, 1, 2, 14, 5, tzinfo=UTC),
        hospital="St Elsewhere",
        language=language,
        message_id=f"u-{language}@courier.test",
    )
    assert "2030" in msg.text and "UTC" in msg.text
    assert "patient@example.org" not in msg.text + msg.subject
    if language == "ar":
        assert msg.html is not None and 'dir="rtl"' in msg.html

"""Message composition: every template in every language, catalogs complete, no PHI."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any, get_args

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from delivery import messages
from delivery.channel import OutgoingMessage
from delivery.i18n import LOCALE_DIR, TEMPLATE_DIR
from delivery.sms import is_gsm7, segments

LANGUAGES = ["en", "ar", "zh-Hans"]
CATALOGS = {"ar": "ar", "zh-Hans": "zh_Hans"}
EMAIL, PHONE, CODE = "p.example@patients.example", "+447700900123", "482913"
AT = datetime(2026, 3, 30, 9, 0, tzinfo=UTC)


def template_msgids() -> set[str]:
    found = extract_from_dir(
        str(TEMPLATE_DIR),
        method_map=[("**/readme*.j2", "ignore"), ("**.j2", "jinja2")],
        options_map={"**.j2": {"extensions": "jinja2.ext.i18n"}},
    )
    return {msg for _, _, msg, _, _ in found if isinstance(msg, str)}


def compose(kind: str, language: str) -> OutgoingMessage:
    mid = f"{kind}-{language}@courier.test"
    if kind == "link":
        return messages.link_email(
            to=EMAIL,
            link_url="https://courier.example/l/Zx9",
            expires=date(2030, 1, 31),
            hospital="St Elsewhere",
            language=language,
            message_id=mid,
            contact="imaging@hospital.example",
        )
    if kind == "code_email":
        return messages.code_email(
            to=EMAIL, code=CODE, hospital="St Elsewhere", language=language, message_id=mid
        )
    if kind == "code_sms":
        return messages.code_sms(
            to=PHONE, code=CODE, language=language, sender_name="Courier", message_id=mid
        )
    common: dict[str, Any] = {
        "to": EMAIL,
        "hospital": "St Elsewhere",
        "language": language,
        "message_id": mid,
    }
    link: dict[str, Any] = {
        "link_url": "https://courier.example/l/Zx9",
        "expires": date(2030, 1, 31),
    }
    if kind == "forward_link":
        return messages.forward_link_email(**common, **link, shown_code=True)
    if kind == "share_used":
        return messages.share_used_email(**common, opened_at=AT)
    if kind == "reminder":
        return messages.reminder_email(**common, **link)
    if kind == "report_update":
        return messages.report_update_email(**common, **link)
    if kind.startswith("release_expected_"):
        wait = kind.removeprefix("release_expected_")
        return messages.release_expected_email(
            **common,
            until=AT,
            zone="Europe/London",
            wait="embargo" if wait == "embargo" else "report",
        )
    node_wide = kind in ("rules_reload_failed", "sms_breaker")
    return messages.staff_alert(
        to="staff@hospital.example",
        kind=kind,  # type: ignore[arg-type]
        reference=None if node_wide else "CR-7KQ4-M2XD-9",
        message_id=mid,
        language=language,
    )


KINDS = [
    "link",
    "code_email",
    "code_sms",
    "forward_link",
    "share_used",
    "reminder",
    "report_update",
    "release_expected_embargo",
    "release_expected_report",
    # Staff alerts (messages.AlertKind), every one.
    "overdue",
    "failed",
    "locked",
    "rules_reload_failed",
    "disc",
    "sms_breaker",
    "identity_mismatch",
    "code_undelivered",
    "more_time",
    "release_held",
    "release_rule_missing",
]


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("kind", KINDS)
def test_renders_without_leftovers_or_phi(kind: str, language: str) -> None:
    msg = compose(kind, language)
    for part in (msg.subject, msg.text, msg.html or ""):
        assert "{{" not in part and "%(" not in part and "{%" not in part
        # The recipient never appears in what they (or a lock screen) read.
        assert EMAIL not in part and PHONE not in part
    assert CODE not in msg.subject
    if kind in ("code_email", "code_sms"):
        assert CODE in msg.text
    if msg.html is not None:
        want = "rtl" if language == "ar" else "ltr"
        assert f'<html lang="{language}" dir="{want}">' in msg.html


@pytest.mark.parametrize("language", ["ar", "zh-Hans"])
def test_catalogs_translate_every_template_string(language: str) -> None:
    po = LOCALE_DIR / CATALOGS[language] / "LC_MESSAGES" / "messages.po"
    with po.open("rb") as f:
        catalog = read_po(f, locale=CATALOGS[language])
    for msgid in sorted(template_msgids()):
        entry = catalog.get(msgid)
        assert entry is not None and entry.string, f"{language}: untranslated {msgid!r}"
        assert entry.string != msgid
        placeholders = set(re.findall(r"%\((\w+)\)s", msgid))
        assert set(re.findall(r"%\((\w+)\)s", str(entry.string))) == placeholders


@pytest.mark.parametrize("language", ["ar", "zh-Hans"])
@pytest.mark.parametrize("kind", ["link", "code_email", "overdue", "identity_mismatch"])
def test_no_english_left_in_translations(kind: str, language: str) -> None:
    english = compose(kind, "en")
    translated = compose(kind, language)
    assert translated.subject != english.subject
    for sentence in (
        "Open this secure link",
        "Do not share it",
        "is still missing studies",
        "patient identity differs",
        "automatic message",
        "Your download code",
    ):
        assert sentence not in translated.text


@pytest.mark.parametrize("language", LANGUAGES)
def test_code_sms_is_one_segment(language: str) -> None:
    msg = compose("code_sms", language)
    assert segments(msg.text) == 1
    assert msg.client_ref is not None and msg.client_ref in msg.text
    if language == "en":
        assert is_gsm7(msg.text)


def test_sms_ref_is_stable_per_message_id() -> None:
    assert messages.sms_ref("a@b.c") == messages.sms_ref("a@b.c") != messages.sms_ref("b@b.c")


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (
            lambda: messages.code_sms(
                to=PHONE, code="12345", language="en", sender_name="Courier", message_id="x@y.z"
            ),
            "6 digits",
        ),
        (
            lambda: messages.staff_alert(
                to="s@h.org", kind="failed", reference="Jane Doe", message_id="x@y.z"
            ),
            "reference",
        ),
        (
            lambda: messages.link_email(
                to=EMAIL,
                link_url="javascript:alert(1)",
                expires=date(2030, 1, 1),
                hospital="H",
                language="en",
                message_id="x@y.z",
            ),
            "absolute",
        ),
    ],
)
def test_refuses_bad_input(call: object, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        call()  # type: ignore[operator]


def test_every_staff_alert_kind_is_rendered_above() -> None:
    assert set(get_args(messages.AlertKind)) <= set(KINDS)

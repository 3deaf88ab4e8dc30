"""The emails that carry a link, compared with what they were when the golden file was
written: a refactoring of :mod:`delivery.messages` must not change one byte of them.

Every link-carrying builder, in every language, with and without the contact line and
with each of its own switches. ``.venv/bin/python -m tests.delivery.test_messages_golden``
rewrites the file (only after a change of the templates meant to change them; review
its diff).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from delivery import messages
from delivery.channel import OutgoingMessage

GOLDEN = Path(__file__).parent / "golden" / "link_messages.json"
LANGUAGES = ["en", "ar", "zh-Hans"]
COMPOSED = datetime(2026, 3, 30, 9, 0, tzinfo=UTC)

VARIANTS: dict[str, tuple[Any, dict[str, object]]] = {
    "link": (messages.link_email, {}),
    "forward_link_code_by_sms": (messages.forward_link_email, {"shown_code": False}),
    "forward_link_code_shown": (messages.forward_link_email, {"shown_code": True}),
    "reminder_patient": (messages.reminder_email, {}),
    "reminder_clinician": (messages.reminder_email, {"clinician": True}),
    "report_update": (messages.report_update_email, {}),
}
CONTACTS = {"contact": "Imaging records, 020 7946 0000", "no_contact": ""}


def _compose(variant: str, language: str, contact: str) -> OutgoingMessage:
    build, extra = VARIANTS[variant]
    message: OutgoingMessage = build(
        to="p.example@patients.example",
        link_url="https://courier.example/d/Zx9-token",
        expires=date(2030, 1, 31),
        hospital="St Elsewhere",
        language=language,
        message_id=f"{variant}-{language}@courier.test",
        contact=contact,
        composed_at=COMPOSED,
        **extra,
    )
    return message


def _key(variant: str, language: str, contact: str) -> str:
    return f"{variant}/{language}/{contact}"


def _current() -> dict[str, dict[str, str]]:
    out = {}
    for variant in VARIANTS:
        for language in LANGUAGES:
            for name, contact in CONTACTS.items():
                m = _compose(variant, language, contact)
                out[_key(variant, language, name)] = {
                    "subject": m.subject,
                    "text": m.text,
                    "html": m.html or "",
                }
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("contact", list(CONTACTS))
def test_link_emails_are_unchanged(variant: str, language: str, contact: str) -> None:
    golden = json.loads(GOLDEN.read_text())[_key(variant, language, contact)]
    m = _compose(variant, language, CONTACTS[contact])
    assert {"subject": m.subject, "text": m.text, "html": m.html or ""} == golden


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("url", ["/d/Zx9-token", "javascript:alert(1)", "courier.example/d/x"])
def test_every_link_email_refuses_a_link_that_is_not_absolute(variant: str, url: str) -> None:
    build, extra = VARIANTS[variant]
    with pytest.raises(ValueError, match="absolute http"):
        build(
            to="p.example@patients.example",
            link_url=url,
            expires=date(2030, 1, 31),
            hospital="St Elsewhere",
            language="en",
            message_id="x@courier.test",
            **extra,
        )


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(_current(), indent=1, sort_keys=True, ensure_ascii=False) + "\n")

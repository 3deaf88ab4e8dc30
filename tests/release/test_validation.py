"""The draft's validation, as a table: each bad input names its field and what is expected."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from release.validation import RequestDraft, validation_errors
from tests.release.helpers import MOBILE, draft, draft_data

JUNK_10K = "x" * 10_240
HTML = "<script>alert(1)</script>"
SQL = "x'; DROP TABLE release_requests; --"
ACC = [{"kind": "accession", "value": "A1"}]

BAD: list[tuple[str, dict[str, Any], str, str]] = [
    # (case, overrides, field named, words of the message)
    ("email no at", {"recipient_email": "patient.example.org"}, "recipient_email", "e-mail"),
    ("email no domain", {"recipient_email": "patient@localhost"}, "recipient_email", "e-mail"),
    ("email html", {"recipient_email": f"{HTML}@x.org"}, "recipient_email", "e-mail"),
    ("email 10k", {"recipient_email": JUNK_10K + "@x.org"}, "recipient_email", "at most"),
    ("channel scheme", {"second_channel": "fax:+447911123456"}, "second_channel", "sms:+"),
    ("channel bare", {"second_channel": MOBILE}, "second_channel", "sms:+"),
    ("sms national", {"second_channel": "sms:07911123456"}, "second_channel", "E.164"),
    ("sms no plus", {"second_channel": "sms:447911123456"}, "second_channel", "E.164"),
    ("sms spaces", {"second_channel": "sms:+44 7911 123456"}, "second_channel", "E.164"),
    ("sms letters", {"second_channel": "sms:+44791112345A"}, "second_channel", "E.164"),
    ("sms too short", {"second_channel": "sms:+4412"}, "second_channel", "valid phone"),
    ("sms reserved", {"second_channel": "sms:+447700900123"}, "second_channel", "valid phone"),
    ("sms landline", {"second_channel": "sms:+442079460000"}, "second_channel", "cannot receive"),
    ("sms sql", {"second_channel": f"sms:{SQL}"}, "second_channel", "E.164"),
    (
        "channel = recipient",
        {"second_channel": "email:Patient@EXAMPLE.org"},
        "second_channel",
        "must differ",
    ),
    ("channel bad email", {"second_channel": "email:nobody"}, "second_channel", "e-mail"),
    ("backup bad", {"backup_email": "nobody"}, "backup_email", "e-mail"),
    (
        "backup = recipient",
        {"backup_email": "patient@EXAMPLE.org"},
        "backup_email",
        "must differ",
    ),
    (
        "backup without sms",
        {"second_channel": "email:other@example.org", "backup_email": "b@example.org"},
        "backup_email",
        "only with an sms",
    ),
    ("name html", {"patient_name": HTML}, "patient_name", "not allowed"),
    ("name sql", {"patient_name": SQL}, "patient_name", "not allowed"),
    ("name 10k", {"patient_name": JUNK_10K}, "patient_name", "at most 200"),
    ("name empty", {"patient_name": "   "}, "patient_name", "at least 1"),
    ("name control", {"patient_name": "Test\x1bPatient"}, "patient_name", "control"),
    ("name bidi", {"patient_name": "Test\u202ePatient"}, "patient_name", "control"),
    ("id sql", {"patient_id": SQL}, "patient_id", "not allowed"),
    ("id backslash", {"patient_id": "A\\B"}, "patient_id", "backslash"),
    ("id nul", {"patient_id": "A\x00B"}, "patient_id", "control"),
    ("id 10k", {"patient_id": JUNK_10K}, "patient_id", "at most 64"),
    ("birth text", {"patient_birth_date": "31/01/1970"}, "patient_birth_date", "YYYYMMDD"),
    ("birth invalid", {"patient_birth_date": "19701332"}, "patient_birth_date", "YYYYMMDD"),
    ("birth future", {"patient_birth_date": "29990101"}, "patient_birth_date", "today"),
    ("note 10k", {"note": JUNK_10K}, "note", "at most 2000"),
    ("note control", {"note": "call\x07me"}, "note", "control"),
    ("by html", {"requested_by": HTML}, "requested_by", "not allowed"),
    ("key spaces", {"idempotency_key": "a key"}, "idempotency_key", "not allowed"),
    ("key 10k", {"idempotency_key": JUNK_10K}, "idempotency_key", "at most 200"),
    ("language", {"language": "fr"}, "language", "en, ar, zh-Hans"),
    ("urgency", {"urgency": "asap"}, "urgency", "overnight"),
    ("link days 0", {"link_days": 0}, "link_days", "greater than or equal to 1"),
    ("link days 366", {"link_days": 366}, "link_days", "less than or equal to 365"),
    ("no selection", {"selection": []}, "selection", "at least one"),
    (
        "unknown selector",
        {"selection": [{"kind": "mrn", "value": "1"}]},
        "selection.0.kind",
        "accession",
    ),
    (
        "selector extra",
        {"selection": [{"kind": "accession", "value": "A1", "modality": "CT"}]},
        "selection.0.modality",
        "unknown field",
    ),
    (
        "accession too long",
        {"selection": [{"kind": "accession", "value": "A" * 17}]},
        "selection.0.value",
        "16 characters",
    ),
    (
        "accession backslash",
        {"selection": [{"kind": "accession", "value": "A\\B"}]},
        "selection.0.value",
        "backslash",
    ),
    (
        "accession non-ascii",
        {"selection": [{"kind": "accession", "value": "ÄCC"}]},
        "selection.0.value",
        "ASCII",
    ),
    (
        "uid letters",
        {"selection": [{"kind": "study_uid", "value": "1.2.abc"}]},
        "selection.0.value",
        "UID",
    ),
    (
        "uid double dot",
        {"selection": [{"kind": "study_uid", "value": "1..2"}]},
        "selection.0.value",
        "UID",
    ),
    (
        "uid too long",
        {"selection": [{"kind": "study_uid", "value": "1." * 32 + "1"}]},
        "selection.0.value",
        "",
    ),
    (
        "expected zero",
        {"selection": [{"kind": "accession", "value": "A1", "expected_instances": 0}]},
        "selection.0.expected_instances",
        "",
    ),
    ("duplicate selector", {"selection": ACC + ACC}, "selection", "twice"),
    ("unknown field", {"ward": "7"}, "ward", "unknown field"),
    ("naive due_by", {"due_by": "2030-01-31T18:00:00"}, "due_by", "UTC offset"),
]


@pytest.mark.parametrize(
    ("overrides", "field", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_input_names_the_field(overrides: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        RequestDraft.model_validate(draft_data(**overrides))
    errors = validation_errors(info.value)
    assert [e["field"] for e in errors] == [field], errors
    assert words in errors[0]["message"], errors


def test_missing_fields_are_named() -> None:
    with pytest.raises(ValidationError) as info:
        RequestDraft.model_validate({"selection": ACC})
    fields = {e["field"]: e["message"] for e in validation_errors(info.value)}
    assert set(fields) == {
        "patient_id",
        "patient_name",
        "patient_birth_date",
        "recipient_email",
        "second_channel",
        "requested_by",
    }
    assert set(fields.values()) == {"required"}


def test_good_input_is_normalized() -> None:
    d = draft(
        recipient_email="Patient@EXAMPLE.org",
        second_channel=" SMS:+447911123456 ",
        language="ZH-hans",
        patient_name="  José Müller-O'Brien  ",
        note="line one\nline two\twith tab",
        selection=[
            {"kind": "accession", "value": "ACC-1 "},
            {"kind": "study_uid", "value": "1.2.826.0.1.3680043.8.498.1", "expected_instances": 3},
        ],
    )
    assert d.recipient_email == "Patient@example.org"
    assert d.second_channel == "sms:+447911123456"
    assert d.language == "zh-Hans"
    assert d.patient_name == "José Müller-O'Brien"
    assert d.selection[0].value == "ACC-1"
    assert d.selection[1].expected_instances == 3


@pytest.mark.parametrize("name", ["محمد علي", "王小明", "Ngũgĩ wa Thiong'o", "DOE^JANE"])
def test_names_in_any_script(name: str) -> None:
    assert draft(patient_name=name).patient_name == name


def test_by_reference_needs_no_selection() -> None:
    d = draft(selection=[], by_reference=True)
    assert d.selection == [] and d.by_reference


def test_second_channel_email_other_than_recipient() -> None:
    assert draft(second_channel="email:Code@Example.org").second_channel == "email:Code@example.org"

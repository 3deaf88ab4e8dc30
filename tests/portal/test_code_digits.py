"""Codes typed with any script's decimal digits are the same code; anything else is not a
code (a wrong try, counted like any wrong code)."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from delivery.grants import code_digits
from store.models import Grant
from tests.portal import patient_rig
from tests.portal.patient_rig import Rig, post

# The rig's fixtures, used by name.
rig = patient_rig.rig
built_package = patient_rig.built_package

ARABIC_INDIC = "٠١٢٣٤٥٦٧٨٩"  # U+0660..U+0669
EXTENDED = "۰۱۲۳۴۵۶۷۸۹"  # U+06F0..U+06F9 (Persian, Urdu)
FULL_WIDTH = "０１２３４５６７８９"  # U+FF10..U+FF19
DEVANAGARI = "०१२३४५६७८९"  # U+0966..U+096F


def _in(digits: str, code: str) -> str:
    return "".join(digits[int(c)] for c in code)


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("123456", "123456"),
        (" 123 456 ", "123456"),
        ("123-456", "123456"),
        ("123\u00a0456", "123456"),  # no-break space from a copy and paste
        (_in(ARABIC_INDIC, "907312"), "907312"),
        (_in(EXTENDED, "907312"), "907312"),
        (_in(FULL_WIDTH, "907312"), "907312"),
        (_in(DEVANAGARI, "907312"), "907312"),
        ("12" + _in(ARABIC_INDIC, "34") + _in(FULL_WIDTH, "56"), "123456"),
        ("12345a", None),  # a letter is refused, not dropped
        ("12a3456", None),
        ("12345²", None),  # a superscript is a digit but not a decimal one
        ("١٢٣٤٥Ⅵ", None),  # a Roman numeral is a number, not a decimal digit
        ("12345", None),
        ("1234567", None),  # no silent cut to the first six
        ("", None),
        ("１２３４５６.", None),
    ],
)
def test_code_digits(typed: str, expected: str | None) -> None:
    assert code_digits(typed) == expected


def _tries(rig: Rig, grant_id: int) -> int:
    return rig.grant(grant_id).code_tries


@pytest.mark.parametrize("digits", [ARABIC_INDIC, EXTENDED, FULL_WIDTH])
def test_a_patient_types_the_code_in_their_script(rig: Rig, digits: str) -> None:
    p = rig.patient()
    c = rig.client()
    c.get(f"/d/{p.token}")
    assert post(c, "/access/code").status_code == 303
    code = rig.last_code()
    wrong = _in(digits, "000000" if code != "000000" else "111111")
    assert post(c, "/access/verify", code=wrong).status_code == 400
    assert post(c, "/access/verify", code=code[:5] + "x").status_code == 400
    assert _tries(rig, p.grant_id) == 2  # both counted as wrong tries, as before
    r = post(c, "/access/verify", code=_in(digits, code[:3]) + " " + _in(digits, code[3:]))
    assert r.status_code == 303 and r.headers["location"] == "/files"
    assert c.get("/files").status_code == 200


def test_a_clinician_types_a_shown_code_in_full_width_digits(rig: Rig) -> None:
    p = rig.patient()
    patient = rig.client()
    patient.get(f"/d/{p.token}")
    post(patient, "/access/code")
    post(patient, "/access/verify", code=rig.last_code())
    r = post(patient, "/files/share", email="gp@clinic.example", show_code="1")
    shown = re.search(r'id="share-code" dir="ltr">(\d{6})<', r.text)
    assert shown is not None
    rig.relay()
    [mail] = [m for m in rig.emails() if m["To"] == "gp@clinic.example"]
    token = re.search(r"/d/([A-Za-z0-9_-]+)", mail.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert token is not None
    gp = rig.client()
    gp.get(f"/d/{token.group(1)}")
    assert post(gp, "/access/verify", code="ab" + shown.group(1)[2:]).status_code == 400
    r = post(gp, "/access/verify", code=_in(ARABIC_INDIC, shown.group(1)))
    assert r.status_code == 303
    assert gp.get("/files").status_code == 200
    with rig.db.sessions() as s:
        child = s.scalars(select(Grant).where(Grant.parent_grant_id == p.grant_id)).one()
    assert child.failures == 1  # the letters counted as one wrong try

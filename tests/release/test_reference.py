"""References: format, injected randomness, and the check symbol catching typos."""

from __future__ import annotations

import random

import pytest

from release.reference import ALPHABET, new_reference, normalize_reference


def _refs(n: int = 200) -> list[str]:
    rng = random.Random(20240131)
    return [new_reference(rng) for _ in range(n)]


def test_format_and_alphabet() -> None:
    for ref in _refs():
        prefix, a, b, check = ref.split("-")
        assert (prefix, len(a), len(b), len(check)) == ("CR", 4, 4, 1)
        assert set(a + b + check) <= set(ALPHABET)
        assert len(ref) <= 16  # fits a DICOM SH element (AccessionNumber)
    assert not set("01OILUZ") & set(ALPHABET)


def test_randomness_is_injected() -> None:
    assert new_reference(random.Random(1)) == new_reference(random.Random(1))
    assert new_reference() != new_reference()  # the default draws from the OS


@pytest.mark.parametrize(
    "typed",
    [
        "{r}",
        "{r_lower}",
        "{compact}",
        "{compact_lower}",
        "  {body_spaced}  ",
        "cr_{body}",
        "{body}",
    ],
)
def test_normalize_is_tolerant(typed: str) -> None:
    for ref in _refs(20):
        body = ref[3:].replace("-", "")
        text = typed.format(
            r=ref,
            r_lower=ref.lower(),
            compact=ref.replace("-", ""),
            compact_lower=ref.replace("-", "").lower(),
            body_spaced=" ".join(body),
            body=body,
        )
        assert normalize_reference(text) == ref


@pytest.mark.parametrize(
    "text", ["", "CR", "CR-2345-6789", "CR-2345-6789-AB", "CR-O345-6789-2", "CR-2345-6789-!"]
)
def test_not_a_reference(text: str) -> None:
    assert normalize_reference(text) is None


def test_every_single_substitution_is_caught() -> None:
    for ref in _refs():
        symbols = ref.replace("-", "")[2:]
        for i, original in enumerate(symbols):
            for c in ALPHABET:
                if c != original:
                    typo = symbols[:i] + c + symbols[i + 1 :]
                    assert normalize_reference(typo) is None, (ref, typo)


def test_every_adjacent_swap_is_caught() -> None:
    for ref in _refs():
        symbols = ref.replace("-", "")[2:]
        for i in range(len(symbols) - 1):
            if symbols[i] != symbols[i + 1]:
                swapped = symbols[:i] + symbols[i + 1] + symbols[i] + symbols[i + 2 :]
                assert normalize_reference(swapped) is None, (ref, swapped)

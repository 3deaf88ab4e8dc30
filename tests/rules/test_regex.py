"""Regex guard: useful patterns pass; catastrophic and polynomial ones are refused."""

from __future__ import annotations

import time

import pytest

from rules.regex import MAX_INPUT_LENGTH, compile_pattern

ACCEPTED = [
    r"REF-(?P<reference>[A-Z0-9]+)",
    r"^REF-(\d+)-(\d+)$",
    r"(?i)^ref[-_ ]?(?P<reference>\w+)",
    r"^\s*REF\s*:\s*(\w+)\s*$",
    r"\bCHEST\b",
    r"REF(.*)$",
    r".*x",
    r"^(CT|CR|MR)$",
    r"(?:CT|MR)+",
    r"(\d{2})+x",
    r"(ab|cd)*e",
    r"[^-]*-[^-]*-x",
    r"(a|ab)*c",  # the parser factors out the common 'a': unambiguous
    r"\d{1,3}\.\d{1,3}",
]

REFUSED = [
    (r"(a+)+$", "inside another repeat"),
    (r"(x+x+)+y", "inside another repeat"),
    (r"(\s*,\s*\w+)*", "inside another repeat"),
    (r"(a|aa)*$", "alternatives that can start with the same character"),
    (r"(a|a)*$", "alternatives that can start with the same character"),
    (r"(a?)*", "can match nothing"),
    (r"a.*a.*x", "two open-ended repeats"),
    (r"\w+\w+x", "two open-ended repeats"),
    (r"(.*)REF(.*)$", "two open-ended repeats"),
    (r"a*[ab]*$", "two open-ended repeats"),
    (r"a{0,8}a{0,8}a{0,8}a{0,8}x", "too many ambiguous choices"),
    (r"(a)\1", "backreferences"),
    (r"(?P<x>a)(?P=x)", "backreferences"),
    (r"(a)?(?(1)b|c)", "conditionals"),
    (r"(?=a)", "lookarounds"),
    (r"(?!a)b", "lookarounds"),
    (r"(?<=a)b", "lookarounds"),
    (r"[", "not a valid regular expression"),
    ("a" * 257, "the limit is 256"),
]


@pytest.mark.parametrize("pattern", ACCEPTED)
def test_accepted(pattern: str) -> None:
    compile_pattern(pattern)


@pytest.mark.parametrize(("pattern", "fragment"), REFUSED)
def test_refused(pattern: str, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        compile_pattern(pattern)
    assert fragment in str(caught.value)


def test_ignore_case_is_part_of_the_analysis() -> None:
    compile_pattern(r"a+A")  # 'A' cannot be taken by a+: fine
    with pytest.raises(ValueError):
        compile_pattern(r"a+A+x", ignore_case=True)  # now it can


@pytest.mark.parametrize("pattern", ACCEPTED)
def test_accepted_patterns_stay_fast_on_crafted_input(pattern: str) -> None:
    compiled = compile_pattern(pattern)
    worst = 0.0
    for unit in ("a", "ab", "0", "a-", " ", "REF", "x"):
        text = (unit * MAX_INPUT_LENGTH)[: MAX_INPUT_LENGTH - 1] + "!"
        start = time.perf_counter()
        compiled.search(text)
        worst = max(worst, time.perf_counter() - start)
    assert worst < 0.5  # catastrophic cases take minutes; bounded ones milliseconds

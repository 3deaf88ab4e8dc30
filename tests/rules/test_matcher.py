"""Decisions: a table of (rules, header, association, phase) -> (action, rule, join).

Each operator, each action, precedence and ``continue``, every spelling of an attribute.
The evaluation day is fixed (2024-06-30) so relative dates are deterministic.
"""

from __future__ import annotations

from typing import Any

import pytest

from rules.decision import Phase
from tests.rules.helpers import decide

ACME = 0x00110010  # (0011,xx10) in the block of creator ACME


def hold_when(condition: str) -> str:
    """A rule set: hold as ``hit`` when ``condition`` (one YAML line) holds."""
    return f"""
    rules:
      - name: hit
        when:
          {condition}
        action: hold
    """


# (condition line, header, expected rule: "hit" or None)
OPERATORS: list[Any] = [
    # equals (bare value and explicit), padding, numbers as written, multi-valued
    pytest.param("Modality: CT", {"Modality": "CT"}, "hit", id="equals"),
    pytest.param("Modality: CT", {"Modality": "MR"}, None, id="equals-other"),
    pytest.param("Modality: CT", {}, None, id="equals-absent"),
    pytest.param("Modality: {equals: CT}", {"Modality": "CT "}, "hit", id="equals-explicit-padded"),
    pytest.param("Modality: ct", {"Modality": "CT"}, None, id="equals-case-sensitive"),
    pytest.param(
        "Modality: {equals: ct, ignore_case: true}", {"Modality": "CT"}, "hit", id="equals-any-case"
    ),
    pytest.param(
        "AccessionNumber: 00123", {"AccessionNumber": "00123"}, "hit", id="number-as-text"
    ),
    pytest.param("AccessionNumber: 00123", {"AccessionNumber": "123"}, None, id="number-not-int"),
    pytest.param("SeriesNumber: 1e3", {"SeriesNumber": "1e3"}, "hit", id="float-as-text"),
    pytest.param("ImageType: DERIVED", {"ImageType": ["ORIGINAL", "DERIVED"]}, "hit", id="any-val"),
    # one_of
    pytest.param("Modality: {one_of: [CT, MR]}", {"Modality": "MR"}, "hit", id="one-of"),
    pytest.param("Modality: {one_of: [CT, MR]}", {"Modality": "US"}, None, id="one-of-none"),
    pytest.param(
        "Modality: {one_of: [ct, mr], ignore_case: true}", {"Modality": "MR"}, "hit", id="one-of-ic"
    ),
    # not
    pytest.param("Modality: {not: CT}", {"Modality": "MR"}, "hit", id="not"),
    pytest.param("Modality: {not: CT}", {"Modality": "CT"}, None, id="not-excluded"),
    pytest.param("Modality: {not: CT}", {}, "hit", id="not-absent-holds"),
    pytest.param("Modality: {not: {one_of: [CT, MR]}}", {"Modality": "US"}, "hit", id="not-one-of"),
    pytest.param("Modality: {not: {not: CT}}", {"Modality": "CT"}, "hit", id="not-not"),
    # prefix
    pytest.param(
        "StudyDescription: {prefix: CHEST}", {"StudyDescription": "CHEST PA"}, "hit", id="prefix"
    ),
    pytest.param(
        "StudyDescription: {prefix: CHEST}", {"StudyDescription": "chest"}, None, id="prefix-case"
    ),
    pytest.param(
        "StudyDescription: {prefix: chest, ignore_case: true}",
        {"StudyDescription": "CHEST PA"},
        "hit",
        id="prefix-any-case",
    ),
    # regex: searched, not anchored; bounded input
    pytest.param(
        "StudyDescription: {regex: 'PA$'}", {"StudyDescription": "CHEST PA"}, "hit", id="regex"
    ),
    pytest.param(
        "StudyDescription: {regex: '^PA'}",
        {"StudyDescription": "CHEST PA"},
        None,
        id="regex-anchor",
    ),
    pytest.param(
        "StudyDescription: {regex: 'chest', ignore_case: true}",
        {"StudyDescription": "CHEST PA"},
        "hit",
        id="regex-any-case",
    ),
    pytest.param(
        "StudyComments: {regex: 'x'}", {"StudyComments": "x" * 257}, None, id="regex-too-long"
    ),
    pytest.param(
        "StudyComments: {regex: 'x'}", {"StudyComments": "x" * 256}, "hit", id="regex-at-limit"
    ),
    # present
    pytest.param(
        "AccessionNumber: {present: true}", {"AccessionNumber": "A1"}, "hit", id="present"
    ),
    pytest.param("AccessionNumber: {present: true}", {}, None, id="present-absent"),
    pytest.param(
        "AccessionNumber: {present: true}", {"AccessionNumber": "  "}, None, id="present-blank"
    ),
    pytest.param("AccessionNumber: {present: false}", {}, "hit", id="absent"),
    pytest.param(
        "AccessionNumber: {present: false}", {"AccessionNumber": "A"}, None, id="absent-no"
    ),
    # dates: after/before strict, between inclusive, relative to 2024-06-30
    pytest.param("StudyDate: {after: '20240101'}", {"StudyDate": "20240102"}, "hit", id="after"),
    pytest.param(
        "StudyDate: {after: '20240101'}", {"StudyDate": "20240101"}, None, id="after-strict"
    ),
    pytest.param(
        "StudyDate: {after: 20240101}", {"StudyDate": "20240102"}, "hit", id="after-unquoted"
    ),
    pytest.param(
        "StudyDate: {after: 2024-01-01}", {"StudyDate": "20240102"}, "hit", id="after-iso"
    ),
    pytest.param("StudyDate: {before: '20240101'}", {"StudyDate": "20231231"}, "hit", id="before"),
    pytest.param(
        "StudyDate: {before: '20240101'}", {"StudyDate": "20240101"}, None, id="before-strict"
    ),
    pytest.param(
        "StudyDate: {between: ['20240101', '20240131']}",
        {"StudyDate": "20240131"},
        "hit",
        id="between",
    ),
    pytest.param(
        "StudyDate: {between: ['20240101', '20240131']}",
        {"StudyDate": "20240201"},
        None,
        id="between-out",
    ),
    pytest.param("StudyDate: {after: -30d}", {"StudyDate": "20240601"}, "hit", id="relative-in"),
    pytest.param("StudyDate: {after: -30d}", {"StudyDate": "20240531"}, None, id="relative-edge"),
    pytest.param("StudyDate: {before: -365d}", {"StudyDate": "20230101"}, "hit", id="relative-old"),
    pytest.param(
        "StudyDate: {after: '20240101'}", {"StudyDate": "2024.03.01"}, "hit", id="acr-nema-date"
    ),
    pytest.param("StudyDate: {after: '20240101'}", {"StudyDate": "garbage"}, None, id="not-a-date"),
    pytest.param(
        "AcquisitionDateTime: {after: '20240101'}",
        {"AcquisitionDateTime": "20240301120000"},
        "hit",
        id="datetime",
    ),
    pytest.param(
        "StudyDate: {after: '20240101', before: '20240301'}",
        {"StudyDate": "20240201"},
        "hit",
        id="range",
    ),
    # several operators in one condition: all must hold
    pytest.param(
        "AccessionNumber: {prefix: A, not: {equals: AB}}",
        {"AccessionNumber": "AC"},
        "hit",
        id="and",
    ),
    pytest.param(
        "AccessionNumber: {prefix: A, not: {equals: AB}}",
        {"AccessionNumber": "AB"},
        None,
        id="and-no",
    ),
    # attribute spellings: keyword, tag forms, private with creator, association
    pytest.param("'(0008,0060)': CT", {"Modality": "CT"}, "hit", id="tag-parens"),
    pytest.param("'00080060': CT", {"Modality": "CT"}, "hit", id="tag-bare"),
    pytest.param("00080060: CT", {"Modality": "CT"}, "hit", id="tag-unquoted"),
    pytest.param("'(0008,0060)': CT", {"Modality": "MR"}, None, id="tag-other"),
    pytest.param("'(0011,xx10)@ACME': REF1", {(ACME, "ACME"): "REF1"}, "hit", id="private"),
    pytest.param("'0011xx10@ACME': REF1", {(ACME, "ACME"): "REF1"}, "hit", id="private-bare"),
    pytest.param("'(0011,XX10)@ACME': REF1", {(ACME, "OTHER"): "REF1"}, None, id="private-creator"),
    pytest.param(
        "'(0011,0010)': ACME", {(ACME, None): "ACME"}, "hit", id="private-creator-element"
    ),
]


@pytest.mark.parametrize(("condition", "header", "rule"), OPERATORS)
def test_operator(condition: str, header: dict[Any, Any], rule: str | None) -> None:
    decision = decide(hold_when(condition), header)
    assert decision.rule == rule
    assert decision.action == "hold"  # matched or not: hold (no rule = hold)
    if rule is None:
        assert decision.reason == "no rule matched"
        assert not decision.trace[0].matched


ASSOCIATION: list[Any] = [
    pytest.param("calling_ae: PACS1", {"calling_ae": "PACS1"}, "hit", id="calling"),
    pytest.param("calling_ae: PACS1", {"calling_ae": "PACS2"}, None, id="calling-other"),
    pytest.param("called_ae: {one_of: [COURIER, CD]}", {"called_ae": "CD"}, "hit", id="called"),
    pytest.param("peer_host: {prefix: '10.1.'}", {"peer_host": "10.1.2.3"}, "hit", id="host"),
    pytest.param("peer_host: {present: true}", {}, None, id="host-absent"),
]


@pytest.mark.parametrize(("condition", "association", "rule"), ASSOCIATION)
def test_association(condition: str, association: dict[str, str], rule: str | None) -> None:
    assert decide(hold_when(condition), {}, **association).rule == rule


RULES = """
rules:
  - name: refuse-test
    when: {calling_ae: TEST}
    action: reject
    reason: test node
  - name: by-accession
    when:
      Modality: {one_of: [CT, MR]}
    action: release
    join: {accession: AccessionNumber}
    continue: true
  - name: by-reference
    when:
      RequestedProcedureDescription: {regex: 'REF-'}
    action: release
    join:
      reference:
        from: RequestedProcedureDescription
        pattern: 'REF-(?P<reference>[A-Z0-9]+)'
  - name: by-private
    when:
      '(0011,xx10)@ACME': {present: true}
    action: release
    join:
      patient_id: PatientID
      study_uid: StudyInstanceUID
      reference: {from: '(0011,xx10)@ACME', pattern: '^(?P<reference>\\d+)$'}
  - name: scouts
    when:
      SeriesDescription: {prefix: SCOUT}
    action: discard
    retention_days: 7
  - name: research
    when:
      called_ae: RESEARCH
    action: hold
    reason: research studies wait for staff
    continue: true
  - name: research-audit
    when:
      called_ae: RESEARCH
    action: hold
    reason: second hold
"""

# (header, association, phase, action, rule, join, joins)
DECISIONS: list[Any] = [
    pytest.param(
        {"Modality": "CT", "AccessionNumber": "ACC1"},
        {},
        "stable",
        "release",
        "by-accession",
        {"accession": "ACC1"},
        1,
        id="release-accession",
    ),
    pytest.param(
        {"Modality": "CT", "AccessionNumber": "ACC1", "RequestedProcedureDescription": "x REF-9Z"},
        {},
        "stable",
        "release",
        "by-accession",
        {"accession": "ACC1"},
        2,
        id="continue-collects-joins",
    ),
    pytest.param(
        {"Modality": "CT", "RequestedProcedureDescription": "CHEST REF-AB12"},
        {},
        "stable",
        "release",
        "by-reference",
        {"reference": "AB12"},
        1,
        id="join-absent-falls-through",
    ),
    pytest.param(
        {"Modality": "US", "RequestedProcedureDescription": "REF-lower"},
        {},
        "stable",
        "hold",
        None,
        {},
        0,
        id="join-pattern-miss",
    ),
    pytest.param(
        {(ACME, "ACME"): "12345", "PatientID": "P1", "StudyInstanceUID": "1.2.3"},
        {},
        "stable",
        "release",
        "by-private",
        {"patient_id": "P1", "study_uid": "1.2.3", "reference": "12345"},
        1,
        id="private-join",
    ),
    pytest.param(
        {"Modality": "CT", "AccessionNumber": ["A", "B"]},
        {},
        "stable",
        "hold",
        None,
        {},
        0,
        id="join-needs-one-value",
    ),
    pytest.param(
        {"SeriesDescription": "SCOUT 1"}, {}, "stable", "discard", "scouts", {}, 0, id="discard"
    ),
    pytest.param(
        {"Modality": "US"},
        {"called_ae": "RESEARCH"},
        "stable",
        "hold",
        "research",
        {},
        0,
        id="hold-continue",
    ),
    pytest.param({"Modality": "US"}, {}, "stable", "hold", None, {}, 0, id="nothing-matches"),
    pytest.param({}, {"calling_ae": "TEST"}, "store", "reject", "refuse-test", {}, 0, id="reject"),
    pytest.param({}, {"calling_ae": "PACS"}, "store", "accept", None, {}, 0, id="accept"),
    pytest.param(
        {"Modality": "CT", "AccessionNumber": "A"},
        {"calling_ae": "TEST"},
        "stable",
        "release",
        "by-accession",
        {"accession": "A"},
        1,
        id="reject-not-at-stable",
    ),
]


@pytest.mark.parametrize(
    ("header", "association", "phase", "action", "rule", "join", "joins"), DECISIONS
)
def test_decision(
    header: dict[Any, Any],
    association: dict[str, str],
    phase: Phase,
    action: str,
    rule: str | None,
    join: dict[str, str],
    joins: int,
) -> None:
    decision = decide(RULES, header, phase, **association)
    assert (decision.action, decision.rule, dict(decision.join)) == (action, rule, join)
    assert len(decision.joins) == joins


def test_decision_details() -> None:
    discard = decide(RULES, {"SeriesDescription": "SCOUT"})
    assert discard.retention_days == 7
    hold = decide(RULES, {}, called_ae="RESEARCH")
    assert hold.reason == "research studies wait for staff"
    assert [m.rule for m in hold.matches] == ["research", "research-audit"]
    reject = decide(RULES, {}, "store", calling_ae="TEST")
    assert reject.reason == "test node"
    # store phase tries reject rules only; stable phase never tries them
    assert [s.rule for s in reject.trace] == ["refuse-test"]
    stable = decide(RULES, {"Modality": "US"})
    assert "refuse-test" not in [s.rule for s in stable.trace]


def test_continue_match_with_other_action_is_noted_not_counted() -> None:
    text = """
    rules:
      - name: first
        when: {Modality: CT}
        action: release
        join: {accession: AccessionNumber}
        continue: true
      - name: fallback
        action: hold
    """
    decision = decide(text, {"Modality": "CT", "AccessionNumber": "A1"})
    assert (decision.action, decision.rule) == ("release", "first")
    assert [m.rule for m in decision.matches] == ["first"]
    last = decision.trace[-1]
    assert (last.rule, last.matched) == ("fallback", True)
    assert "already decided release" in last.why


def test_first_match_wins_without_continue() -> None:
    text = """
    - name: one
      when: {Modality: CT}
      action: hold
    - name: two
      when: {Modality: CT}
      action: discard
    """
    decision = decide(text, {"Modality": "CT"})
    assert decision.rule == "one"
    assert [s.rule for s in decision.trace] == ["one"]  # "two" was never tried


def test_catch_all_with_continue_does_not_shadow() -> None:
    text = """
    rules:
      - name: everything
        action: hold
        continue: true
      - name: ct
        when: {Modality: CT}
        action: hold
    """
    decision = decide(text, {"Modality": "CT"})
    assert [m.rule for m in decision.matches] == ["everything", "ct"]


def test_trace_explains_why_not_without_header_values() -> None:
    decision = decide(hold_when("AccessionNumber: {prefix: SECRET}"), {"AccessionNumber": "ACC-42"})
    step = decision.trace[0]
    assert step == step.__class__(
        "hit", False, "no value of AccessionNumber starts with 'SECRET'", ("ACC-42",)
    )
    assert "ACC-42" not in step.why


def test_wanted_lists_header_keys_only() -> None:
    from tests.rules.helpers import ruleset

    rules = ruleset(RULES)
    assert (0x00080060, None) in rules.wanted  # Modality
    assert (ACME, "ACME") in rules.wanted
    assert (0x00100020, None) in rules.wanted  # PatientID, a join source
    assert all(isinstance(tag, int) for tag, _ in rules.wanted)
    assert len(rules) == 7

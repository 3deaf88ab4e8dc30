"""Loading: every bad input is refused with file, exact line, rule name and what to fix.

The line each error must point at is marked in the YAML with ``# <-``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from rules import RuleSyntaxError, load_rules, load_rules_from_data, load_rules_text
from rules.source import MAX_BYTES, read_yaml_text
from tests.rules.helpers import marked_line

# (yaml with one "# <-" line, rule name or None, fragment of the message)
BAD: list[Any] = [
    pytest.param(
        """
        rules:
          - name: r1
            actoin: hold  # <-
        """,
        "r1",
        "unknown key 'actoin': allowed here are name, description, when, action",
        id="unknown-rule-key",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            report: never  # <-
        """,
        "r1",
        "retention_days, reason, release, reports",
        id="unknown-rule-key-lists-reports",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              AccessionNumber:
                prefx: A  # <-
            action: hold
        """,
        "r1",
        "when.AccessionNumber.prefx: unknown key 'prefx': allowed here are equals, one_of",
        id="unknown-operator",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            action: release
            join:
              accession: {from: AccessionNumber, patern: 'x'}  # <-
        """,
        "r1",
        "unknown key 'patern': allowed here are from, pattern",
        id="unknown-join-key",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            action: hold
            continue: "yes"  # <-
        """,
        "r1",
        "continue: must be true or false (got 'yes')",
        id="wrong-type-bool",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            action: discard
            retention_days: many  # <-
        """,
        "r1",
        "retention_days: must be a whole number (got 'many')",
        id="wrong-type-int",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when: [Modality]  # <-
            action: hold
        """,
        "r1",
        "when: must be a mapping",
        id="wrong-type-when",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              Modality: {one_of: CT}  # <-
            action: hold
        """,
        "r1",
        "when.Modality.one_of: must be a list",
        id="wrong-type-one-of",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              Modality: [CT, MR]  # <-
            action: hold
        """,
        "r1",
        "a list needs an operator: write {one_of: [...]}",
        id="bare-list",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              Modality: true  # <-
            action: hold
        """,
        "r1",
        "true/false is not a value to compare",
        id="bool-value",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              AccessionNumber: ""  # <-
            action: hold
        """,
        "r1",
        "an empty value never matches: use {present: false}",
        id="empty-value",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              Modality:  # <-
            action: hold
        """,
        "r1",
        "no value given",
        id="null-value",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              Modalty: CT  # <-
            action: hold
        """,
        "r1",
        "unknown attribute 'Modalty'",
        id="unknown-keyword",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              modality: CT  # <-
            action: hold
        """,
        "r1",
        "did you mean 'Modality'?",
        id="keyword-case",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              "(0032,1061)": x  # <-
            action: hold
        """,
        "r1",
        "tag (0032,1061) is not in the DICOM dictionary",
        id="unknown-tag",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              "(0011,1010)": x  # <-
            action: hold
        """,
        "r1",
        "name the creator: (0011,xx10)@CREATOR",
        id="private-without-creator",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              "(0011,xx10)": x  # <-
            action: hold
        """,
        "r1",
        "a private attribute needs its creator",
        id="private-block-without-creator",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              "(0008,xx60)@ACME": x  # <-
            action: hold
        """,
        "r1",
        "only private (odd) groups have creator blocks",
        id="creator-on-public-group",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              ReferencedStudySequence: {present: true}  # <-
            action: hold
        """,
        "r1",
        "ReferencedStudySequence holds a sequence",
        id="sequence",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              PixelData: {present: true}  # <-
            action: hold
        """,
        "r1",
        "PixelData holds binary data",
        id="binary",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              StudyDescription:
                regex: "(a+)+$"  # <-
            action: hold
        """,
        "r1",
        "inside another repeat",
        id="dangerous-regex-nested",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              StudyDescription:
                regex: "(a)\\\\1"  # <-
            action: hold
        """,
        "r1",
        "backreferences",
        id="regex-backreference",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              StudyDescription:
                regex: "(?<=a)b"  # <-
            action: hold
        """,
        "r1",
        "lookarounds",
        id="regex-lookbehind",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              StudyDescription:
                regex: "a.*b.*c"  # <-
            action: hold
        """,
        "r1",
        "two open-ended repeats",
        id="regex-polynomial",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              StudyDescription:
                regex: "(unclosed"  # <-
            action: hold
        """,
        "r1",
        "not a valid regular expression",
        id="regex-invalid",
    ),
    pytest.param(
        f"""
        rules:
          - name: r1
            when:
              StudyDescription:
                regex: "{"a" * 257}"  # <-
            action: hold
        """,
        "r1",
        "the limit is 256",
        id="regex-too-long",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            action: hold
          - name: r1  # <-
            action: discard
        """,
        "r1",
        "duplicate rule name (first at line 3)",
        id="duplicate-name",
    ),
    pytest.param(
        """
        rules:
          - name: all
            action: hold
          - name: late  # <-
            when: {Modality: CT}
            action: discard
        """,
        "late",
        "can never match: rule all (line 3) above it matches every study",
        id="after-catch-all",
    ),
    pytest.param(
        """
        rules:
          - name: refuse-all
            when: {}
            action: reject
          - name: late-reject  # <-
            when: {Modality: CT}
            action: reject
        """,
        "late-reject",
        "can never match: rule refuse-all (line 3)",
        id="after-catch-all-reject",
    ),
    pytest.param(
        """
        rules:
          - description: no name  # <-
            action: hold
        """,
        None,
        "missing required key 'name'",
        id="missing-name",
    ),
    pytest.param(
        """
        rules:
          - name: r1  # <-
        """,
        "r1",
        "missing required key 'action'",
        id="missing-action",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            action: relase  # <-
        """,
        "r1",
        "action: must be 'release', 'hold', 'discard' or 'reject' (got 'relase')",
        id="bad-action",
    ),
    pytest.param(
        """
        rules:
          - name: "bad name!"  # <-
            action: hold
        """,
        "bad name!",
        "a rule name is 1 to 64 letters",
        id="bad-name",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            action: hold
            join: {accession: AccessionNumber}  # <-
        """,
        "r1",
        "join applies to release rules only",
        id="join-on-hold",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            action: release  # <-
        """,
        "r1",
        "a release rule needs join",
        id="release-without-join",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            action: release
            join:
              accesion: AccessionNumber  # <-
        """,
        "r1",
        "must be 'accession', 'patient_id', 'study_uid' or 'reference' (got 'accesion')",
        id="unknown-join-field",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            action: release
            join:
              reference:
                from: StudyDescription
                pattern: 'REF-(\\d+)'  # <-
        """,
        "r1",
        "the pattern must name the part to keep: (?P<reference>...)",
        id="join-pattern-without-group",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            action: release
            reason: why  # <-
            join: {accession: AccessionNumber}
        """,
        "r1",
        "reason applies to reject and hold rules only",
        id="reason-on-release",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            action: hold
            retention_days: 3  # <-
        """,
        "r1",
        "retention_days applies to discard rules only",
        id="retention-on-hold",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              StudyTime: {after: '120000'}  # <-
            action: hold
        """,
        "r1",
        "'120000' is not a date",
        id="bad-date",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              StudyDate: {before: '20241345'}  # <-
            action: hold
        """,
        "r1",
        "is not a calendar date",
        id="impossible-date",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              StudyTime: {after: '20240101'}  # <-
            action: hold
        """,
        "r1",
        "after/before/between need a date (VR DA or DT); StudyTime is VR TM",
        id="date-on-time",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              StudyDate: {between: ['20240201', '20240101']}  # <-
            action: hold
        """,
        "r1",
        "the first date must not be after the second",
        id="between-reversed",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              Modality: {present: false, equals: CT}  # <-
            action: hold
        """,
        "r1",
        "present: false cannot hold together",
        id="absent-and-equal",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              Modality: {ignore_case: true}  # <-
            action: hold
        """,
        "r1",
        "give an operator",
        id="no-operator",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            when:
              Modality: {present: true, ignore_case: true}  # <-
            action: hold
        """,
        "r1",
        "ignore_case applies to equals, one_of, prefix and regex only",
        id="ignore-case-alone",
    ),
    pytest.param(
        """
        rules:
          - just a string  # <-
        """,
        None,
        "a rule is a mapping",
        id="rule-not-mapping",
    ),
    # YAML-level refusals (rules.source): no rule name is known there
    pytest.param(
        """
        rules:
          - name: r1
            action: hold
            action: discard  # <-
        """,
        None,
        "duplicate key 'action' (first at line 4)",
        id="duplicate-key",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            action: !!python/object:os.system hold  # <-
        """,
        None,
        "tag 'tag:yaml.org,2002:python/object:os.system' is not allowed",
        id="python-tag",
    ),
    pytest.param(
        """
        a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]  # <-
        b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
        c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
        d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
        rules: [*d,*d,*d,*d,*d,*d,*d,*d,*d]
        """,
        None,
        "anchors and aliases (&, *) are not allowed",
        id="billion-laughs",
    ),
    pytest.param(
        """
        rules:
          - name: r1
            action: hold: discard  # <-
        """,
        None,
        "mapping values are not allowed here",
        id="broken-yaml",
    ),
    # the document's shape
    pytest.param("# nothing here  # <-\n", None, "the file is empty: write 'rules:'", id="empty"),
    pytest.param("just text  # <-\n", None, "the file does not hold rules", id="scalar"),
    pytest.param("rules:  # <-\n", None, "no rules given", id="rules-null"),
    pytest.param("rules: {r1: hold}  # <-\n", None, "must be a list of rules", id="rules-not-list"),
    pytest.param(
        """
        rules: []
        version: 2  # <-
        """,
        None,
        "unknown top-level key 'version'",
        id="extra-top-level",
    ),
]


@pytest.mark.parametrize(("text", "rule", "fragment"), BAD)
def test_bad_rules_name_file_line_and_rule(text: str, rule: str | None, fragment: str) -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        load_rules_text(textwrap.dedent(text), "site/rules.yaml")
    line = marked_line(text)
    report = str(caught.value)
    matching = [p for p in caught.value.problems if p.line == line]
    assert matching, f"no problem reported at line {line}:\n{report}"
    problem = matching[0]
    assert problem.source == "site/rules.yaml"
    assert problem.rule == rule
    assert fragment in str(problem), report
    assert f"site/rules.yaml:{line}:" in report
    if rule is not None:
        assert f"[rule {rule}]" in report


def test_all_problems_are_reported_at_once() -> None:
    text = textwrap.dedent(
        """
        rules:
          - name: a
            when:
              modality: CT
            action: relase
          - name: b
            action: hold
            join: {accession: AccessionNumber}
          - name: a
            action: hold
        """
    )
    with pytest.raises(RuleSyntaxError) as caught:
        load_rules_text(text, "r.yaml")
    lines = str(caught.value).splitlines()
    assert [p.line for p in caught.value.problems] == [5, 6, 9, 10, 10]
    assert lines[0].startswith("r.yaml:5:7: [rule a] when.modality: unknown attribute")
    assert lines[2] == "r.yaml:9:5: [rule b] join: join applies to release rules only: remove it"
    assert "duplicate rule name (first at line 3)" in lines[3]
    assert "can never match: rule b (line 7)" in lines[4]


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_bytes(b"rules:\n  - name: caf\xe9\n    action: hold\n")
    with pytest.raises(RuleSyntaxError) as caught:
        load_rules(path)
    (problem,) = caught.value.problems
    assert (problem.source, problem.line) == (str(path), 2)
    assert "not UTF-8" in str(caught.value)
    assert str(caught.value).startswith(f"{path}:2:")


def test_file_over_one_megabyte(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules: []\n" + "#" * MAX_BYTES + "\n")
    with pytest.raises(RuleSyntaxError) as caught:
        load_rules(path)
    (problem,) = caught.value.problems
    assert problem.source == str(path)
    assert problem.line is None  # refused before reading a single line
    assert f"the limit is {MAX_BYTES}" in str(caught.value)


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_rules(tmp_path / "absent.yaml")


def test_good_file_loads_with_lines(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n  - name: a\n    when: {Modality: CT}\n    action: hold\n\n"
        "  - name: b\n    action: hold\n"
    )
    rules = load_rules(path)
    assert [(r.name, r.line, r.source) for r in rules] == [("a", 2, str(path)), ("b", 6, str(path))]
    assert rules.source == str(path)


def test_bare_list_and_empty_list_are_accepted() -> None:
    assert [r.name for r in load_rules_text("- name: a\n  action: hold\n")] == ["a"]
    assert len(load_rules_text("rules: []\n")) == 0


NODE_YAML = """\
node:
  name: courier
scp:
  port: 11112
rules:
  - name: ok
    when: {Modality: MR}
    action: hold
  - name: broken
    when:
      Modality: {prefx: CT}
    action: hold
"""


def test_embedded_in_node_yaml_keeps_line_numbers() -> None:
    doc = read_yaml_text(NODE_YAML, "node.yaml")
    with pytest.raises(RuleSyntaxError) as caught:
        load_rules_from_data(doc.data["rules"], doc, at=("rules",))
    assert str(caught.value).startswith(
        "node.yaml:11:18: [rule broken] when.Modality.prefx: unknown key 'prefx'"
    )
    good = read_yaml_text(NODE_YAML.split("  - name: broken")[0], "node.yaml")
    rules = load_rules_from_data(good.data["rules"], good, at=("rules",))
    assert [(r.name, r.line) for r in rules] == [("ok", 6)]


def test_deep_nesting_is_refused() -> None:
    # flow nesting is caught before parsing (ruamel's scanner is quadratic in it) ...
    with pytest.raises(RuleSyntaxError) as caught:
        load_rules_text("rules: " + "[" * 100_000 + "]" * 100_000, "deep.yaml")
    assert str(caught.value) == "deep.yaml:1:72: nested more than 64 levels deep: flatten it"
    # ... block nesting deep enough for ruamel's recursion to give up has no line ...
    with pytest.raises(RuleSyntaxError) as caught:
        load_rules_text("rules:\n" + "- " * 5000 + "x\n", "deep.yaml")
    assert str(caught.value) == "deep.yaml: nested more than 64 levels deep: flatten it"
    # ... and moderate nesting is refused where it goes too deep
    nested = "{not: " * 70 + "CT" + "}" * 70
    text = f"rules:\n  - name: a\n    when:\n      Modality: {nested}\n    action: hold\n"
    with pytest.raises(RuleSyntaxError) as caught:
        load_rules_text(text, "deep.yaml")
    (problem,) = caught.value.problems
    assert (problem.line, problem.message) == (4, "nested more than 64 levels deep: flatten it")


def test_text_over_one_megabyte() -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        load_rules_text("rules: []\n#" + "é" * (MAX_BYTES // 2), "big.yaml")
    assert str(caught.value).startswith("big.yaml: text is ")

"""Explaining decisions: readable text, JSON-able data, header values hidden by default."""

from __future__ import annotations

import json

from rules import explain_dict, explain_text
from tests.rules.helpers import decide

RULES = """
rules:
  - name: ct-only
    when: {Modality: CT}
    action: release
    join: {accession: AccessionNumber}
  - name: old
    when: {StudyDate: {before: -30d}}
    action: discard
    retention_days: 7
  - name: rest
    action: hold
    reason: staff decide
"""


def test_text_lists_each_rule_tried() -> None:
    decision = decide(RULES, {"Modality": "MR", "AccessionNumber": "ACC-9"})
    assert explain_text(decision) == "\n".join(
        [
            "stable: hold by rule rest: staff decide",
            "  no    ct-only: no value of Modality is 'CT'",
            "  no    old: StudyDate is absent",
            "  MATCH rest: matches every study",
        ]
    )


def test_values_hidden_unless_asked() -> None:
    decision = decide(RULES, {"Modality": "CT", "AccessionNumber": "ACC-9"})
    hidden = explain_text(decision)
    assert "ACC-9" not in hidden
    assert hidden.startswith("stable: release by rule ct-only with accession=<hidden>")
    shown = explain_text(decision, show_values=True)
    assert "accession=ACC-9" in shown


def test_seen_values_only_when_asked() -> None:
    decision = decide(RULES, {"Modality": "MR", "StudyDate": "20240620"})
    assert "'MR'" not in explain_text(decision)
    assert "20240620" not in explain_text(decision)
    shown = explain_text(decision, show_values=True)
    assert "(header has 'MR')" in shown
    assert "(header has '20240620')" in shown
    # the relative bound is shown resolved against the evaluation day (2024-06-30)
    assert "old: no value of StudyDate is a date before -30d (2024-05-31)" in shown


def test_dict_is_json_able() -> None:
    decision = decide(RULES, {"StudyDate": "20240101"})
    data = explain_dict(decision)
    assert json.loads(json.dumps(data)) == data
    assert data["action"] == "discard"
    assert data["retention_days"] == 7
    assert data["trace"][0] == {
        "rule": "ct-only",
        "matched": False,
        "why": "Modality is absent",
    }
    assert explain_dict(decision, show_values=True)["trace"][1]["seen"] == []


def test_store_phase_without_reject_rules() -> None:
    decision = decide(RULES, {}, "store")
    assert (
        explain_text(decision)
        == "store: accept (no rule matched)\n  (no rule applies in this phase)"
    )

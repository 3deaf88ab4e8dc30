"""The rules node.yaml ships: release by accession and by the request's reference (in
AccessionNumber or Requested Procedure Description), hold the rest with a reason.

A table of headers and the joins each must carry; the end-to-end path (a study pushed to
a node started like ``make run``, joined to the README's request) is in
``tests/test_quickstart.py``.
"""

from __future__ import annotations

import pytest

from rules import RuleSet, load_rules_from_data
from rules.source import read_yaml_file
from tests.conftest import REPO
from tests.rules.helpers import TODAY, HeaderKey, facts

REF = "CR-6MXV-T4A5-W"


def shipped() -> RuleSet:
    doc = read_yaml_file(REPO / "node.yaml")
    return load_rules_from_data(doc.data["rules"], doc, at=("rules",))


CASES: list[tuple[str, dict[HeaderKey, str | list[str]], str, list[dict[str, str]]]] = [
    # (case, header, action, joins in rule order)
    ("accession", {"AccessionNumber": "ACC0001"}, "release", [{"accession": "ACC0001"}]),
    (
        "reference in AccessionNumber",
        {"AccessionNumber": REF},
        "release",
        [{"accession": REF}, {"reference": REF}],
    ),
    (
        "reference typed lower case without dashes",
        {"AccessionNumber": "cr6mxvt4a5w"},
        "release",
        [{"accession": "cr6mxvt4a5w"}, {"reference": "cr6mxvt4a5w"}],
    ),
    (
        "reference in Requested Procedure Description",
        {"RequestedProcedureDescription": f"CT THORAX {REF}"},
        "release",
        [{"reference": REF}],
    ),
    (
        "accession and a reference in the procedure",
        {"AccessionNumber": "ACC9", "RequestedProcedureDescription": f"{REF} CT"},
        "release",
        [{"accession": "ACC9"}, {"reference": REF}],
    ),
    ("nothing to join on", {"Modality": "CT"}, "hold", []),
    ("empty accession", {"AccessionNumber": ""}, "hold", []),
    (
        "procedure text without a reference",
        {"RequestedProcedureDescription": "CT THORAX"},
        "hold",
        [],
    ),
]


@pytest.mark.parametrize(
    ("header", "action", "joins"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_shipped_rules_decide(
    header: dict[HeaderKey, str | list[str]], action: str, joins: list[dict[str, str]]
) -> None:
    decision = shipped().decide(facts(header), "stable", today=TODAY)
    assert decision.action == action
    assert [dict(j) for j in decision.joins] == joins
    if action == "hold":
        # Staff see why: the catch-all's reason, never an unexplained hold.
        assert decision.rule == "hold-the-rest"
        assert decision.reason and "staff decide" in decision.reason


def test_shipped_rules_reject_nothing() -> None:
    """``make run`` takes any study: no reject rule stands in the shipped file."""
    decision = shipped().decide(facts({"AccessionNumber": "A1"}), "store", today=TODAY)
    assert decision.action == "accept"

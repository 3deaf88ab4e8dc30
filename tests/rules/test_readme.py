"""Every YAML example in rules/README.md and the schema docstring loads and behaves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rules import load_rules_from_data, load_rules_text, schema
from rules.source import read_yaml_text
from tests.rules.helpers import TODAY, HeaderKey, facts

README = Path(__file__).resolve().parents[2] / "rules" / "README.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
EXAMPLES = [b for b in BLOCKS if not b.startswith("node:")]
NODE_YAML = [b for b in BLOCKS if b.startswith("node:")]


def test_readme_has_examples() -> None:
    assert len(EXAMPLES) >= 8
    assert len(NODE_YAML) == 1


@pytest.mark.parametrize("text", EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
def test_readme_example_loads(text: str) -> None:
    assert len(load_rules_text(text, "README.md")) >= 1


def test_node_yaml_example_loads() -> None:
    doc = read_yaml_text(NODE_YAML[0], "node.yaml")
    rules = load_rules_from_data(doc.data["rules"], doc, at=("rules",))
    assert [r.name for r in rules] == ["by-accession", "hold-the-rest"]


def test_schema_docstring_example_loads() -> None:
    doc = schema.__doc__ or ""
    text = doc.split("Rules are tried in order::\n", 1)[1].split("\nKeys of a rule", 1)[0]
    rules = load_rules_text(text, "schema.py")
    assert [r.name for r in rules] == [
        "reject-test-ae",
        "by-accession",
        "by-ris-reference",
        "old-scouts",
        "everything-else",
    ]


def test_private_reference_example_decides() -> None:
    (text,) = [b for b in EXAMPLES if "by-private-reference" in b]
    decision = load_rules_text(text).decide(
        facts({(0x00290010, "ACME RIS"): " 00123456 "}), today=TODAY
    )
    assert (decision.action, dict(decision.join)) == ("release", {"reference": "00123456"})


def test_several_join_keys_example_decides() -> None:
    (text,) = [b for b in EXAMPLES if "by-ris-reference" in b and "continue: true" in b]
    header: dict[HeaderKey, str | list[str]] = {
        "AccessionNumber": "A7",
        "RequestedProcedureDescription": "ct ref-xy9",
    }
    decision = load_rules_text(text).decide(facts(header), today=TODAY)
    assert [dict(j) for j in decision.joins] == [{"accession": "A7"}, {"reference": "xy9"}]

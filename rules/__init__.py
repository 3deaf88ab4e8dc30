"""Rules: the pure rules engine (YAML schema, strict loader, matcher, explain).

Owns: reading admins' YAML strictly (``rules.source``), the rules schema, and deciding
what happens to a study. Imports nothing from the rest of Courier, so it can be tested
and used offline (``courier rules test``) without a node.

Public surface (the modules behind it are small and named for what they hold)::

    ruleset = load_rules("rules.yaml")              # or load_rules_text / load_rules_from_data
    facts = facts_from_dataset(ds, AssociationFacts(calling_ae, called_ae, peer_host),
                               wanted=ruleset.wanted)
    decision = ruleset.decide(facts, "store")       # reject | accept, per instance
    decision = ruleset.decide(facts, "stable")      # release | hold | discard, per study
    print(explain_text(decision))

Errors: :class:`RulesError` is the base; loading raises :class:`RuleSyntaxError` listing
every problem with file, line, column and rule name. ``decide`` never raises on header
content. The language is described in :mod:`rules.schema` and ``rules/README.md``.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rules.decision import Decision, Match, TraceStep
    from rules.errors import Problem, RulesError, RuleSyntaxError
    from rules.explain import explain_dict, explain_text
    from rules.facts import AssociationFacts, Facts, StudyFacts, facts_from_dataset
    from rules.loader import load_rules, load_rules_document, load_rules_from_data, load_rules_text
    from rules.matcher import CompiledRule, RuleSet

# Each name is imported from its module on first use (PEP 562), so reading YAML with
# rules.source (node.yaml, for every `courier` command) does not build the rules schema.
_HOME = {
    "Decision": "rules.decision",
    "Match": "rules.decision",
    "TraceStep": "rules.decision",
    "Problem": "rules.errors",
    "RulesError": "rules.errors",
    "RuleSyntaxError": "rules.errors",
    "explain_dict": "rules.explain",
    "explain_text": "rules.explain",
    "AssociationFacts": "rules.facts",
    "Facts": "rules.facts",
    "StudyFacts": "rules.facts",
    "facts_from_dataset": "rules.facts",
    "load_rules": "rules.loader",
    "load_rules_document": "rules.loader",
    "load_rules_from_data": "rules.loader",
    "load_rules_text": "rules.loader",
    "CompiledRule": "rules.matcher",
    "RuleSet": "rules.matcher",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'rules' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


__all__ = [
    "AssociationFacts",
    "CompiledRule",
    "Decision",
    "Facts",
    "Match",
    "Problem",
    "RuleSet",
    "RuleSyntaxError",
    "RulesError",
    "StudyFacts",
    "TraceStep",
    "explain_dict",
    "explain_text",
    "facts_from_dataset",
    "load_rules",
    "load_rules_document",
    "load_rules_from_data",
    "load_rules_text",
]

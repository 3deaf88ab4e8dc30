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

from rules.decision import Decision, Match, TraceStep
from rules.errors import Problem, RulesError, RuleSyntaxError
from rules.explain import explain_dict, explain_text
from rules.facts import AssociationFacts, Facts, StudyFacts, facts_from_dataset
from rules.loader import load_rules, load_rules_document, load_rules_from_data, load_rules_text
from rules.matcher import CompiledRule, RuleSet

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

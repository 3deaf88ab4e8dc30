"""A compiled rule set and :meth:`RuleSet.decide`: which rule applies to a study.

Built by :mod:`rules.loader`; immutable and safe to share between threads. ``decide``
does no I/O and compiles nothing: every regex, value and date bound was prepared at load.

Order: rules are tried top to bottom, keeping only those of the phase (``reject`` rules
at ``store``, the others at ``stable``; see :mod:`rules.decision`). A rule matches when
every condition holds and, for ``release``, every join field resolves to one concrete
value (a release rule whose join cannot be resolved does not match: the trace says
why). The first match decides; a match without ``continue: true`` ends the search.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date

from rules.attribute import Attribute
from rules.condition import CompiledCondition
from rules.decision import Action, Decision, Match, Outcome, Phase, TraceStep
from rules.facts import Facts, Key
from rules.policy import ReleasePolicy
from rules.regex import MAX_INPUT_LENGTH

Values = tuple[str, ...]


@dataclass(frozen=True)
class JoinSpec:
    """How one request field gets its value: an attribute, optionally cut by a regex."""

    field: str
    attribute: Attribute
    pattern: re.Pattern[str] | None = None

    def resolve(self, values: Values) -> tuple[str | None, str]:
        """``(value, "")`` when resolved, else ``(None, why not)``."""
        label = self.attribute.text
        if not values:
            return None, f"join {self.field}: {label} is absent"
        if len(values) > 1:
            return None, f"join {self.field}: {label} has {len(values)} values; a join needs one"
        value = values[0]
        if self.pattern is None:
            return value, ""
        found = self.pattern.search(value) if len(value) <= MAX_INPUT_LENGTH else None
        part = (found.group(self.field) or "").strip() if found else ""
        if not part:
            return None, f"join {self.field}: {label} does not match /{self.pattern.pattern}/"
        return part, ""


@dataclass(frozen=True)
class CompiledRule:
    """One rule, ready to evaluate; ``line`` is where it starts in ``source``."""

    name: str
    action: Action
    conditions: tuple[tuple[Attribute, CompiledCondition], ...] = ()
    joins: tuple[JoinSpec, ...] = ()
    continue_: bool = False
    reason: str | None = None
    retention_days: int | None = None
    release: ReleasePolicy | None = None
    reports: str | None = None  # never | with_images; None: delivery.reports
    source: str = "<rules>"
    line: int | None = None

    @property
    def catch_all(self) -> bool:
        """True when the rule has no condition."""
        return not self.conditions


class RuleSet:
    """An ordered, compiled list of rules."""

    def __init__(self, rules: Sequence[CompiledRule], source: str = "<rules>") -> None:
        self.rules: tuple[CompiledRule, ...] = tuple(rules)
        self.source = source
        attributes = [a for r in self.rules for a, _ in r.conditions]
        attributes += [j.attribute for r in self.rules for j in r.joins]
        self.wanted: frozenset[Key] = frozenset(a.key for a in attributes if a.association is None)
        """The header keys the rules read: pass to :func:`rules.facts.facts_from_dataset`."""

    def rule(self, name: str) -> CompiledRule | None:
        """The rule called ``name``, or None (a rule renamed or removed since)."""
        return next((r for r in self.rules if r.name == name), None)

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self) -> Iterator[CompiledRule]:
        return iter(self.rules)

    def decide(
        self, facts: Facts, phase: Phase = "stable", *, today: date | None = None
    ) -> Decision:
        """Decide for ``facts`` in ``phase``; ``today`` resolves relative dates (default: now).

        Never raises for any header content; see :mod:`rules.decision` for the result.
        """
        day = today or date.today()
        cache: dict[Attribute, Values] = {}
        trace: list[TraceStep] = []
        matches: list[Match] = []
        for rule in self.rules:
            if (rule.action == "reject") != (phase == "store"):
                continue
            step, match = _try(rule, facts, cache, day)
            if match is not None and matches and match.action != matches[0].action:
                first = matches[0]
                why = f"matched, but rule {first.rule} already decided {first.action}: ignored"
                step = TraceStep(rule.name, True, why)
                match = None
            trace.append(step)
            if match is not None:
                matches.append(match)
            if step.matched and not rule.continue_:
                break
        if not matches:
            action: Outcome = "accept" if phase == "store" else "hold"
            reason = None if phase == "store" else "no rule matched"
            return Decision(phase=phase, action=action, reason=reason, trace=tuple(trace))
        first = matches[0]
        return Decision(
            phase=phase,
            action=first.action,
            rule=first.rule,
            join=first.join,
            reason=first.reason,
            retention_days=first.retention_days,
            matches=tuple(matches),
            trace=tuple(trace),
        )


def _try(
    rule: CompiledRule, facts: Facts, cache: dict[Attribute, Values], today: date
) -> tuple[TraceStep, Match | None]:
    for attribute, condition in rule.conditions:
        values = _values(facts, attribute, cache)
        why = condition.failure(values, today)
        if why is not None:
            return TraceStep(rule.name, False, why, values), None
    join: dict[str, str] = {}
    for spec in rule.joins:
        values = _values(facts, spec.attribute, cache)
        value, why = spec.resolve(values)
        if value is None:
            return TraceStep(rule.name, False, why, values), None
        join[spec.field] = value
    why = "matches every study" if rule.catch_all else "all conditions hold"
    match = Match(rule.name, rule.action, join, rule.reason, rule.retention_days)
    return TraceStep(rule.name, True, why), match


def _values(facts: Facts, attribute: Attribute, cache: dict[Attribute, Values]) -> Values:
    found = cache.get(attribute)
    if found is not None:
        return found
    if attribute.association == "calling_ae":
        raw: str | list[str] | None = facts.calling_ae
    elif attribute.association == "called_ae":
        raw = facts.called_ae
    elif attribute.association == "peer_host":
        raw = facts.peer_host
    else:
        raw = facts.get(attribute.tag, attribute.creator)
    items = [raw] if isinstance(raw, str) else raw or []
    values = tuple(v for v in (str(item).strip(" \x00") for item in items) if v)
    cache[attribute] = values
    return values

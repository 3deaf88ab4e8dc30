"""Turning admins' YAML into a compiled :class:`~rules.matcher.RuleSet`, or saying why not.

Every problem is collected before raising, each with file, line, column, the rule's name
and the key: YAML that cannot be read (duplicate keys, tags, anchors, not UTF-8, over
1 MB: see :mod:`rules.source`), an empty document or a wrong top level, unknown keys,
wrong types, unknown attributes, unsafe regexes, cross-key mistakes (a ``join`` on a
``hold`` rule), duplicate rule names, and rules that can never be reached because a
catch-all without ``continue`` stands above them. Nothing half-loaded is ever returned.

Entry points: :func:`load_rules` (a file), :func:`load_rules_text` (a string), and
:func:`load_rules_from_data` for a list already read by :mod:`rules.source` (node.yaml's
``rules:`` section), which keeps that file's line numbers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from rules.attribute import parse_attribute
from rules.condition import compile_condition
from rules.errors import Problem, RuleSyntaxError
from rules.matcher import CompiledRule, JoinSpec, RuleSet
from rules.policy import POLICY_KEYS
from rules.regex import compile_pattern
from rules.schema import OPERATORS, RULE_KEYS, RULES_KEY, Action, Loc, Rule, rule_problems
from rules.source import YamlDocument, YamlSourceError, read_yaml_file, read_yaml_text

_HELP = "see rules/README.md"
_ACTIONS = get_args(Action)


def load_rules(path: str | os.PathLike[str]) -> RuleSet:
    """Load a rules file; raises :class:`RuleSyntaxError` (or ``OSError`` if unreadable)."""
    try:
        doc = read_yaml_file(Path(path))
    except YamlSourceError as exc:
        raise _from_source(exc) from None
    return load_rules_document(doc)


def load_rules_text(text: str, source: str = "<text>") -> RuleSet:
    """Load rules from YAML text; ``source`` names it in messages. Raises RuleSyntaxError."""
    try:
        doc = read_yaml_text(text, source)
    except YamlSourceError as exc:
        raise _from_source(exc) from None
    return load_rules_document(doc)


def load_rules_document(doc: YamlDocument) -> RuleSet:
    """Load a whole rules document: ``rules: [...]`` (or a bare list). Raises RuleSyntaxError."""
    data = doc.data
    if isinstance(data, list):
        return load_rules_from_data(data, doc)
    if isinstance(data, dict) and RULES_KEY in data:
        extra = [k for k in data if k != RULES_KEY]
        if extra:
            raise RuleSyntaxError(
                _at(doc, (k,), f"unknown top-level key {k!r}: a rules file holds only rules:")
                for k in extra
            )
        return load_rules_from_data(data[RULES_KEY], doc, at=(RULES_KEY,))
    what = "is empty" if data is None else "does not hold rules"
    raise RuleSyntaxError(
        [
            Problem(
                doc.source,
                1,
                1,
                f"the file {what}: write 'rules:' followed by a list of rules, each "
                f"starting with '- name:' ({_HELP})",
            )
        ]
    )


def load_rules_from_data(data: Any, doc: YamlDocument, *, at: Loc = ()) -> RuleSet:
    """Compile a list of rules that ``doc`` read, found at path ``at`` within it.

    For node.yaml: ``load_rules_from_data(doc.data["rules"], doc, at=("rules",))``.
    Raises :class:`RuleSyntaxError` listing every problem.
    """
    if data is None:
        raise RuleSyntaxError(
            [_at(doc, at, "no rules given: write a list of rules, or [] for none")]
        )
    if not isinstance(data, list):
        raise RuleSyntaxError(
            [_at(doc, at, "must be a list of rules, each starting with '- name:'")]
        )
    problems: list[Problem] = []
    compiled: list[CompiledRule] = []
    first_line: dict[str, int | None] = {}
    shadow: dict[str, tuple[str, int | None]] = {}  # "all" / "stable" -> catch-all above
    for index, item in enumerate(data):
        loc = (*at, index)
        rule, found = _validate(item, doc, loc)
        problems += found + _order(item, doc, loc, first_line, shadow)
        if rule is not None:
            result = _compile(rule, doc, loc)
            if isinstance(result, CompiledRule):
                compiled.append(result)
            else:
                problems += result
    if problems:
        raise RuleSyntaxError(problems)
    return RuleSet(compiled, source=doc.source)


def _order(
    item: Any,
    doc: YamlDocument,
    loc: Loc,
    first_line: dict[str, int | None],
    shadow: dict[str, tuple[str, int | None]],
) -> list[Problem]:
    """Checks across rules, made on the raw mapping so that invalid rules take part too."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        return []
    name: str = item["name"]
    line = (doc.mark(loc) or (None, None))[0]
    problems = []
    if name in first_line:
        where = f" (first at line {first_line[name]})" if first_line[name] else ""
        problems.append(_at(doc, (*loc, "name"), f"duplicate rule name{where}: rename one", name))
    first_line.setdefault(name, line)
    action = item.get("action")
    above = shadow.get("all") or (shadow.get("stable") if action != "reject" else None)
    if above is not None:
        message = (
            f"can never match: rule {above[0]} (line {above[1]}) above it matches every "
            "study and has no 'continue: true'; move this rule above it, or delete it"
        )
        problems.append(_at(doc, loc, message, name))
    if not item.get("when") and item.get("continue") is not True and action in _ACTIONS:
        shadow.setdefault("all" if action == "reject" else "stable", (name, line))
    return problems


def _validate(item: Any, doc: YamlDocument, loc: Loc) -> tuple[Rule | None, list[Problem]]:
    name = item.get("name") if isinstance(item, dict) else None
    name = name if isinstance(name, str) else None
    if not isinstance(item, dict):
        return None, [_at(doc, loc, "a rule is a mapping: name:, when:, action: ...")]
    try:
        rule = Rule.model_validate(_as_text(item, doc, loc))
    except ValidationError as exc:
        return None, [_pydantic(doc, loc, err, name) for err in exc.errors(include_url=False)]
    return rule, [
        _at(doc, (*loc, *sub), msg, name, ".".join(map(str, sub)))
        for sub, msg in rule_problems(rule)
    ]


def _compile(rule: Rule, doc: YamlDocument, loc: Loc) -> CompiledRule | list[Problem]:
    problems: list[Problem] = []
    conditions = []
    for key, condition in (rule.when or {}).items():
        try:
            conditions.append((parse_attribute(key), compile_condition(condition, key)))
        except ValueError as exc:
            problems.append(_at(doc, (*loc, "when", key), str(exc), rule.name, f"when.{key}"))
    joins = []
    for field, source in (rule.join or {}).items():
        pattern = None if source.pattern is None else compile_pattern(source.pattern)
        joins.append(JoinSpec(field, parse_attribute(source.from_), pattern))
    if problems:
        return problems
    return CompiledRule(
        name=rule.name,
        action=rule.action,
        conditions=tuple(conditions),
        joins=tuple(joins),
        continue_=rule.continue_,
        reason=rule.reason,
        retention_days=rule.retention_days,
        release=rule.release,
        reports=rule.reports,
        source=doc.source,
        line=(doc.mark(loc) or (None, None))[0],
    )


def _as_text(value: Any, doc: YamlDocument, loc: Loc, depth: int = 0) -> Any:
    """Numbers back to the text written (``00123``, ``00321060``), except retention_days."""
    if isinstance(value, dict):
        return {
            k: v if depth == 0 and k == "retention_days" else _as_text(v, doc, (*loc, k), depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_as_text(v, doc, (*loc, i), depth + 1) for i, v in enumerate(value)]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return doc.raw.get(loc, str(value))
    return value


def _pydantic(doc: YamlDocument, base: Loc, err: ErrorDetails, rule: str | None) -> Problem:
    loc: Loc = tuple(p for p in err["loc"] if not str(p).startswith("function-"))
    about_key = bool(loc) and loc[-1] == "[key]"
    if about_key:
        loc = loc[:-1]
    full = (*base, *loc)
    mark = doc.key_mark(full)  # the key's line: an empty value has none of its own
    line, column = mark if mark else (None, None)
    key = ".".join(str(p) for p in loc) or None
    return Problem(doc.source, line, column, _message(err, loc, about_key), rule, key)


def _message(err: ErrorDetails, loc: Loc, about_key: bool) -> str:
    kind, msg, value = err["type"], err["msg"], err.get("input")
    last = loc[-1] if loc else ""
    if kind == "extra_forbidden":
        allowed = (
            RULE_KEYS
            if len(loc) == 1
            else ("from", "pattern")
            if "join" in loc
            else POLICY_KEYS
            if loc[0] == "release"
            else OPERATORS
        )
        return f"unknown key {last!r}: allowed here are {', '.join(allowed)}"
    if kind == "missing":
        return f"missing required key {last!r}"
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        if about_key or not isinstance(value, str):
            return msg
    elif kind == "literal_error":
        msg = f"must be {msg.removeprefix('Input should be ')}"
    elif kind == "string_type":
        msg = "must be text (quote it)"
    elif kind == "bool_type":
        msg = "must be true or false"
    elif kind == "int_type":
        msg = "must be a whole number"
    elif kind in ("dict_type", "model_type"):
        msg = "must be a mapping (key: value)"
    elif kind == "list_type":
        msg = "must be a list: [a, b]"
    if isinstance(value, dict | list) or value is None:
        return msg
    shown = repr(value)
    return f"{msg} (got {shown[:60]}{'...' if len(shown) > 60 else ''})"


def _at(
    doc: YamlDocument, loc: Loc, message: str, rule: str | None = None, key: str | None = None
) -> Problem:
    line, column = doc.key_mark(loc) or (None, None)
    return Problem(doc.source, line, column, message, rule, key)


def _from_source(exc: YamlSourceError) -> RuleSyntaxError:
    return RuleSyntaxError([Problem(exc.source, exc.line, exc.column, exc.message)])

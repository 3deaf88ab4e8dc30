"""Conditions compiled once at load into plain predicates over an attribute's values.

A compiled condition is called with the attribute's values (a tuple of stripped,
non-empty strings; empty when the attribute is absent) and the evaluation day, and
returns ``None`` when it holds, else why not. Nothing is compiled or parsed at match
time: regexes are compiled at load (by :mod:`rules.regex`), values pre-folded.

Semantics, for each operator of a condition (all must hold):

- value operators (``equals``, ``one_of``, ``prefix``, ``regex``, date operators) hold
  when *any* value of a multi-valued attribute satisfies them, and never on an absent one;
- ``not`` holds when its condition does not (so ``not`` holds on an absent attribute);
- ``present: true`` holds when there is a non-empty value, ``present: false`` when not;
- ``equals`` and ``one_of`` ignore leading and trailing spaces of the rule's values;
- ``regex`` is searched (use ``^...$`` to anchor) and never on a value longer than
  :data:`rules.regex.MAX_INPUT_LENGTH`;
- ``after``/``before`` are strict, ``between`` includes both ends.

The ``why`` texts quote the rule's values, never the header's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from rules.dates import DateBound, dicom_date, parse_bound
from rules.regex import MAX_INPUT_LENGTH, compile_pattern
from rules.schema import Condition

Values = tuple[str, ...]


@dataclass(frozen=True)
class _Op:
    """One operator: ``holds(values, today)`` and ``describe(today)`` what it wants."""

    holds: Callable[[Values, date], bool]
    describe: Callable[[date], str]
    needs_value: bool = True


class CompiledCondition:
    """All operators of one condition on one attribute, ready to run."""

    def __init__(self, label: str, ops: list[_Op]) -> None:
        self.label = label
        self._ops = ops

    def failure(self, values: Values, today: date) -> str | None:
        """``None`` if every operator holds on ``values``, else the first reason why not."""
        for op in self._ops:
            if op.holds(values, today):
                continue
            if op.needs_value:
                if not values:
                    return f"{self.label} is absent"
                return f"no value of {self.label} {op.describe(today)}"
            return f"{self.label} {op.describe(today)}"
        return None

    def describe(self, today: date) -> str:
        """What the condition asks for, e.g. ``is 'CT' and starts with 'A'``."""
        return " and ".join(op.describe(today) for op in self._ops)


def compile_condition(condition: Condition, label: str) -> CompiledCondition:
    """Compile ``condition`` on the attribute shown as ``label``; raises ``ValueError``."""
    fold: Callable[[str], str] = str.casefold if condition.ignore_case else _same
    case = " (any case)" if condition.ignore_case else ""
    ops: list[_Op] = []
    if condition.present is not None:
        ops.append(_present(condition.present))
    if condition.equals is not None:
        wanted = fold(condition.equals.strip())
        shown = f"is {condition.equals.strip()!r}{case}"
        ops.append(_Op(lambda vs, _t: any(fold(v) == wanted for v in vs), lambda _t: shown))
    if condition.one_of is not None:
        choices = frozenset(fold(c.strip()) for c in condition.one_of)
        listed = ", ".join(repr(c.strip()) for c in condition.one_of)
        shown_any = f"is one of {listed}{case}"
        ops.append(_Op(lambda vs, _t: any(fold(v) in choices for v in vs), lambda _t: shown_any))
    if condition.prefix is not None:
        start = fold(condition.prefix)
        shown_prefix = f"starts with {condition.prefix!r}{case}"
        ops.append(
            _Op(lambda vs, _t: any(fold(v).startswith(start) for v in vs), lambda _t: shown_prefix)
        )
    if condition.regex is not None:
        ops.append(_regex(condition.regex, condition.ignore_case, case))
    for name, text in (("after", condition.after), ("before", condition.before)):
        if text is not None:
            ops.append(_date(name, [parse_bound(text)]))
    if condition.between is not None:
        ops.append(_date("between", [parse_bound(b) for b in condition.between]))
    if condition.not_ is not None:
        ops.append(_not(compile_condition(condition.not_, label)))
    return CompiledCondition(label, ops)


def _same(text: str) -> str:
    return text


def _present(wanted: bool) -> _Op:
    if wanted:
        return _Op(lambda vs, _t: bool(vs), lambda _t: "is absent", needs_value=False)
    return _Op(lambda vs, _t: not vs, lambda _t: "is present", needs_value=False)


def _regex(text: str, ignore_case: bool, case: str) -> _Op:
    pattern = compile_pattern(text, ignore_case=ignore_case)
    shown = f"matches /{text}/{case} (values over {MAX_INPUT_LENGTH} characters never do)"

    def holds(values: Values, _today: date) -> bool:
        return any(len(v) <= MAX_INPUT_LENGTH and pattern.search(v) for v in values)

    return _Op(holds, lambda _t: shown)


def _date(name: str, bounds: list[DateBound]) -> _Op:
    def holds(values: Values, today: date) -> bool:
        limits = [b.resolve(today) for b in bounds]
        for value in values:
            day = dicom_date(value)
            if day is None:
                continue
            if name == "after" and day > limits[0]:
                return True
            if name == "before" and day < limits[0]:
                return True
            if name == "between" and limits[0] <= day <= limits[1]:
                return True
        return False

    def describe(today: date) -> str:
        shown = [_show(b, today) for b in bounds]
        if name == "between":
            return f"is a date between {shown[0]} and {shown[1]}"
        return f"is a date {name} {shown[0]}"

    return _Op(holds, describe)


def _show(bound: DateBound, today: date) -> str:
    if bound.absolute is not None:
        return bound.absolute.isoformat()
    return f"{bound.text} ({bound.resolve(today).isoformat()})"


def _not(inner: CompiledCondition) -> _Op:
    return _Op(
        lambda vs, t: inner.failure(vs, t) is not None,
        lambda t: f"{inner.describe(t)} (excluded by not)",
        needs_value=False,
    )

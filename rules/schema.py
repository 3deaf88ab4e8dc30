"""The rules language: pydantic models (unknown keys are errors) and its cross-checks.

A rules file is a mapping with one key, ``rules:``, holding a list of rules; node.yaml
holds the same list under its own ``rules:`` section, so rules move between the two by
cut and paste. (A file that is just the list is accepted too.) Rules are tried in order::

    rules:
      - name: reject-test-ae            # required, unique: letters, digits, - _ .
        description: the PACS test node must not send us studies
        when:                           # every condition must hold; absent = catch-all
          calling_ae: PACS_TEST
        action: reject                  # refused at C-STORE time
        reason: test node

      - name: by-accession
        when:
          Modality: {one_of: [CT, MR]}
          AccessionNumber: {present: true}
        action: release
        join:                           # request field <- attribute
          accession: AccessionNumber
        continue: true                  # also try the rules below (more join keys)

      - name: by-ris-reference
        when:
          "(0032,1060)": {regex: "REF-[A-Z0-9]+", ignore_case: true}
        action: release
        join:
          reference:
            from: "(0032,1060)"
            pattern: "REF-(?P<reference>[A-Z0-9]+)"

      - name: old-scouts
        when:
          SeriesDescription: {prefix: SCOUT}
          StudyDate: {before: -365d}
        action: discard
        retention_days: 7

      - name: everything-else
        action: hold
        reason: no rule matched; staff decide

Keys of a rule: ``name``, ``description``, ``when``, ``action`` (``release``, ``hold``,
``discard``, ``reject``), ``continue`` (default false), ``join`` (release only; keys
``accession``, ``patient_id``, ``study_uid``, ``reference``; value an attribute, or
``{from: ATTRIBUTE, pattern: REGEX}`` whose group ``(?P<FIELD>...)`` named after the
field is the joined value), ``retention_days`` (discard only), ``reason`` (reject and
hold only), ``release`` (release rules only: when the released studies may go out,
an embargo ``after: 72h`` and/or ``until: report_final``; see :mod:`rules.policy`),
``reports`` (release rules only: ``never`` or ``with_images``, whether the studies'
final reports go in the package; default node.yaml's ``delivery.reports``).

A condition (``when: {ATTRIBUTE: CONDITION}``) is a bare value (equals) or a mapping of
operators that must all hold: ``equals``, ``one_of: [...]``, ``prefix``, ``regex``
(searched, not anchored: see :mod:`rules.regex` for what is refused), ``present:
true|false``, ``after``/``before`` (strictly; dates ``YYYYMMDD``, ``YYYY-MM-DD`` or
``-Nd``), ``between: [FROM, TO]`` (inclusive), ``not: CONDITION``, and ``ignore_case:
true`` for ``equals``/``one_of``/``prefix``/``regex``. Attributes are documented in
:mod:`rules.attribute`. Numbers are compared as the text written (``00123`` stays
``00123``); ``true``/``false``/empty values must be quoted to be compared.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    model_validator,
)

from rules.attribute import parse_attribute
from rules.dates import parse_bound
from rules.policy import ReleasePolicy
from rules.regex import compile_pattern

Loc = tuple[str | int, ...]
Action = Literal["release", "hold", "discard", "reject"]
JoinField = Literal["accession", "patient_id", "study_uid", "reference"]
RULES_KEY = "rules"
RULE_KEYS = (
    "name",
    "description",
    "when",
    "action",
    "continue",
    "join",
    "retention_days",
    "reason",
    "release",
    "reports",
)
OPERATORS = (
    "equals",
    "one_of",
    "not",
    "prefix",
    "regex",
    "present",
    "after",
    "before",
    "between",
    "ignore_case",
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _name(text: str) -> str:
    if not _NAME.fullmatch(text):
        raise ValueError(
            "a rule name is 1 to 64 letters, digits, '-', '_' or '.', starting with a "
            "letter or digit"
        )
    return text


def _value(text: str) -> str:
    if not text.strip():
        raise ValueError("an empty value never matches: use {present: false} instead")
    if len(text) > 1024:
        raise ValueError("a value is at most 1024 characters")
    return text


def _attribute(text: str) -> str:
    parse_attribute(text)
    return text


def _regex(text: str) -> str:
    compile_pattern(text)
    return text


def _bound(text: str) -> str:
    parse_bound(text)
    return text


RuleName = Annotated[StrictStr, AfterValidator(_name)]
Value = Annotated[StrictStr, AfterValidator(_value)]
AttributeText = Annotated[StrictStr, AfterValidator(_attribute)]
Regex = Annotated[StrictStr, AfterValidator(_regex)]
Bound = Annotated[StrictStr, AfterValidator(_bound)]


class Condition(BaseModel):
    """What one attribute must satisfy; every operator given must hold."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    equals: Value | None = None
    one_of: list[Value] | None = Field(default=None, min_length=1, max_length=1000)
    not_: Condition | None = Field(default=None, alias="not")
    prefix: Value | None = None
    regex: Regex | None = None
    present: bool | None = None
    after: Bound | None = None
    before: Bound | None = None
    between: list[Bound] | None = Field(default=None, min_length=2, max_length=2)
    ignore_case: bool = False

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"equals": data}
        if isinstance(data, bool):
            raise ValueError(
                "true/false is not a value to compare: quote it ('true'), or use {present: true}"
            )
        if data is None:
            raise ValueError("no value given: write a value, or an operator like {present: true}")
        if isinstance(data, list):
            raise ValueError("a list needs an operator: write {one_of: [...]}")
        return data

    @model_validator(mode="after")
    def _coherent(self) -> Condition:
        string_ops = (self.equals, self.one_of, self.prefix, self.regex)
        date_ops = (self.after, self.before, self.between)
        if all(op is None for op in (*string_ops, *date_ops, self.not_, self.present)):
            raise ValueError(
                f"give an operator: {', '.join(o for o in OPERATORS if o != 'ignore_case')}"
            )
        if self.present is False and any(op is not None for op in (*string_ops, *date_ops)):
            raise ValueError("present: false cannot hold together with a value operator")
        if self.ignore_case and all(op is None for op in string_ops):
            raise ValueError("ignore_case applies to equals, one_of, prefix and regex only")
        if self.between is not None:
            low, high = (parse_bound(b) for b in self.between)
            if low.absolute and high.absolute and low.absolute > high.absolute:
                raise ValueError("between: the first date must not be after the second")
        if self.after is not None and self.before is not None:
            low, high = parse_bound(self.after), parse_bound(self.before)
            if low.absolute and high.absolute and low.absolute >= high.absolute:
                raise ValueError("after and before leave no date between them")
        return self

    def uses_dates(self) -> bool:
        """Whether a date operator appears here (not counting under ``not``)."""
        return any(op is not None for op in (self.after, self.before, self.between))


class JoinSource(BaseModel):
    """Where a request field's value comes from; a bare attribute means ``{from: it}``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    from_: AttributeText = Field(alias="from")
    pattern: Regex | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"from": data} if isinstance(data, str) else data


class Rule(BaseModel):
    """One rule; see the module docstring for the keys and their meaning."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: RuleName
    description: StrictStr | None = None
    when: dict[AttributeText, Condition] | None = None
    action: Action
    continue_: bool = Field(default=False, alias="continue")
    join: dict[JoinField, JoinSource] | None = None
    retention_days: int | None = Field(default=None, ge=1, le=36500)
    reason: StrictStr | None = Field(default=None, max_length=500)
    release: ReleasePolicy | None = None
    reports: Literal["never", "with_images"] | None = None

    @property
    def catch_all(self) -> bool:
        """True when the rule has no condition, so it matches every study."""
        return not self.when


def rule_problems(rule: Rule) -> list[tuple[Loc, str]]:
    """Checks that span several keys of one rule: ``(loc within the rule, message)``."""
    out: list[tuple[Loc, str]] = []
    if rule.action == "release" and not rule.join:
        out.append(
            (("action",), "a release rule needs join: e.g. join: {accession: AccessionNumber}")
        )
    if rule.join and rule.action != "release":
        out.append((("join",), "join applies to release rules only: remove it"))
    if rule.retention_days is not None and rule.action != "discard":
        out.append((("retention_days",), "retention_days applies to discard rules only"))
    if rule.reports is not None and rule.action != "release":
        out.append((("reports",), "reports: applies to release rules only"))
    if rule.release is not None and rule.action != "release":
        out.append((("release",), "release: (when to send) applies to release rules only"))
    if rule.reason is not None and rule.action not in ("reject", "hold"):
        out.append((("reason",), "reason applies to reject and hold rules only: use description"))
    for field, source in (rule.join or {}).items():
        if source.pattern is not None and field not in re.compile(source.pattern).groupindex:
            out.append(
                (
                    ("join", field, "pattern"),
                    f"the pattern must name the part to keep: (?P<{field}>...)",
                )
            )
    for key, condition in (rule.when or {}).items():
        out.extend(_date_problems(key, condition, ("when", key)))
    return out


def _date_problems(key: str, condition: Condition, loc: Loc) -> list[tuple[Loc, str]]:
    out: list[tuple[Loc, str]] = []
    attribute = parse_attribute(key)
    if condition.uses_dates() and not attribute.takes_dates:
        kind = f"VR {attribute.vr}" if attribute.vr else "an association fact"
        out.append((loc, f"after/before/between need a date (VR DA or DT); {key} is {kind}"))
    if condition.not_ is not None:
        out.extend(_date_problems(key, condition.not_, (*loc, "not")))
    return out

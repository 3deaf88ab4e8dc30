"""What the rules decided about a study, and why: :class:`Decision` and its trace.

Two phases, because the node knows different things at different times:

``store``
    While an instance is being received (C-STORE), before it is acknowledged. Only
    ``reject`` rules are tried; the answer is ``reject`` or ``accept`` (no reject rule
    matched). The SCP answers a refusal status for ``reject`` and stores nothing.
``stable``
    When the study is stable (no new instance for the configured time). ``release``,
    ``hold`` and ``discard`` rules are tried; when none matches the answer is ``hold``
    with ``rule`` ``None``: nothing is released or discarded without a rule saying so.

The trace's ``why`` texts name attributes and the rule's own values, never header
values, so a trace may be logged; ``seen`` holds the header values a failed check looked
at (patient data: show it only to staff, e.g. in ``courier rules test``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Phase = Literal["store", "stable"]
Action = Literal["release", "hold", "discard", "reject"]
Outcome = Literal["release", "hold", "discard", "reject", "accept"]


@dataclass(frozen=True)
class TraceStep:
    """One rule tried: did it match, and if not, the first condition that failed."""

    rule: str
    matched: bool
    why: str
    seen: tuple[str, ...] = ()


@dataclass(frozen=True)
class Match:
    """A rule that matched and counts towards the decision."""

    rule: str
    action: Action
    join: Mapping[str, str] = field(default_factory=dict)
    reason: str | None = None
    retention_days: int | None = None


@dataclass(frozen=True)
class Decision:
    """The outcome for one study (or, in phase ``store``, one instance).

    ``action``, ``rule``, ``join``, ``reason`` and ``retention_days`` come from the first
    matching rule. Rules with ``continue: true`` let later rules match too; those with the
    same action are added to ``matches`` (so a study can carry several join keys, see
    :attr:`joins`); a later match with another action is only noted in the trace.
    ``join`` maps request fields (``accession``, ``patient_id``, ``study_uid``,
    ``reference``) to the concrete values found in the header.
    """

    phase: Phase
    action: Outcome
    rule: str | None = None
    join: Mapping[str, str] = field(default_factory=dict)
    reason: str | None = None
    retention_days: int | None = None
    matches: tuple[Match, ...] = ()
    trace: tuple[TraceStep, ...] = ()

    @property
    def joins(self) -> tuple[Mapping[str, str], ...]:
        """Every matching release rule's join, in rule order: try each against requests."""
        return tuple(m.join for m in self.matches if m.action == "release")

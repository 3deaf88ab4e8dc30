"""The rules engine's errors: one base, and one error that lists every problem at once.

- :class:`RulesError` is the base of every error this package raises on purpose.
- :class:`RuleSyntaxError` (also a ``ValueError``) says a rules file or the ``rules:``
  section of node.yaml cannot be used. It carries *all* the problems found, not just the
  first, so an admin fixes the file in one pass. ``str()`` gives one line per problem::

      rules.yaml:12:7: [rule ct-by-accession] when.modality: unknown DICOM keyword ...

A rule set that fails to load is never half-used: the loader raises before returning.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class RulesError(Exception):
    """Base of the errors raised by :mod:`rules`."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a rules source, with where it is and what to do about it.

    ``line`` and ``column`` are 1-based and ``None`` when unknown (e.g. a file that is too
    large to read at all); ``rule`` is the rule's name when the problem is inside a rule
    that has one; ``key`` is the dotted path inside that rule (``when.Modality.regex``).
    """

    source: str
    line: int | None
    column: int | None
    message: str
    rule: str | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where = f"{where}:{self.line}:{self.column or 1}"
        rule = f" [rule {self.rule}]" if self.rule else ""
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{rule}{key} {self.message}"


class RuleSyntaxError(RulesError, ValueError):
    """The rules cannot be loaded; ``problems`` lists every reason, in file order.

    ``str()`` prints one ``file:line:col: [rule NAME] key: message`` per line; each
    message ends with what to change.
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = sorted(
            problems, key=lambda p: (p.source, p.line or 0, p.column or 0)
        )
        if not self.problems:
            raise ValueError("RuleSyntaxError needs at least one problem")
        super().__init__("\n".join(str(p) for p in self.problems))

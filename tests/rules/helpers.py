"""Small builders shared by the rules tests (no fixtures: plain functions)."""

from __future__ import annotations

import textwrap
from datetime import date

from pydicom.datadict import tag_for_keyword

from rules import RuleSet, StudyFacts, load_rules_text
from rules.decision import Decision, Phase

TODAY = date(2024, 6, 30)
HeaderKey = str | tuple[int, str | None]


def ruleset(text: str, source: str = "rules.yaml") -> RuleSet:
    """Load dedented YAML text."""
    return load_rules_text(textwrap.dedent(text), source)


def facts(
    header: dict[HeaderKey, str | list[str]] | None = None,
    *,
    calling_ae: str | None = None,
    called_ae: str | None = None,
    peer_host: str | None = None,
) -> StudyFacts:
    """StudyFacts from ``{keyword or (tag, creator): value(s)}``."""
    built: dict[tuple[int, str | None], tuple[str, ...]] = {}
    for key, value in (header or {}).items():
        if isinstance(key, str):
            tag = tag_for_keyword(key)
            assert tag is not None, key
            full: tuple[int, str | None] = (tag, None)
        else:
            full = key
        built[full] = (value,) if isinstance(value, str) else tuple(value)
    return StudyFacts(built, calling_ae=calling_ae, called_ae=called_ae, peer_host=peer_host)


def decide(
    text: str,
    header: dict[HeaderKey, str | list[str]] | None = None,
    phase: Phase = "stable",
    /,
    **association: str,
) -> Decision:
    """Load ``text`` and decide on the header and association given."""
    return ruleset(text).decide(facts(header, **association), phase, today=TODAY)


def marked_line(text: str, marker: str = "# <-") -> int:
    """The 1-based line of dedented ``text`` that carries ``marker``."""
    lines = textwrap.dedent(text).splitlines()
    found = [i for i, line in enumerate(lines, start=1) if marker in line]
    assert len(found) == 1, f"expected one {marker!r} in the text"
    return found[0]

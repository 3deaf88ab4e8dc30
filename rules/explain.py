"""A :class:`~rules.decision.Decision` for people (``courier rules test``) and for JSON.

By default neither form shows header values (join values and the values a failed check
saw), so either can go into a log. ``show_values=True`` adds them for staff at a console
or behind the staff API: they are patient data (accession numbers, IDs, descriptions).
"""

from __future__ import annotations

from typing import Any

from rules.decision import Decision

_HIDDEN = "<hidden>"


def explain_text(decision: Decision, *, show_values: bool = False) -> str:
    """A few lines: the outcome, then one line per rule tried, in order."""
    head = f"{decision.phase}: {decision.action}"
    head += f" by rule {decision.rule}" if decision.rule else " (no rule matched)"
    if decision.join:
        head += " with " + ", ".join(
            f"{k}={_show(v, show_values)}" for k, v in decision.join.items()
        )
    for extra in decision.joins[1:]:
        head += "; also " + ", ".join(f"{k}={_show(v, show_values)}" for k, v in extra.items())
    if decision.retention_days is not None:
        head += f"; keep {decision.retention_days} days"
    if decision.reason:
        head += f": {decision.reason}"
    lines = [head]
    for step in decision.trace:
        mark = "MATCH" if step.matched else "no   "
        line = f"  {mark} {step.rule}: {step.why}"
        if show_values and step.seen:
            line += f" (header has {', '.join(repr(v) for v in step.seen)})"
        lines.append(line)
    if not decision.trace:
        lines.append("  (no rule applies in this phase)")
    return "\n".join(lines)


def explain_dict(decision: Decision, *, show_values: bool = False) -> dict[str, Any]:
    """The decision as plain JSON-able data (str, int, bool, None, lists, dicts)."""
    return {
        "phase": decision.phase,
        "action": decision.action,
        "rule": decision.rule,
        "join": {k: _show(v, show_values) for k, v in decision.join.items()},
        "joins": [{k: _show(v, show_values) for k, v in j.items()} for j in decision.joins],
        "reason": decision.reason,
        "retention_days": decision.retention_days,
        "matches": [m.rule for m in decision.matches],
        "trace": [
            {
                "rule": step.rule,
                "matched": step.matched,
                "why": step.why,
                **({"seen": list(step.seen)} if show_values else {}),
            }
            for step in decision.trace
        ],
    }


def _show(value: str, show: bool) -> str:
    return value if show else _HIDDEN

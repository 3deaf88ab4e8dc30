"""A structured report as readable lines: its content tree walked, bounded.

Each content item becomes one line ``(depth, name, value)``: the concept name's meaning
and the item's text, number with units, code meaning, date or person name. Containers
give their heading. At most :data:`MAX_LINES` lines and :data:`MAX_DEPTH` levels are
read (a hostile report cannot make the page huge); values are cut to 2000 characters.
The template escapes and bidi-isolates them (untrusted text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_LINES = 2000
MAX_DEPTH = 12
_CUT = 2000


@dataclass(frozen=True)
class Line:
    depth: int
    name: str
    value: str


def _meaning(item: Any, keyword: str) -> str:
    try:
        seq = item.get(keyword)
        return str(seq[0].get("CodeMeaning", ""))[:_CUT] if seq else ""
    except (TypeError, IndexError, AttributeError, ValueError):
        return ""


def _value(item: Any) -> str:
    kind = str(item.get("ValueType", ""))
    try:
        if kind == "TEXT":
            return str(item.get("TextValue", ""))[:_CUT]
        if kind == "CODE":
            return _meaning(item, "ConceptCodeSequence")
        if kind == "NUM":
            seq = item.get("MeasuredValueSequence")
            if not seq:
                return ""
            value = str(seq[0].get("NumericValue", ""))
            unit = _meaning(seq[0], "MeasurementUnitsCodeSequence")
            return f"{value} {unit}".strip()[:_CUT]
        if kind in ("DATE", "TIME", "DATETIME"):
            return str(item.get(kind.capitalize() if kind != "DATETIME" else "DateTime", ""))
        if kind == "PNAME":
            return str(item.get("PersonName", ""))[:_CUT]
        if kind == "UIDREF":
            return str(item.get("UID", ""))[:_CUT]
    except (TypeError, IndexError, AttributeError, ValueError):
        return ""
    return ""


def sr_lines(ds: Any) -> list[Line]:
    """The report's lines (see the module docstring); empty when it has no content."""
    out: list[Line] = []
    title = _meaning(ds, "ConceptNameCodeSequence")
    if title:
        out.append(Line(0, title, ""))
    # Depth-first, in document order: children pushed reversed onto the stack.
    pending: list[tuple[int, Any]] = []
    try:
        pending = [(1, item) for item in reversed(list(ds.get("ContentSequence") or []))]
    except (TypeError, ValueError):
        pending = []
    while pending and len(out) < MAX_LINES:
        depth, item = pending.pop()
        out.append(Line(depth, _meaning(item, "ConceptNameCodeSequence"), _value(item)))
        if depth < MAX_DEPTH:
            try:
                children = list(item.get("ContentSequence") or [])
            except (TypeError, ValueError):
                children = []
            pending.extend((depth + 1, child) for child in reversed(children))
    return out

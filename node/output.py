"""How every ``courier`` command prints data: text, or JSON with ``--json``.

Text output is made safe for a terminal here, once, so no command can forget it:
header text comes from the PACS (or from whoever can send us a C-STORE) and may hold
escape sequences that clear a staff member's screen, retitle the window, colour text or
plant a hyperlink (OSC 8), and bidi controls that show ``…<RLO>gpj.exe`` as
"exe.jpg". :func:`visible` turns every such character into a printable escape
(``\\x1b``, ``\\x9b``, ``\\u202e``). :func:`print_result` applies it to the whole text
(keeping only its line breaks), and :func:`fields` and :func:`cell` apply it to each
value, so a newline inside a value cannot forge an output line either.

``--json`` prints with ``json.dumps``'s default ``ensure_ascii=True``: every character
outside printable ASCII (C0, DEL, C1 such as U+009B CSI, bidi controls, and any
non-ASCII letter) is written as a ``\\uXXXX`` escape, and a JSON reader gets the original
value back unchanged.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from telemetry import text

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3

# C0 and DEL, C1 (U+0080-U+009F, where U+009B is a one-character CSI to many terminals),
# and the characters that reorder or hide text: the bidi marks and embeddings/overrides/
# isolates (U+061C, U+200E/F, U+202A-E, U+2066-9) and the Unicode line/paragraph
# separators (a line break to some renderers).
_UNSAFE = text.pattern(text.CONTROLS | text.BIDI_CONTROLS)
_UNSAFE_BUT_NEWLINE = text.pattern((text.CONTROLS | text.BIDI_CONTROLS) - {ord("\n")})


def _escape(match: re.Match[str]) -> str:
    return text.escape(match.group())


def visible(value: object) -> str:
    """``str(value)`` with every control and bidi character shown as an escape.

    ESC becomes ``\\x1b``, U+009B ``\\x9b``, NUL ``\\x00``, a newline ``\\x0a``,
    RLO ``\\u202e``; everything else (letters of any script) is kept as it is.
    """
    return _UNSAFE.sub(_escape, str(value))


def cell(value: object, width: int = 0) -> str:
    """One table cell: :func:`visible`, left-aligned to ``width`` characters."""
    return f"{visible(value):<{width}}"


def fields(data: Mapping[str, Any], skip: Iterable[str] = ()) -> list[str]:
    """``key: value`` lines for ``data`` (keys in ``skip`` left out), values visible."""
    left_out = set(skip)
    return [f"{k}: {visible(v)}" for k, v in data.items() if k not in left_out]


def json_default(value: object) -> str:
    """JSON for the values our records hold beyond JSON's own (times, as ISO 8601)."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def print_result(args: argparse.Namespace, data: Any, text: str) -> int:
    """Print ``data`` as JSON when ``--json`` was given, else ``text``; returns 0.

    ``text`` is printed with every control and bidi character but its line breaks made
    visible (see the module docstring); JSON keeps ``ensure_ascii`` on, which escapes
    them all.
    """
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=json_default, ensure_ascii=True))
    else:
        print_text(text)
    return EXIT_OK


def print_text(text: str) -> None:
    """Print ``text`` with every control and bidi character but its line breaks made
    visible: for commands that print text of their own rather than through
    :func:`print_result`."""
    print(_UNSAFE_BUT_NEWLINE.sub(_escape, text))

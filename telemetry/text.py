"""The characters that break, hide or reorder text from outside, defined once.

Header text from the PACS, paths from the web and values in the index reach log lines,
terminals and the index itself. Each consumer treats these characters its own way (the
access log and the CLI show them as escapes, the header walk strips the bidi controls
from indexed text), but all of them mean the same sets, kept here so that they cannot
drift apart:

- :data:`CONTROLS`: C0, DEL, C1 (U+0080-U+009F, where U+009B is a one-character CSI to
  many terminals) and the Unicode line and paragraph separators (a line break to some
  viewers).
- :data:`BIDI_CONTROLS`: the marks (U+061C, U+200E, U+200F), embeddings and overrides
  (U+202A-U+202E) and isolates (U+2066-U+2069), which reorder what is shown
  (``…\u202egpj.exe`` reads as "exe.jpg").
"""

from __future__ import annotations

import re
from collections.abc import Iterable

CONTROLS = frozenset((*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029))
BIDI_CONTROLS = frozenset((0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)))


def pattern(codepoints: Iterable[int]) -> re.Pattern[str]:
    """A regular expression matching any one of ``codepoints``."""
    return re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(codepoints)) + "]")


def escape(ch: str) -> str:
    """One character written as ``\\xNN`` (up to U+00FF) or ``\\uNNNN``."""
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"

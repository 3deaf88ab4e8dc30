"""Regular expressions that cannot stall the node: checked once at load, bounded at match.

Python's ``re`` backtracks, so ``(a+)+$`` on forty ``a`` and a ``b`` runs for minutes,
and even ``a.*a.*x`` on a 1 KB value takes a third of a second. Rules run on every
received instance, so :func:`compile_pattern` refuses, at load time and with a reason:

- patterns longer than :data:`MAX_PATTERN_LENGTH` characters;
- backreferences (``\\1``, ``(?P=name)``), conditionals (``(?(1)a|b)``) and lookarounds
  (``(?=``, ``(?!``, ``(?<=``, ``(?<!``): not needed to match DICOM values;
- a repeat inside a repeat whose length can vary (``(a+)+``, ``(a*b?)*``), and an
  alternation inside a repeat whose branches can start alike (``(a|ab)*``): exponential;
- an open-ended repeat (``*``, ``+``, ``{n,}``, or a span wider than 16) that can give back
  characters the rest of the pattern could also match (``.*x`` where ``x`` is matched by
  ``.``) *followed later* by another open-ended repeat (``a.*a.*x``, ``\\w+\\w+x``):
  polynomial; write ``[^-]*-`` rather than ``.*-``;
- short ambiguous repeats (``\\d{1,3}\\d{1,3}``), alternatives that start alike
  (``(CT|CR)``), and short repeats after an ambiguous open-ended one, whose choices
  multiply past 16.

What is left is at worst quadratic in the input (``search`` tries every start), and
:data:`MAX_INPUT_LENGTH` bounds the input: callers must not search longer values (the
matcher treats them as not matching); the worst accepted pattern found by fuzzing then
takes about 10 ms on a crafted 256-character value, typical ones microseconds.
Character overlaps are computed on a sample alphabet (ASCII, Latin-1, Latin Extended and
a few look-alikes), which covers what DICOM text holds.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

MAX_PATTERN_LENGTH = 256
MAX_INPUT_LENGTH = 256
_SMALL_SPAN = 16
_MAX_CHOICES = 16

# ``re._parser`` has no stubs and ``sre_parse`` warns on import (and warnings are errors).
_P: Any = importlib.import_module("re._parser")
_C: Any = importlib.import_module("re._constants")

_ALPHABET = frozenset(
    [chr(i) for i in range(0x250)] + list("\u0660\u0966\u2028\u2029\u3000\u212a\u2126\u017f")
)
_REPEATS = (_C.MAX_REPEAT, _C.MIN_REPEAT, _C.POSSESSIVE_REPEAT)
_CATEGORIES = {
    "CATEGORY_DIGIT": r"\d",
    "CATEGORY_NOT_DIGIT": r"\D",
    "CATEGORY_SPACE": r"\s",
    "CATEGORY_NOT_SPACE": r"\S",
    "CATEGORY_WORD": r"\w",
    "CATEGORY_NOT_WORD": r"\W",
}


class _Start(NamedTuple):
    """What a piece of pattern can start with.

    ``chars``: the characters its first step can consume; ``empty``: it can match "";
    ``free``: it matches "" anywhere, unconditionally (no anchor such as ``$`` or ``\\b``).
    """

    chars: frozenset[str]
    empty: bool
    free: bool


_NOTHING = _Start(frozenset(), True, True)
_ANCHOR = _Start(frozenset(), True, False)


def compile_pattern(text: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """Compile ``text`` after checking it is bounded; raises ``ValueError`` saying why not."""
    if len(text) > MAX_PATTERN_LENGTH:
        raise ValueError(
            f"regex is {len(text)} characters; the limit is {MAX_PATTERN_LENGTH}: shorten it"
        )
    flags = re.IGNORECASE if ignore_case else 0
    try:
        parsed = _P.parse(text, flags)
        compiled = re.compile(text, flags)
    except re.error as exc:
        at = f" at position {exc.pos}" if exc.pos is not None else ""
        raise ValueError(f"not a valid regular expression: {exc.msg}{at}") from None
    _Check(parsed.state.flags).walk(list(parsed), _NOTHING, in_repeat=False)
    return compiled


class _Check:
    """One left-to-right walk over the parse tree, raising at the first unsafe construct.

    A variable repeat is *ambiguous* when the characters it could give back can also start
    what follows it: backtracking then retries the rest of the pattern at each of them.
    """

    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.open_ambiguous = False  # an ambiguous open-ended repeat was seen earlier
        self.choices = 1

    def walk(self, seq: Sequence[tuple[Any, Any]], follow: _Start, *, in_repeat: bool) -> None:
        follows = self._follows(seq, follow)
        for (op, av), after in zip(seq, follows, strict=True):
            if op in (_C.GROUPREF, _C.GROUPREF_EXISTS):
                raise ValueError("backreferences and conditionals are not allowed in a regex")
            if op in (_C.ASSERT, _C.ASSERT_NOT):
                raise ValueError("lookarounds ((?=, (?!, (?<=, (?<!) are not allowed in a regex")
            if op in _REPEATS:
                self._repeat(av, after, in_repeat=in_repeat)
            elif op is _C.BRANCH:
                self._branch(av[1], after, in_repeat=in_repeat)
            elif op is _C.SUBPATTERN:
                outer, self.flags = self.flags, (self.flags | av[1]) & ~av[2]
                self.walk(list(av[3]), after, in_repeat=in_repeat)
                self.flags = outer
            elif op is _C.ATOMIC_GROUP:
                self.walk(list(av), after, in_repeat=in_repeat)

    def _repeat(self, av: Any, after: _Start, *, in_repeat: bool) -> None:
        low, high, body = av[0], av[1], list(av[2])
        start = self._first_seq(body)
        if start.empty and high > 1:
            raise ValueError(
                "a repeat of something that can match nothing (like (a?)* or (|a)+) can "
                "take exponential time: make the repeated part match at least one character"
            )
        if low != high:
            if in_repeat:
                raise ValueError(
                    "a repeat of variable length inside another repeat (like (a+)+ or (a*b)*) "
                    "can take exponential time: rewrite it without the nesting"
                )
            ambiguous = not after.free and bool(start.chars & after.chars)
            if high == _C.MAXREPEAT or high - low > _SMALL_SPAN:
                if self.open_ambiguous:
                    raise ValueError(
                        "two open-ended repeats where the first can also match what follows "
                        "it (like a.*b.*c or \\w+\\w+) can take very long: make the first "
                        "one exclusive, e.g. [^b]*b instead of .*b"
                    )
                self.open_ambiguous = ambiguous
            elif ambiguous or self.open_ambiguous:
                self._choose(high - low + 1)
        body_follow = _Start(start.chars | after.chars, after.empty, after.free)
        self.walk(body, body_follow, in_repeat=in_repeat or high > 1)

    def _branch(self, alternatives: list[Any], after: _Start, *, in_repeat: bool) -> None:
        firsts = [self._first_seq(list(alt)) for alt in alternatives]
        # What each alternative can start with; one that can match "" starts like ``after``.
        overlap = sum(f.empty for f in firsts) > 1
        seen: frozenset[str] = frozenset()
        for f in firsts:
            chars = f.chars | after.chars if f.empty else f.chars
            overlap = overlap or bool(seen & chars)
            seen |= chars
        if overlap:
            if in_repeat:
                raise ValueError(
                    "alternatives that can start with the same character inside a repeat "
                    "(like (a|ab)*) can take exponential time: make them start differently"
                )
            self._choose(len(alternatives))
        for alt in alternatives:
            self.walk(list(alt), after, in_repeat=in_repeat)

    def _choose(self, n: int) -> None:
        self.choices *= n
        if self.choices > _MAX_CHOICES:
            raise ValueError(
                "too many ambiguous choices (alternatives that start alike, or repeats such "
                "as \\d{1,9}\\d{1,9}, or a bounded repeat after .*): simplify the regex"
            )

    def _follows(self, seq: Sequence[tuple[Any, Any]], follow: _Start) -> list[_Start]:
        """For each item, what can come right after it (within ``seq``, then ``follow``)."""
        out: list[_Start] = [follow] * len(seq)
        current = follow
        for i in range(len(seq) - 1, -1, -1):
            out[i] = current
            current = _then(self._first(seq[i]), current)
        return out

    def _first_seq(self, seq: Sequence[tuple[Any, Any]]) -> _Start:
        current = _NOTHING
        for item in reversed(seq):
            current = _then(self._first(item), current)
        return current

    def _first(self, item: tuple[Any, Any]) -> _Start:
        op, av = item
        if op is _C.LITERAL:
            return _Start(self._variants(chr(av)), False, False)
        if op is _C.NOT_LITERAL:
            return _Start(_ALPHABET - self._variants(chr(av)), False, False)
        if op is _C.ANY:
            return _Start(_ALPHABET if self.flags & re.DOTALL else _ALPHABET - {"\n"}, False, False)
        if op is _C.IN:
            test = self._class_test(av)
            return _Start(frozenset(c for c in _ALPHABET if test(c)), False, False)
        if op is _C.AT:
            return _ANCHOR
        if op is _C.SUBPATTERN:
            outer, self.flags = self.flags, (self.flags | av[1]) & ~av[2]
            try:
                return self._first_seq(list(av[3]))
            finally:
                self.flags = outer
        if op is _C.ATOMIC_GROUP:
            return self._first_seq(list(av))
        if op is _C.BRANCH:
            firsts = [self._first_seq(list(alt)) for alt in av[1]]
            chars = frozenset().union(*(f.chars for f in firsts))
            return _Start(chars, any(f.empty for f in firsts), any(f.free for f in firsts))
        if op in _REPEATS:
            body = self._first_seq(list(av[2]))
            if av[0] == 0:
                return _Start(body.chars, True, True)
            return body
        return _Start(_ALPHABET, True, False)  # anything else: assume the worst

    def _variants(self, c: str) -> frozenset[str]:
        if not self.flags & re.IGNORECASE:
            return frozenset(c)
        return frozenset(x for x in _ALPHABET if c in (x, x.lower(), x.upper(), x.casefold()))

    def _class_test(self, items: list[tuple[Any, Any]]) -> Callable[[str], bool]:
        negate = bool(items) and items[0][0] is _C.NEGATE
        singles: set[str] = set()
        ranges: list[tuple[int, int]] = []
        categories: list[re.Pattern[str]] = []
        for op, av in items:
            if op is _C.LITERAL:
                singles.add(chr(av))
            elif op is _C.RANGE:
                ranges.append((av[0], av[1]))
            elif op is _C.CATEGORY:
                source = _CATEGORIES.get(str(av), r"[\s\S]")
                categories.append(re.compile(source, self.flags & re.ASCII))

        def member(c: str) -> bool:
            return (
                c in singles
                or any(lo <= ord(c) <= hi for lo, hi in ranges)
                or any(p.fullmatch(c) for p in categories)
            )

        fold = bool(self.flags & re.IGNORECASE)

        def test(c: str) -> bool:
            cs = (
                {x for x in (c, c.lower(), c.upper(), c.casefold()) if len(x) == 1} if fold else {c}
            )
            return any(member(x) for x in cs) != negate

        return test


def _then(first: _Start, rest: _Start) -> _Start:
    """What ``first`` followed by ``rest`` can start with."""
    if not first.empty:
        return first
    return _Start(first.chars | rest.chars, rest.empty, first.free and rest.free)

"""Strict YAML reading with line marks, shared by the rules and node.yaml.

PyYAML's ``safe_load`` keeps the last of two duplicate keys without a word, so an
admin's copy-paste silently changes a rule. This reader builds plain Python values
from ruamel.yaml's node graph itself and refuses, with the file, line and column:

- duplicate keys, and keys that are not plain scalars;
- any explicit tag (``!!python/object``, ``!include`` ...): there is nothing to construct;
- anchors and aliases (an alias bomb expands to billions of nodes; configs never need them);
- files over ``MAX_BYTES``, bytes that are not UTF-8, nesting deeper than ``MAX_DEPTH``.

Every value's position is kept in :class:`YamlDocument.marks`, keyed by its path of
keys and list indexes, so a schema error can point at the line that caused it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64  # configs need a handful; this bounds recursion everywhere after

Loc = tuple[str | int, ...]

_FLOW_TOKENS = re.compile(r"""'(?:[^']|'')*'|"(?:[^"\\]|\\.)*"|#[^\n]*|[\[\]{}]""")

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"


class YamlSourceError(ValueError):
    """The YAML text cannot be read; ``str()`` gives ``file:line:col: what to fix``."""

    def __init__(self, source: str, line: int | None, column: int | None, message: str) -> None:
        self.source = source
        self.line = line
        self.column = column
        self.message = message
        where = source if line is None else f"{source}:{line}:{column or 1}"
        super().__init__(f"{where}: {message}")


@dataclass
class YamlDocument:
    """Plain values (dict/list/str/int/float/bool/None) and where each one stands."""

    source: str
    data: Any
    marks: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    # The text as written of every number (``00123`` reads as 123; ``00321060`` is a tag):
    # consumers that want text (rule values, tags) take it from here.
    raw: dict[Loc, str] = field(default_factory=dict)

    def key_mark(self, loc: Loc) -> tuple[int, int] | None:
        """Position of the *key* naming ``loc`` (for "unknown key" errors), else of the value."""
        return self.key_marks.get(tuple(loc)) or self.mark(loc)

    def mark(self, loc: Loc) -> tuple[int, int] | None:
        """Return (line, column), 1-based, of the deepest known prefix of ``loc``."""
        for end in range(len(loc), -1, -1):
            found = self.marks.get(tuple(loc[:end]))
            if found is not None:
                return found
        return None


def read_yaml_file(path: Path) -> YamlDocument:
    """Read ``path`` strictly; raises :class:`YamlSourceError` (or ``OSError``)."""
    source = str(path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise YamlSourceError(
            source, None, None, f"file is {size} bytes; the limit is {MAX_BYTES}: split it"
        )
    return read_yaml_bytes(path.read_bytes(), source)


def read_yaml_bytes(raw: bytes, source: str = "<text>") -> YamlDocument:
    """Read YAML from bytes strictly; raises :class:`YamlSourceError`."""
    if len(raw) > MAX_BYTES:
        raise YamlSourceError(
            source, None, None, f"text is {len(raw)} bytes; the limit is {MAX_BYTES}"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YamlSourceError(
            source, line, None, f"not UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
        ) from None
    return read_yaml_text(text, source)


def read_yaml_text(text: str, source: str = "<text>") -> YamlDocument:
    """Read YAML text strictly; raises :class:`YamlSourceError`."""
    if text.startswith("\ufeff"):
        text = text[1:]
    size = len(text.encode("utf-8", "replace"))
    if size > MAX_BYTES:
        raise YamlSourceError(source, None, None, f"text is {size} bytes; the limit is {MAX_BYTES}")
    too_deep = _flow_too_deep(text)
    if too_deep is not None:
        raise YamlSourceError(
            source, *too_deep, f"nested more than {MAX_DEPTH} levels deep: flatten it"
        )
    yaml = YAML(typ="rt", pure=True)
    try:
        node = yaml.compose(text)
    except RecursionError:
        # ruamel's parser recurses per nesting level: ``[[[[...`` a million deep.
        raise YamlSourceError(
            source, None, None, f"nested more than {MAX_DEPTH} levels deep: flatten it"
        ) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        col = mark.column + 1 if mark is not None else None
        raise YamlSourceError(source, line, col, str(exc.problem or exc.context)) from None
    except YAMLError as exc:
        raise YamlSourceError(source, None, None, str(exc)) from None
    doc = YamlDocument(source=source, data=None)
    if node is not None:
        doc.data = _build(node, (), doc)
    return doc


def _flow_too_deep(text: str) -> tuple[int, int] | None:
    """Where ``[[[[...`` nests too deep, if it does: ruamel's scanner is quadratic in it.

    Quoted strings and comments are skipped roughly; a miss only means ruamel's own
    RecursionError (caught above) stops the bomb, seconds later.
    """
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return None
    depth = 0
    for token in _FLOW_TOKENS.finditer(text):
        bracket = token.group()
        if bracket in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH:
                at = token.start()
                return text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)
        elif bracket in ("]", "}"):
            depth = max(depth - 1, 0)
    return None


def _pos(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _fail(doc: YamlDocument, node: Node, message: str) -> YamlSourceError:
    line, col = _pos(node)
    return YamlSourceError(doc.source, line, col, message)


def _build(node: Node, loc: Loc, doc: YamlDocument) -> Any:
    doc.marks[loc] = _pos(node)
    if len(loc) > MAX_DEPTH:
        raise _fail(doc, node, f"nested more than {MAX_DEPTH} levels deep: flatten it")
    if getattr(node, "anchor", None):
        raise _fail(doc, node, "anchors and aliases (&, *) are not allowed: write the value out")
    if isinstance(node, MappingNode):
        if node.tag != _MAP:
            raise _fail(doc, node, f"tag {node.tag!r} is not allowed")
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _NULL:
                raise _fail(doc, key_node, "a key must be a plain name")
            if getattr(key_node, "anchor", None) or key_node.tag not in (_STR, _INT, _BOOL):
                raise _fail(doc, key_node, f"key tag {key_node.tag!r} is not allowed")
            key = str(key_node.value)
            if key == "<<":
                raise _fail(doc, key_node, "merge keys (<<) are not allowed: write the keys out")
            if key in out:
                first = doc.marks.get((*loc, key))
                where = f" (first at line {first[0]})" if first else ""
                raise _fail(doc, key_node, f"duplicate key {key!r}{where}")
            doc.key_marks[(*loc, key)] = _pos(key_node)
            out[key] = _build(value_node, (*loc, key), doc)
        return out
    if isinstance(node, SequenceNode):
        if node.tag != _SEQ:
            raise _fail(doc, node, f"tag {node.tag!r} is not allowed")
        return [_build(item, (*loc, i), doc) for i, item in enumerate(node.value)]
    if isinstance(node, ScalarNode):
        if node.tag in (_INT, _FLOAT):
            doc.raw[loc] = node.value
        return _scalar(node, doc)
    raise _fail(doc, node, "unsupported YAML node")


def _scalar(node: ScalarNode, doc: YamlDocument) -> Any:
    value: str = node.value
    tag = node.tag
    if tag in (_STR, _TIMESTAMP):
        return value
    if tag == _NULL:
        return None
    if tag == _BOOL:
        return value.lower() in ("true", "yes", "on")
    if tag == _INT:
        cleaned = value.replace("_", "")
        try:
            return (
                int(cleaned, 0) if cleaned.lower().startswith(("0x", "0o", "0b")) else int(cleaned)
            )
        except ValueError:
            return value
    if tag == _FLOAT:
        try:
            return float(value.replace("_", ""))
        except ValueError:
            return value
    raise _fail(doc, node, f"tag {tag!r} is not allowed: remove it")

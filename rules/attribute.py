"""What a rule can look at: a DICOM attribute of the header, or a fact of the association.

Four spellings, all written as a mapping key under ``when:`` or as a ``join`` source:

``Modality``
    A DICOM keyword from the standard's data dictionary (pydicom's copy), case as in the
    standard. Unknown keywords are errors, with the nearest known one suggested.
``"(0032,1060)"`` or ``"00321060"``
    A public tag, group and element in hex. Quote it: unquoted ``00321060`` is a number
    in YAML (the loader keeps the text as written, but quoting says what you mean).
``"(0011,xx10)@ACME LABS"`` or ``"0011xx10@ACME LABS"``
    A private attribute: odd group ``0011``, element ``10`` *within the block reserved by
    the private creator* ``ACME LABS``. A sender may put that block at ``(0011,1010)``
    or ``(0011,1210)``; the creator (the value of ``(0011,0010)``..``(0011,00FF)``) is
    what identifies it, so a private tag without its creator is refused.
``calling_ae``, ``called_ae``, ``peer_host``
    The association the instance came on: the sender's AE title, the AE title it called
    (ours), and the sender's IP address.

Sequences and binary attributes (pixel data, ``OB``/``OW``/``UN`` ...) cannot be
matched: rules compare text. :func:`parse_attribute` raises ``ValueError`` with what to
write instead.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache

# pydicom is imported where used: `import pydicom` loads numpy and its pixel handlers,
# which a command that only reads node.yaml (courier request list) must not pay for.

ASSOCIATION_KEYS = ("calling_ae", "called_ae", "peer_host")

_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "SQ"})
_DATE_VRS = frozenset({"DA", "DT"})
_KEYWORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_PAREN = re.compile(r"\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4}|[xX]{2}[0-9A-Fa-f]{2})\)(?:@(.*))?", re.S)
_BARE = re.compile(r"([0-9A-Fa-f]{4})([0-9A-Fa-f]{4}|[xX]{2}[0-9A-Fa-f]{2})(?:@(.*))?", re.S)


@dataclass(frozen=True)
class Attribute:
    """A parsed attribute reference.

    For header attributes, ``key`` is what :meth:`rules.facts.Facts.get` is asked for:
    a public tag as ``(tag, None)``; a private one as ``((group << 16) | offset,
    creator)``, ``offset`` being the element's low byte (``0x10`` in ``(0011,xx10)``).
    ``vr`` is the dictionary's VR, ``None`` for private attributes and association facts.
    """

    text: str
    tag: int = 0
    creator: str | None = None
    association: str | None = None
    vr: str | None = None

    @property
    def key(self) -> tuple[int, str | None]:
        """The header lookup key (meaningless for association facts)."""
        return self.tag, self.creator

    @property
    def takes_dates(self) -> bool:
        """Whether date operators make sense: a DA/DT attribute, or a private one."""
        if self.association is not None:
            return False
        return self.vr is None or self.vr in _DATE_VRS


@lru_cache(maxsize=4096)
def parse_attribute(text: str) -> Attribute:
    """Parse one attribute reference; raises ``ValueError`` telling the admin what to write."""
    if text in ASSOCIATION_KEYS:
        return Attribute(text=text, association=text)
    found = _PAREN.fullmatch(text) or _BARE.fullmatch(text)
    if found is not None:
        return _tag(text, int(found[1], 16), found[2].lower(), found[3])
    if _KEYWORD.fullmatch(text):
        from pydicom.datadict import tag_for_keyword

        tag = tag_for_keyword(text)
        if tag is not None:
            return _public(text, tag)
    raise ValueError(_unknown(text))


def _tag(text: str, group: int, element: str, creator: str | None) -> Attribute:
    private = group % 2 == 1
    if element.startswith("x"):
        if not private:
            raise ValueError(
                f"only private (odd) groups have creator blocks; "
                f"write the full tag, e.g. ({group:04X},1060)"
            )
        if creator is None or not creator.strip():
            raise ValueError(
                f"a private attribute needs its creator: write "
                f"({group:04X},xx{element[2:].upper()})@CREATOR, CREATOR being the value of the "
                "private creator element"
            )
        if group <= 0x0007 or group == 0xFFFF:
            raise ValueError(f"group {group:04X} cannot hold private attributes")
        if len(creator) > 64 or "\\" in creator:
            raise ValueError("a private creator is at most 64 characters, no '\\'")
        offset = int(element[2:], 16)
        return Attribute(text=text, tag=(group << 16) | offset, creator=creator.strip())
    number = int(element, 16)
    if creator is not None:
        raise ValueError(
            f"with a creator, give the element within its block: "
            f"({group:04X},xx{number & 0xFF:02X})@{creator}"
        )
    if private:
        if 0x0010 <= number <= 0x00FF:
            return Attribute(text=text, tag=(group << 16) | number, vr="LO")  # a creator
        raise ValueError(
            f"private attributes move between senders; name the creator: "
            f"({group:04X},xx{number & 0xFF:02X})@CREATOR"
        )
    return _public(text, (group << 16) | number)


def _public(text: str, tag: int) -> Attribute:
    from pydicom.datadict import get_entry

    try:
        vr, _vm, _name, _retired, keyword = get_entry(tag)
    except KeyError:
        raise ValueError(
            f"tag ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not in the DICOM "
            "dictionary; check the numbers, or use a keyword"
        ) from None
    if {v.strip() for v in vr.split(" or ")} <= _BINARY_VRS:
        what = "a sequence" if vr == "SQ" else f"binary data (VR {vr})"
        raise ValueError(
            f"{keyword or 'this tag'} holds {what}; rules can only compare "
            "text values of top-level attributes"
        )
    return Attribute(text=text, tag=tag, vr=vr)


def _unknown(text: str) -> str:
    from pydicom.datadict import keyword_dict

    choices = [*keyword_dict, *ASSOCIATION_KEYS]
    folded = {k.lower(): k for k in choices}
    guess = folded.get(text.lower())
    if guess is None:
        close = difflib.get_close_matches(text, choices, n=1, cutoff=0.75)
        guess = close[0] if close else None
    hint = f"; did you mean {guess!r}?" if guess else ""
    return (
        f"unknown attribute {text!r}: use a DICOM keyword (e.g. AccessionNumber), a tag "
        f"'(0032,1060)', a private tag '(0011,xx10)@CREATOR', or one of "
        f"{', '.join(ASSOCIATION_KEYS)}{hint}"
    )

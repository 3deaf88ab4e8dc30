"""What the rules see of a study: one representative header and the association.

The matcher asks a :class:`Facts` for values; callers either implement it over what they
already keep (the index), or build a :class:`StudyFacts` with :func:`facts_from_dataset`.

Keys: a public attribute is ``(tag, None)``; a private one is ``((group << 16) | offset,
creator)``, ``offset`` being the element's low byte within the creator's block, so
``(0011,1210)`` in the block reserved by ``(0011,0012) = "ACME"`` is
``(0x00110010, "ACME")``. Values are text, DICOM padding (spaces, NUL) stripped; an empty
value is the same as an absent one.

Headers hold patient data: never log a :class:`StudyFacts`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

# pydicom is imported where used: `import pydicom` loads numpy and its pixel handlers,
# which a command that only reads node.yaml (courier request list) must not pay for.
if TYPE_CHECKING:
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

Key = tuple[int, str | None]

_SKIP_VRS = frozenset({"SQ", "OB", "OD", "OF", "OL", "OV", "OW"})
_PIXEL_GROUPS = (0x7FE0,)
_MAX_TEXT = 64 * 1024


class Facts(Protocol):
    """The lookups a rule set needs; see the module docstring for keys and values."""

    def get(self, tag: int, creator: str | None = None) -> str | list[str] | None:
        """The value(s) of the attribute, or ``None`` when it is absent or empty."""
        ...

    @property
    def calling_ae(self) -> str | None:
        """The sender's AE title."""
        ...

    @property
    def called_ae(self) -> str | None:
        """The AE title the sender called."""
        ...

    @property
    def peer_host(self) -> str | None:
        """The sender's IP address."""
        ...


@dataclass(frozen=True)
class StudyFacts:
    """A plain :class:`Facts`: header values by key, and the association's three facts."""

    header: Mapping[Key, tuple[str, ...]] = field(default_factory=dict)
    calling_ae: str | None = None
    called_ae: str | None = None
    peer_host: str | None = None

    def get(self, tag: int, creator: str | None = None) -> str | list[str] | None:
        """The value (one) or values (several) under the key, ``None`` when absent."""
        values = self.header.get((tag, creator))
        if not values:
            return None
        return values[0] if len(values) == 1 else list(values)


@dataclass(frozen=True)
class AssociationFacts:
    """Who sent the instance: AE titles and IP address (not patient data)."""

    calling_ae: str | None = None
    called_ae: str | None = None
    peer_host: str | None = None


def facts_from_dataset(
    ds: Dataset,
    association: AssociationFacts | None = None,
    *,
    wanted: Iterable[Key] | None = None,
) -> StudyFacts:
    """Build :class:`StudyFacts` from a header (top-level attributes only).

    With ``wanted`` (e.g. :attr:`rules.matcher.RuleSet.wanted`) only those keys are read,
    which is much cheaper on a large header; without it every text attribute is kept.
    Sequences, pixel data and binary values are skipped, except private ``UN`` values
    that decode as printable ASCII (private tags received in implicit VR arrive so).
    """
    header: dict[Key, tuple[str, ...]] = {}
    if wanted is None:
        for elem in ds:
            key = _key(ds, elem)
            if key is not None:
                _keep(header, key, elem)
    else:
        keys = list(wanted)
        blocks = _blocks(ds, {tag >> 16 for tag, creator in keys if creator is not None})
        for tag, creator in keys:
            full: int | None = tag
            if creator is not None:
                block = blocks.get((tag >> 16, creator))
                full = None if block is None else (tag & 0xFFFF0000) | (block << 8) | (tag & 0xFF)
            if full is not None and full in ds:
                _keep(header, (tag, creator), ds[full])
    peer = association or AssociationFacts()
    return StudyFacts(
        header=header,
        calling_ae=_clean(peer.calling_ae),
        called_ae=_clean(peer.called_ae),
        peer_host=_clean(peer.peer_host),
    )


def _key(ds: Dataset, elem: DataElement) -> Key | None:
    group, element = elem.tag.group, elem.tag.element
    if group in _PIXEL_GROUPS:
        return None
    if group % 2 == 0 or element < 0x1000:
        return int(elem.tag), None
    creator_elem = ds.get((group << 16) | (element >> 8))
    if creator_elem is None or not isinstance(creator_elem.value, str):
        return None
    return (group << 16) | (element & 0xFF), creator_elem.value.strip(" \x00")


def _blocks(ds: Dataset, groups: set[int]) -> dict[tuple[int, str], int]:
    """``(group, creator) -> block`` for the private creators of ``groups`` in ``ds``."""
    out: dict[tuple[int, str], int] = {}
    if not groups:
        return out
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset would decode every element
        group, element = tag >> 16, tag & 0xFFFF
        if group in groups and 0x0010 <= element <= 0x00FF:
            value = ds[tag].value
            if isinstance(value, str):
                out.setdefault((group, value.strip(" \x00")), element)
    return out


def _keep(header: dict[Key, tuple[str, ...]], key: Key, elem: DataElement) -> None:
    values = _texts(elem)
    if values:
        header[key] = values


def _texts(elem: DataElement) -> tuple[str, ...]:
    if elem.VR in _SKIP_VRS:
        return ()
    value = elem.value
    if value is None:
        return ()
    if isinstance(value, bytes | bytearray):
        if elem.VR != "UN" or not elem.tag.is_private or len(value) > _MAX_TEXT:
            return ()
        try:
            text = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            return ()
        if not text.strip(" \x00").isprintable():
            return ()
        items: Iterable[object] = text.split("\\")
    elif isinstance(value, list | tuple | _multivalue()):
        items = cast(Iterable[object], value)
    else:
        items = (value,)  # str, numbers, PersonName (iterable, but one value)
    out = (_clean(str(item)) for item in items)
    return tuple(v for v in out if v)


def _multivalue() -> type:
    from pydicom.multival import MultiValue  # cached by the import system after once

    return MultiValue


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    return value.strip(" \x00") or None

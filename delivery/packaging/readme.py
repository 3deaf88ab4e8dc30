"""The package's ``README.txt`` and ``README.html``, in the request's language and medium.

Both come from ``delivery/templates/readme.{txt,html}.j2`` through
:func:`delivery.i18n.render` (domain ``readme``): English is the source text, Arabic and
Simplified Chinese live in ``delivery/locale/*/LC_MESSAGES/readme.po``, and a language
without a catalog falls back to English. The HTML page is self-contained and carries
``lang`` and ``dir`` (``rtl`` for Arabic). No patient data: the reference is enough for
staff to find the request.

Two media (:data:`Medium`) share the templates and the catalog: ``"zip"`` (a downloaded
ZIP part: unzip it first, the link expires) and ``"disc"`` (a CD or DVD written by
:mod:`delivery.disc`: open the disc by its volume label, nothing to unpack, hand over the
disc or copy all of it). The disc text says nothing about ZIP files, unzipping, links or
expiry, nor about a ``PREVIEW`` folder (a disc has none).

The per-platform sections and the viewers are data here (:data:`PLACES`,
:data:`DISC_PLACES`) rather than template text; their strings are msgids of the same
catalog, listed in :data:`MESSAGES` so a catalog check can find them (Babel's extractor
does not see ``_(variable)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from babel.dates import format_date

from delivery.i18n import SOURCE_LANGUAGE, locale_name, render

DOMAIN = "readme"

#: Where the README travels: a ZIP part, or a disc image.
Medium = Literal["zip", "disc"]


@dataclass(frozen=True)
class Viewer:
    """A free (or free-to-try) DICOM viewer the README suggests."""

    name: str
    url: str
    note: str  # msgid


@dataclass(frozen=True)
class Place:
    """How to open the package on one kind of device (all strings are msgids).

    ``how`` may use ``%(label)s``, the disc's volume label (disc places only).
    """

    title: str
    how: str
    viewers: tuple[Viewer, ...]
    open: str | None


_OPEN_IT = "In the viewer, open the DICOMDIR file or the unzipped folder."

PLACES: tuple[Place, ...] = (
    Place(
        "On a Windows computer",
        'Right-click the ZIP file and choose "Extract All". Then install a free viewer, '
        "for example:",
        (
            Viewer("Weasis", "https://weasis.org", "free, for Windows, Mac and Linux"),
            Viewer("MicroDicom", "https://www.microdicom.com", "free for personal use"),
            Viewer("RadiAnt DICOM Viewer", "https://www.radiantviewer.com", "free to try"),
        ),
        _OPEN_IT,
    ),
    Place(
        "On a Mac",
        "Double-click the ZIP file to unzip it. Then install a free viewer, for example:",
        (
            Viewer("Horos", "https://horosproject.org", "free, for Mac"),
            Viewer("OsiriX Lite", "https://www.osirix-viewer.com", "free, for Mac"),
            Viewer("Weasis", "https://weasis.org", "free, for Windows, Mac and Linux"),
        ),
        _OPEN_IT,
    ),
    Place(
        "On an iPhone, iPad or Android phone",
        "A phone is fine for a quick look. In the Files app, tap the ZIP file to unzip it. "
        'Install a free DICOM viewer app from the App Store or Google Play (search for "DICOM '
        'viewer"), then open the unzipped folder with it. The pictures in the PREVIEW folder '
        "open in any photo app.",
        (
            Viewer(
                "IMAIOS DICOM Viewer",
                "https://www.imaios.com/en/imaios-dicom-viewer",
                "free, for iPhone, iPad and Android",
            ),
        ),
        None,
    ),
)

_OPEN_DISC = "In the viewer, open the DICOMDIR file on the disc."

#: The same devices and viewers for a disc: opened where the computer shows it, by its
#: volume label; a phone or tablet cannot read one.
DISC_PLACES: tuple[Place, ...] = (
    Place(
        PLACES[0].title,
        'Open File Explorer and click the disc drive named "%(label)s" (under "This PC"). '
        'If Windows asks what to do with the disc, choose "Open folder to view files". '
        "Then install a free viewer, for example:",
        PLACES[0].viewers,
        _OPEN_DISC,
    ),
    Place(
        PLACES[1].title,
        'A disc icon named "%(label)s" appears on the desktop and in the Finder sidebar: '
        "double-click it to open the disc. Then install a free viewer, for example:",
        PLACES[1].viewers,
        _OPEN_DISC,
    ),
    Place(
        PLACES[2].title,
        "A phone or tablet cannot read a disc. Look at your images on a computer instead.",
        (),
        None,
    ),
)

_PLACES: dict[Medium, tuple[Place, ...]] = {"zip": PLACES, "disc": DISC_PLACES}

#: Every msgid that reaches the templates as data (see the module docstring).
MESSAGES: frozenset[str] = frozenset(
    {p.title for places in _PLACES.values() for p in places}
    | {p.how for places in _PLACES.values() for p in places}
    | {p.open for places in _PLACES.values() for p in places if p.open}
    | {v.note for places in _PLACES.values() for p in places for v in p.viewers}
)


def _date(value: datetime, tag: str) -> str:
    try:
        return format_date(value, format="long", locale=locale_name(tag))
    except Exception:  # an unknown locale: the ISO date reads the same everywhere
        return value.date().isoformat()


def render_readmes(
    *,
    language: str,
    reference: str,
    contact: str,
    created: datetime,
    expires: datetime | None,
    part: int,
    parts: int,
    studies: int,
    series: int,
    instances: int,
    medium: Medium = "zip",
    label: str | None = None,
    viewer: bool = False,
) -> tuple[str, str]:
    """Return ``(README.txt, README.html)`` for one part, in ``language`` (BCP 47).

    Counts are those of the whole package. An unknown language renders in English.
    ``medium="zip"`` (the default) is the downloaded part's text; ``medium="disc"`` is the
    disc's, which names the disc by ``label`` (its volume label, required) and leaves out
    ``expires`` (a disc does not expire). Raises ``ValueError`` for a disc without a label
    or in more than one part (a disc image is always whole). ``viewer``: the part (or disc)
    has the offline viewer, which the README then points to first.
    """
    if medium == "disc" and not label:
        raise ValueError("a disc README needs the disc's volume label (label=)")
    if medium == "disc" and (part, parts) != (1, 1):
        raise ValueError(f"a disc is one part, not part {part} of {parts}")
    context: dict[str, object] = {
        "reference": reference,
        "contact": contact,
        "created": _date(created, language),
        "expires": _date(expires, language) if expires else None,
        "part": part,
        "parts": parts,
        "studies": studies,
        "series": series,
        "instances": instances,
        "places": _PLACES[medium],
        "disc": medium == "disc",
        "label": label,
        "viewer": viewer,
    }
    tag = language or SOURCE_LANGUAGE
    text = render("readme.txt.j2", tag, DOMAIN, **context)
    html = render("readme.html.j2", tag, DOMAIN, **context)
    return text, html

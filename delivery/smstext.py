"""SMS text: GSM-7 or UCS-2, and how many segments a text costs.

Kept apart from :mod:`delivery.sms` (the Twilio channel) so that composing a message
does not import Twilio and requests: a node without ``sms`` configured never loads them.
"""

from __future__ import annotations

import math

_GSM_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXT = set("^{}\\[~]|€\f")  # two septets each (escape + char)
_REPLACE = str.maketrans(
    {
        "‘": "'",
        "’": "'",
        "‚": "'",
        "‛": "'",
        "′": "'",
        "“": '"',
        "”": '"',
        "„": '"',
        "‟": '"',
        "″": '"',
        "–": "-",
        "—": "-",
        "‒": "-",
        "−": "-",
        "‐": "-",
        "‑": "-",
        "\u00a0": " ",
        "\u202f": " ",
        "\u2007": " ",
        "\u2009": " ",
        "\u200a": " ",
        "\u200b": None,
        "\u200c": None,
        "\u200d": None,
        "\ufeff": None,
        "…": "...",
        "•": "*",
        "\t": " ",
    }
)


def gsm_safe(text: str) -> str:
    """``text`` with typographic punctuation and odd spaces replaced by GSM-7 ones.
    Letters outside GSM-7 (Arabic, Chinese) are kept: those messages are UCS-2 anyway."""
    return text.translate(_REPLACE)


def is_gsm7(text: str) -> bool:
    """True when every character is in the GSM 03.38 basic or extension table."""
    return all(c in _GSM_BASIC or c in _GSM_EXT for c in text)


def segments(text: str) -> int:
    """How many SMS segments ``text`` costs (GSM-7: 160, or 153 when split; UCS-2: 70,
    or 67 when split, counted in UTF-16 units)."""
    if is_gsm7(text):
        n = sum(2 if c in _GSM_EXT else 1 for c in text)
        return 1 if n <= 160 else math.ceil(n / 153)
    n = len(text.encode("utf-16-le")) // 2
    return 1 if n <= 70 else math.ceil(n / 67)

"""Short human-typable request references with a check character.

A reference looks like ``CR-7KQ4-M2XD-9``: the prefix ``CR``, eight symbols, and one
check symbol, all from a 29-symbol alphabet that leaves out the characters people
confuse when they read or type them (0/O, 1/I/L, U, and Z, which handwriting mixes up
with 2). 29^8 is about 5 × 10^11 references: enough to be unique for a node's lifetime
(collisions are retried by the caller, the column is unique); a reference is a name,
not a secret.

The check symbol makes the weighted sum ``Σ (i+1)·value(sᵢ)`` over all nine symbols
≡ 0 (mod 29). 29 is prime and the weights 1…9 are distinct and non-zero modulo 29, so
every single-symbol typo and every swap of two symbols (adjacent or not) changes the sum
and is caught. At 14 characters the formatted reference fits a DICOM SH element such as
AccessionNumber.
"""

from __future__ import annotations

import random
import secrets

ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXY"
PREFIX = "CR"
BODY_LENGTH = 8
_MOD = len(ALPHABET)
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
_SEPARATORS = str.maketrans("", "", " -_\t")
_system_rng = secrets.SystemRandom()

assert _MOD == 29  # the check's guarantees need a prime modulus above the weights


def check_symbol(body: str) -> str:
    """The check symbol for ``body`` (symbols of :data:`ALPHABET`); raises KeyError."""
    total = sum((i + 1) * _VALUE[c] for i, c in enumerate(body))
    weight = len(body) + 1
    # Solve total + weight·check ≡ 0 (mod 29): multiply by the inverse of the weight.
    return ALPHABET[(-total * pow(weight, -1, _MOD)) % _MOD]


def format_reference(body: str) -> str:
    """``CR-XXXX-XXXX-C`` for an eight-symbol body (the check symbol is computed)."""
    return f"{PREFIX}-{body[:4]}-{body[4:]}-{check_symbol(body)}"


def new_reference(rng: random.Random | None = None) -> str:
    """A fresh random reference; ``rng`` defaults to the OS's CSPRNG (``secrets``)."""
    chooser = rng if rng is not None else _system_rng
    return format_reference("".join(chooser.choice(ALPHABET) for _ in range(BODY_LENGTH)))


def normalize_reference(text: str) -> str | None:
    """The canonical form of a typed reference, or None if it is not one.

    Case-insensitive; spaces, tabs, dashes and underscores are ignored; the ``CR``
    prefix is optional. None when a symbol is outside the alphabet, the length is wrong,
    or the check symbol does not match (a typo).
    """
    compact = text.translate(_SEPARATORS).upper()
    if len(compact) == BODY_LENGTH + 1 + len(PREFIX) and compact.startswith(PREFIX):
        compact = compact[len(PREFIX) :]
    if len(compact) != BODY_LENGTH + 1 or any(c not in _VALUE for c in compact):
        return None
    body, check = compact[:BODY_LENGTH], compact[BODY_LENGTH]
    return format_reference(body) if check_symbol(body) == check else None

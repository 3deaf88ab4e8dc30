"""Staff API keys: made once, shown once, stored only as hashes.

A key is ``ck_`` followed by 32 random bytes (URL-safe base64), so a plain SHA-256 of it
is enough: with 256 bits of entropy there is nothing to brute-force, and a slow hash
would only cost every request time. A presented key is compared against *every*
configured hash with :func:`hmac.compare_digest`, so the time taken says nothing about
which key nearly matched. Keys never appear in log lines; the actor recorded for what a
key does is ``api:`` and the first 8 hex digits of its hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

PREFIX = "ck_"
_HEX = frozenset("0123456789abcdef")
# Longer than any key we issue by far; a bigger header is not a key, and is not hashed.
_MAX_KEY = 256


def new_api_key() -> str:
    """A fresh random key, to be shown once to whoever creates it."""
    return PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """The SHA-256 hex digest stored in place of ``key``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def check_hashes(hashes: Sequence[str]) -> tuple[str, ...]:
    """The configured hashes, lower-cased; raises ValueError naming a malformed one."""
    out: list[str] = []
    for i, h in enumerate(hashes):
        norm = h.strip().lower()
        if len(norm) != 64 or not set(norm) <= _HEX:
            raise ValueError(
                f"api key hash #{i + 1} is not a SHA-256 hex digest (64 characters 0-9a-f); "
                "store hash_api_key(key), never the key itself"
            )
        out.append(norm)
    return tuple(out)


def match_api_key(key: str, hashes: Sequence[str]) -> str | None:
    """The hash of ``key`` if it is one of ``hashes`` (already checked), else None."""
    if not key or len(key) > _MAX_KEY:
        return None
    digest = hash_api_key(key)
    found = False
    for h in hashes:  # no early exit: the same work whichever key matches
        found |= hmac.compare_digest(digest, h)
    return digest if found else None


def actor_of(digest: str) -> str:
    """Who did it, as recorded on requests and events: ``api:<8 hex>``."""
    return f"api:{digest[:8]}"

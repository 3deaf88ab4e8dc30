"""Staff passwords, kept as scrypt hashes (Python's ``hashlib.scrypt``: no new dependency).

Why scrypt: it is memory-hard (each guess costs memory as well as time, which is what
makes GPU and ASIC guessing expensive), it ships with Python's standard library through
OpenSSL, and OWASP's password storage guidance lists it next to Argon2id. Argon2id or
bcrypt would each need a third-party package for no gain in this setting.

Parameters (:data:`PARAMS`): N=2^15, r=8, p=3, a 16-byte random salt, a 32-byte key.
That is OWASP's "N=2^15, r=8, p=3" equivalent of its N=2^17, r=8, p=1 minimum: the same
work with a quarter of the memory (128·N·r = 32 MiB per hash), about 240 ms on this
project's 2-core machines. At most :data:`CONCURRENT` hashes run at once (one per core),
so a burst of sign-ins cannot exhaust memory; the rate limit per address does the rest.

Format: ``scrypt$n=32768,r=8,p=3$<salt, base64>$<key, base64>``. The parameters travel
with each hash, so raising them later only changes new hashes (:func:`needs_rehash`),
and a stored hash's parameters are bounded before use (a tampered row cannot make a
sign-in allocate gigabytes).

:func:`verify` compares in constant time; :func:`verify_or_dummy` checks an unknown
user's attempt against a dummy hash with the same parameters, so how long a refusal
takes says nothing about whether the username exists.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass
from functools import lru_cache

SCHEME = "scrypt"
MIN_LENGTH = 12
MAX_LENGTH = 1024  # a password is hashed once per try; a megabyte one is a nuisance
CONCURRENT = 2
_SALT_BYTES = 16
_KEY_BYTES = 32
_gate = threading.BoundedSemaphore(CONCURRENT)


class PasswordError(ValueError):
    """A password that cannot be used (too short, too long, control characters)."""


@dataclass(frozen=True)
class ScryptParams:
    """scrypt's cost: ``n`` (CPU/memory, a power of two), ``r`` (block size), ``p``
    (parallelism). Memory per hash is 128·n·r bytes."""

    n: int = 2**15
    r: int = 8
    p: int = 3

    def check(self) -> None:
        """Raise ValueError unless these are sane bounds (also for parameters read from
        a stored hash)."""
        if not (2 <= self.n <= 2**20 and self.n & (self.n - 1) == 0):
            raise ValueError("scrypt n must be a power of two between 2 and 2^20")
        if not (1 <= self.r <= 32 and 1 <= self.p <= 16):
            raise ValueError("scrypt r must be 1-32 and p 1-16")

    @property
    def maxmem(self) -> int:
        return 128 * self.n * self.r * 2 + 1024 * 1024


PARAMS = ScryptParams()
"""The parameters new hashes get (tests swap in cheap ones)."""


def check_password(password: str) -> None:
    """Raise :class:`PasswordError` unless ``password`` may be set (length, no controls)."""
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordError(f"a password has at most {MAX_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        raise PasswordError("a password cannot hold control characters (a pasted newline?)")


def _derive(password: str, salt: bytes, params: ScryptParams) -> bytes:
    with _gate:
        return hashlib.scrypt(
            password.encode("utf-8", "surrogatepass"),
            salt=salt,
            n=params.n,
            r=params.r,
            p=params.p,
            maxmem=params.maxmem,
            dklen=_KEY_BYTES,
        )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str, params: ScryptParams | None = None) -> str:
    """The stored form of ``password`` (see the module docstring); raises PasswordError."""
    check_password(password)
    params = params or PARAMS
    params.check()
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _derive(password, salt, params)
    return f"{SCHEME}$n={params.n},r={params.r},p={params.p}${_b64(salt)}${_b64(key)}"


def _parse(stored: str) -> tuple[ScryptParams, bytes, bytes] | None:
    try:
        scheme, settings, salt, key = stored.split("$")
        if scheme != SCHEME:
            return None
        values = dict(item.split("=", 1) for item in settings.split(","))
        params = ScryptParams(n=int(values["n"]), r=int(values["r"]), p=int(values["p"]))
        params.check()
        return params, _unb64(salt), _unb64(key)
    except (ValueError, KeyError):
        return None


def verify(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored`` (constant-time compare). A malformed
    stored hash or an over-long password is simply False."""
    parsed = _parse(stored)
    if parsed is None or len(password) > MAX_LENGTH:
        return False
    params, salt, key = parsed
    return hmac.compare_digest(_derive(password, salt, params), key)


@lru_cache(maxsize=4)
def _dummy(params: ScryptParams) -> str:
    return hash_password(secrets.token_urlsafe(24), params)


def verify_or_dummy(password: str, stored: str | None) -> bool:
    """:func:`verify` against ``stored``, or against a dummy hash (always False) when
    there is no such user, taking the same time."""
    if stored is None or len(password) > MAX_LENGTH or _parse(stored) is None:
        verify(password[:MAX_LENGTH], _dummy(PARAMS))
        return False
    return verify(password, stored)


def needs_rehash(stored: str) -> bool:
    """True when ``stored`` was made with other parameters than :data:`PARAMS`."""
    parsed = _parse(stored)
    return parsed is None or parsed[0] != PARAMS

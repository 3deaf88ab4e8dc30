"""Grants: a recipient's link and second factor, with nothing secret in the database.

A grant is one recipient's right to download one package until ``expires_at``. Its link
token is at least 128 random bits in effect: it is ``HMAC-SHA256(node secret,
"link:" + token_salt)`` (256 bits, base64url), derived again whenever the link email is
composed, so neither the token nor anything that yields it without the node's secret
is ever stored. The database keeps ``SHA-256(token)`` for the portal's look-up.

One-time codes work the same way: ``issue_code`` draws a fresh ``code_salt``, the 6
digits are derived from it (every re-send of that outbox row carries the *same* code,
so a patient never gets two different ones from one press), and only a keyed hash is
kept, compared in constant time, valid ``code_ttl_min`` minutes.

The node secret lives in a file (``<data_dir>/secret.key`` by default, mode 0600,
made at first start); losing it invalidates every link, which is safe.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import unicodedata
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from store.models import Grant, ReleaseRequest

SECRET_BYTES = 32


class GrantError(Exception):
    """A grant cannot do what was asked (expired, revoked, locked, too many codes)."""


def load_secret(path: Path) -> bytes:
    """The node secret in ``path``, made (0600, never overwritten) if missing."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_hex(SECRET_BYTES) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    text = path.read_text(encoding="ascii").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise GrantError(
            f"{path} does not hold a node secret (64 hex digits); delete it to make a "
            "new one (every link already sent stops working)"
        )
    return key


class GrantKeys:
    """Derives link tokens and codes from the node secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, label: str, value: str) -> bytes:
        return hmac.new(self._secret, f"{label}:{value}".encode(), hashlib.sha256).digest()

    def derive(self, label: str, value: str) -> bytes:
        """HMAC-SHA256 of ``label:value`` with the node secret, for other derived
        secrets (``link``, ``code`` and ``code-hash`` are this class's own labels)."""
        return self._mac(label, value)

    def token(self, grant: Grant) -> str:
        """The link token of ``grant`` (43 URL-safe characters)."""
        return base64.urlsafe_b64encode(self._mac("link", grant.token_salt)).rstrip(b"=").decode()

    @staticmethod
    def token_hash(token: str) -> str:
        """What the database keeps of a token, and what a presented token is looked up by."""
        return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()

    def code(self, grant: Grant) -> str:
        """The 6-digit code of the grant's current ``code_salt``."""
        if not grant.code_salt:
            raise GrantError("no code was issued for this grant")
        n = int.from_bytes(self._mac("code", grant.code_salt)[:8], "big")
        return f"{n % 1_000_000:06d}"

    def code_hash(self, grant_id: int, code: str) -> str:
        """The keyed hash a code is kept and compared as."""
        return self._mac("code-hash", f"{grant_id}:{code}").hex()

    def check_code(self, grant: Grant, presented: str, now: datetime) -> bool:
        """True when ``presented`` is the grant's live code (constant-time compare)."""
        if grant.code_hash is None or grant.code_expires_at is None:
            return False
        if now >= grant.code_expires_at:
            return False
        digits = code_digits(presented)
        if digits is None:
            return False  # not a code at all: a wrong try, nothing learnt about the code
        return hmac.compare_digest(self.code_hash(grant.id, digits), grant.code_hash)


def code_digits(presented: str) -> str | None:
    """A typed code as the 6 ASCII digits it is compared as, or None when it is not one.

    Every Unicode decimal digit counts as its value (a patient typing on an Arabic or a
    Persian keyboard types ``٠``-``٩`` or ``۰``-``۹``, a Japanese IME full-width ``０``-``９``);
    spaces and dashes between them are dropped. Anything else (a letter, a superscript,
    another symbol), or a count other than 6, is not a code.
    """
    digits = []
    for ch in presented:
        if ch.isspace() or unicodedata.category(ch) == "Pd":
            continue
        value = unicodedata.decimal(ch, None)
        if value is None:
            return None
        digits.append(str(value))
    return "".join(digits) if len(digits) == 6 else None


def new_grant(
    s: Session,
    keys: GrantKeys,
    req: ReleaseRequest,
    *,
    package_id: int | None,
    link_days: int,
    now: datetime,
    purpose: str = "patient",
) -> Grant:
    """Add a grant for the request's recipient to ``s`` (flushed: its id is set)."""
    grant = Grant(
        request_id=req.id,
        package_id=package_id,
        purpose=purpose,
        recipient_email=req.recipient_email,
        second_channel=req.second_channel,
        backup_email=req.backup_email,
        language=req.language,
        token_salt=secrets.token_hex(16),
        token_hash="",
        created_at=now,
        expires_at=now + timedelta(days=link_days),
        code_tries=0,
        codes_sent=0,
        codes_failed=0,
        downloads=0,
    )
    grant.token_hash = keys.token_hash(keys.token(grant))
    s.add(grant)
    s.flush()
    return grant


def issue_code(s: Session, keys: GrantKeys, grant: Grant, *, now: datetime, ttl_min: int) -> None:
    """Give ``grant`` a fresh code (the previous one stops working) in ``s``.

    Raises :class:`GrantError` when the grant is expired, revoked or locked. The caller
    enqueues the notification in the same transaction (see ``delivery.notices``).
    """
    if grant.revoked_at is not None or now >= grant.expires_at:
        raise GrantError("this link has expired or was withdrawn; ask the hospital for a new one")
    if grant.locked_at is not None:
        raise GrantError("this link is locked after too many wrong codes; staff can re-issue it")
    grant.code_salt = secrets.token_hex(16)
    grant.code_hash = keys.code_hash(grant.id, keys.code(grant))
    grant.code_expires_at = now + timedelta(minutes=ttl_min)
    grant.code_tries = 0
    grant.codes_sent += 1
    s.flush()

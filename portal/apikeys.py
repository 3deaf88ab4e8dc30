"""Staff API keys: made once, shown once, stored only as hashes.

Keys live in the ``api_keys`` table (migration 0015; made by ``courier apikey create``
or the staff Keys page, :func:`create_key`, listed by :func:`list_keys`, revoked by
:func:`revoke_key`, each audited as ``api-key``). :class:`KeyRing` is what the API
checks a presented key against: the digests fixed in node.yaml (``portal.api_key_hashes``)
and the legacy keys file, read once at start, then the table, looked up by digest on
*every* call. There is no cache: the lookup is one indexed SELECT (bench/cli.py measures
it), so a key made or revoked in any process takes effect at once in every process,
without a restart. Looking a digest up through an index leaks nothing useful by its
timing: a caller cannot choose a key whose digest approaches a stored one. A key's
``last_used_at`` is written at most once a minute (a conditional UPDATE), so a busy
RIS does not write on every call and several processes do not race on it.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from store.audit import record
from store.catalog import guarded
from store.models import ApiKey, utcnow

PREFIX = "ck_"
_HEX = frozenset("0123456789abcdef")
# Longer than any key we issue by far; a bigger header is not a key, and is not hashed.
_MAX_KEY = 256
#: ``last_used_at`` is written at most this often per key.
TOUCH_EVERY = timedelta(minutes=1)
#: Labels are cut to this many characters (the column's size).
LABEL_MAX = 80
#: A key is named for ``revoke`` by its id or by at least this many hex digits of its digest.
MIN_PREFIX = 6


class UnknownKey(LookupError):
    """No key, or more than one, matches what was named; ``str()`` says which."""


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


def read_keys_file(path: Path) -> list[str]:
    """The digests in the legacy keys file (one per line, ``#`` starts a comment); a
    missing file holds none. Keys made since migration 0015 live in the database."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line.lower())
    return out


def clean_label(label: str) -> str:
    """``label`` on one line, at most :data:`LABEL_MAX` characters (it is shown to staff)."""
    return " ".join(label.split())[:LABEL_MAX]


def create_key(s: Session, label: str, actor: str, now: datetime) -> tuple[str, ApiKey]:
    """A new key and its row, added to ``s`` with its audit event (the caller commits).
    The key itself is returned once, to be shown once; only its digest is stored."""
    key = new_api_key()
    row = ApiKey(
        digest=hash_api_key(key), label=clean_label(label), created_at=now, created_by=actor
    )
    s.add(row)
    s.flush()
    record(s, "api-key", actor=actor, detail=f"created API key #{row.id} ({actor_of(row.digest)})")
    return key, row


def list_keys(s: Session) -> list[ApiKey]:
    """Every key in the table, revoked ones too, oldest first."""
    return list(s.scalars(select(ApiKey).order_by(ApiKey.id)))


def find_key(s: Session, named: str) -> ApiKey:
    """The key ``named`` by its id (``7`` or ``#7``) or by a prefix of its digest (at
    least :data:`MIN_PREFIX` hex digits, as ``list`` shows it; ``api:`` allowed in front).
    Raises :class:`UnknownKey` when none or several match."""
    text = named.strip().lower().removeprefix("api:").removeprefix("#")
    if text.isdigit() and len(text) < MIN_PREFIX:
        row = s.get(ApiKey, int(text))
        if row is None:
            raise UnknownKey(f"no API key #{text}; see `courier apikey list`")
        return row
    if len(text) < MIN_PREFIX or not set(text) <= _HEX:
        raise UnknownKey(
            f"name a key by its id or by at least {MIN_PREFIX} hex digits of its digest"
        )
    rows = list(s.scalars(select(ApiKey).where(ApiKey.digest.startswith(text)).limit(2)))
    if not rows:
        raise UnknownKey(f"no API key with digest {text}...; see `courier apikey list`")
    if len(rows) > 1:
        raise UnknownKey(f"more than one API key starts with {text}; give more digits")
    return rows[0]


def revoke_key(s: Session, row: ApiKey, actor: str, now: datetime) -> bool:
    """Revoke ``row`` (audited); False when it already was. A conditional UPDATE, so
    two staff revoking together record one revocation."""
    done = cast(
        CursorResult[Any],
        s.execute(
            update(ApiKey)
            .where(ApiKey.id == row.id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=now, revoked_by=actor)
            .execution_options(synchronize_session=False)
        ),
    ).rowcount
    if not done:
        return False
    record(s, "api-key", actor=actor, detail=f"revoked API key #{row.id} ({actor_of(row.digest)})")
    s.refresh(row)
    return True


@dataclass(frozen=True)
class KeyRing:
    """The keys the API accepts (see the module docstring). ``hashes`` are the fixed
    digests, already :func:`check_hashes`-ed; without ``sessions`` only they count."""

    hashes: tuple[str, ...]
    sessions: sessionmaker[Session] | None = None
    clock: Callable[[], datetime] = utcnow

    def match(self, key: str) -> str | None:
        """The digest of ``key`` when it is accepted, else None. Raises
        :class:`store.errors.DatabaseUnavailable` when the table cannot be read."""
        digest = match_api_key(key, self.hashes)
        if digest is not None or self.sessions is None:
            return digest
        if not key or len(key) > _MAX_KEY:
            return None
        digest = hash_api_key(key)
        with guarded(self.sessions) as s:
            row = s.execute(
                select(ApiKey.id, ApiKey.revoked_at, ApiKey.last_used_at).where(
                    ApiKey.digest == digest
                )
            ).first()
            if row is None or row.revoked_at is not None:
                return None
            now = self.clock()
            if row.last_used_at is None or now - row.last_used_at >= TOUCH_EVERY:
                s.execute(
                    update(ApiKey)
                    .where(
                        ApiKey.id == row.id,
                        or_(
                            ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= now - TOUCH_EVERY
                        ),
                    )
                    .values(last_used_at=now)
                    .execution_options(synchronize_session=False)
                )
                s.commit()
        return digest

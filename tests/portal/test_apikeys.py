from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from portal.apikeys import (
    KeyRing,
    UnknownKey,
    actor_of,
    check_hashes,
    create_key,
    find_key,
    hash_api_key,
    match_api_key,
    new_api_key,
    revoke_key,
)
from store.models import ApiKey, AuditEvent
from tests.conftest import Database


def test_new_keys_are_prefixed_random_and_match_only_their_hash() -> None:
    a, b = new_api_key(), new_api_key()
    assert a.startswith("ck_") and len(a) > 40 and a != b
    hashes = check_hashes([hash_api_key(b), hash_api_key(a).upper()])
    assert match_api_key(a, hashes) == hash_api_key(a)
    assert match_api_key("ck_wrong", hashes) is None
    assert match_api_key("", hashes) is None
    assert match_api_key("x" * 10_000, hashes) is None
    assert actor_of(hash_api_key(a)) == f"api:{hash_api_key(a)[:8]}"


@pytest.mark.parametrize("bad", ["", "abc", "g" * 64, "ck_" + "a" * 61])
def test_a_configured_value_that_is_not_a_hash_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="#1 is not a SHA-256"):
        check_hashes([bad])


class _Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_keys_in_the_database_work_at_once_and_stop_at_once(db: Database) -> None:
    """KeyRing (every API call): no cache, so a key made or revoked by another process
    counts on the next call; last_used_at is written at most once a minute."""
    clock = _Clock()
    fixed = new_api_key()
    ring = KeyRing(check_hashes([hash_api_key(fixed)]), db.sessions, clock)
    with db.sessions() as s, s.begin():
        key, row = create_key(s, "  RIS\nfeed ", "cli:ops", clock())
        assert row.label == "RIS feed" and row.digest == hash_api_key(key)
    assert ring.match(fixed) == hash_api_key(fixed)  # node.yaml's digests still count
    assert ring.match(key) == hash_api_key(key)

    def last_used() -> datetime | None:
        with db.sessions() as s:
            return s.scalar(select(ApiKey.last_used_at))

    assert last_used() == clock.now
    first = clock.now
    clock.now += timedelta(seconds=59)
    assert ring.match(key) is not None and last_used() == first
    clock.now += timedelta(seconds=1)
    assert ring.match(key) is not None and last_used() == clock.now
    with db.sessions() as s, s.begin():
        found = find_key(s, hash_api_key(key)[:8])
        assert revoke_key(s, found, "staff:alice", clock())
        assert not revoke_key(s, found, "staff:bob", clock())  # once only
    assert ring.match(key) is None
    assert ring.match("ck_" + "x" * 43) is None
    with db.sessions() as s:
        details = list(s.scalars(select(AuditEvent.detail).order_by(AuditEvent.id)))
    assert [d.split(" ", 1)[0] for d in details] == ["created", "revoked"]
    assert not any(key in d for d in details)


@pytest.mark.parametrize(
    ("named", "problem"),
    [
        ("2", "no API key #2"),
        ("abc", "at least 6 hex digits"),
        ("zzzzzzzz", "at least 6 hex digits"),
        ("another prefix", "no API key with digest"),
    ],
)
def test_a_key_is_named_by_id_or_digest_prefix(db: Database, named: str, problem: str) -> None:
    with db.sessions() as s, s.begin():
        _key, row = create_key(s, "a", "cli:ops", datetime.now(UTC))
        assert find_key(s, "1") is row and find_key(s, f"api:{row.digest[:8]}") is row
        with pytest.raises(UnknownKey, match=problem):
            other = ("1" if row.digest[0] == "0" else "0") + row.digest[1:6]
            find_key(s, other if named == "another prefix" else named)

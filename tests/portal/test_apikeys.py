from __future__ import annotations

import pytest

from portal.apikeys import actor_of, check_hashes, hash_api_key, match_api_key, new_api_key


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

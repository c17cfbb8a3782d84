from datetime import UTC, datetime, timedelta

from services.common.endpoints import sf_outbound_url
from services.common.keys import key_hash, key_matches, new_endpoint_key, valid_hashes

NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)


def test_a_key_matches_its_own_hash_only() -> None:
    key = new_endpoint_key()
    assert key_matches(key, [key_hash(key)])
    assert not key_matches(key + "x", [key_hash(key)])
    assert not key_matches(new_endpoint_key(), [key_hash(key)])


def test_no_key_and_no_hashes_never_match() -> None:
    assert not key_matches(None, [])
    assert not key_matches("", [key_hash("")])  # an empty key is no key
    assert not key_matches(None, [None])
    assert not key_matches(new_endpoint_key(), [])


def test_previous_key_is_valid_during_its_grace_only() -> None:
    assert valid_hashes("new", "old", NOW + timedelta(seconds=1), NOW) == ["new", "old"]
    assert valid_hashes("new", "old", NOW, NOW) == ["new"]
    assert valid_hashes("new", "old", None, NOW) == ["new"]
    assert valid_hashes(None, None, None, NOW) == []


def test_generated_keys_are_long_url_safe_and_distinct() -> None:
    keys = {new_endpoint_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(len(k) >= 40 and k.replace("_", "").replace("-", "").isalnum() for k in keys)


def test_outbound_url_carries_the_key_as_a_query_parameter() -> None:
    url = sf_outbound_url("https://os.example.com/", "acme", "record-created", "osek_a-b_c")
    assert url == "https://os.example.com/salesforce/acme/record-created?key=osek_a-b_c"
    assert sf_outbound_url("", "acme", "record-reassigned", None) == (
        "/salesforce/acme/record-reassigned"
    )

"""Secrets at rest: sealed under the key ring's first key, opened by any key of the ring, bound
to where they are stored, resealed when a new key is put first."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from services.common.crypto import (
    KeyRing,
    Sealed,
    SecretsKeyInvalid,
    SecretsKeyMissing,
    SecretUnreadable,
    new_key_spec,
)
from services.common.settings import Settings

CONTEXT = "tenant_connections/acme/sf_client_secret_ciphertext"
SECRET = "3F2504E0-4F89-11D3-9A0C-0305E82C3301-consumer-secret"


def test_a_sealed_secret_opens_to_itself_and_shows_nothing_of_it() -> None:
    ring = KeyRing.parse(new_key_spec("k1"))

    sealed = ring.seal(SECRET, context=CONTEXT)

    assert sealed.key_id == "k1"
    assert SECRET not in sealed.ciphertext
    assert SECRET.encode() not in base64.b64decode(sealed.ciphertext)
    assert ring.open(sealed, context=CONTEXT) == SECRET


def test_sealing_twice_gives_two_ciphertexts() -> None:
    ring = KeyRing.parse(new_key_spec())

    assert ring.seal(SECRET, context=CONTEXT) != ring.seal(SECRET, context=CONTEXT)


def test_a_ciphertext_moved_to_another_tenant_does_not_open() -> None:
    ring = KeyRing.parse(new_key_spec())
    sealed = ring.seal(SECRET, context=CONTEXT)

    with pytest.raises(SecretUnreadable):
        ring.open(sealed, context=CONTEXT.replace("acme", "globex"))


def test_an_altered_ciphertext_does_not_open() -> None:
    ring = KeyRing.parse(new_key_spec())
    sealed = ring.seal(SECRET, context=CONTEXT)
    raw = bytearray(base64.b64decode(sealed.ciphertext))
    raw[-1] ^= 1

    with pytest.raises(SecretUnreadable, match="does not open"):
        ring.open(Sealed(sealed.key_id, base64.b64encode(raw).decode()), context=CONTEXT)


def test_after_a_new_key_is_put_first_the_old_key_id_still_opens() -> None:
    old_spec = new_key_spec("k1")
    sealed_by_old = KeyRing.parse(old_spec).seal(SECRET, context=CONTEXT)

    rotated = KeyRing.parse(f"{new_key_spec('k2')},{old_spec}")

    assert rotated.current_key_id == "k2"
    assert rotated.open(sealed_by_old, context=CONTEXT) == SECRET
    assert rotated.seal(SECRET, context=CONTEXT).key_id == "k2"


def test_resealing_moves_a_secret_to_the_current_key_and_the_old_key_can_go() -> None:
    old_spec, new_spec = new_key_spec("k1"), new_key_spec("k2")
    sealed_by_old = KeyRing.parse(old_spec).seal(SECRET, context=CONTEXT)
    rotated = KeyRing.parse(f"{new_spec},{old_spec}")

    resealed = rotated.reseal(sealed_by_old, context=CONTEXT)

    assert resealed is not None and resealed.key_id == "k2"
    assert rotated.reseal(resealed, context=CONTEXT) is None  # already under the current key
    assert KeyRing.parse(new_spec).open(resealed, context=CONTEXT) == SECRET


def test_a_secret_whose_key_left_the_ring_says_which_key_is_missing() -> None:
    sealed = KeyRing.parse(new_key_spec("k1")).seal(SECRET, context=CONTEXT)

    with pytest.raises(SecretUnreadable, match=r"'k1'.*holds k2"):
        KeyRing.parse(new_key_spec("k2")).open(sealed, context=CONTEXT)


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("changeme", "placeholder"),
        ("k1:" + base64.b64encode(b"too short").decode(), "9 bytes, AES-256 needs 32"),
        ("k1:" + base64.b64encode(bytes(32)).decode(), "not random"),
        ("k1:not base64!", "not base64"),
        ("just-a-key-without-an-id", "kid:BASE64KEY"),
        (f"{new_key_spec('k1')},{new_key_spec('k1')}", "appears twice"),
        (" , ", "kid:BASE64KEY"),
    ],
    ids=["placeholder", "short", "zeros", "not-base64", "no-key-id", "repeated-id", "empty"],
)
def test_unusable_key_rings_are_refused_with_the_reason_and_how_to_make_one(
    spec: str, complaint: str
) -> None:
    with pytest.raises(SecretsKeyInvalid, match=complaint) as refused:
        KeyRing.parse(spec)

    assert "OWNERSYNC_SECRETS_KEY" in str(refused.value)


def test_settings_refuse_a_bad_key_without_echoing_it() -> None:
    short = "k1:" + base64.b64encode(b"0123456789abcdef").decode()

    with pytest.raises(ValidationError) as refused:
        Settings.model_validate({"secrets_key": short})  # raw, as the environment gives it

    assert "16 bytes, AES-256 needs 32" in str(refused.value)
    assert short.split(":")[1] not in str(refused.value)


def test_without_a_key_storing_a_secret_says_to_set_one() -> None:
    settings = Settings(secrets_key=None)

    with pytest.raises(SecretsKeyMissing, match="OWNERSYNC_SECRETS_KEY is not set"):
        _ = settings.keyring


def test_a_blank_key_setting_counts_as_unset() -> None:
    assert Settings.model_validate({"secrets_key": "  "}).secrets_key is None


def test_generated_key_specs_parse_and_differ() -> None:
    first, second = new_key_spec(), new_key_spec()

    assert first != second
    assert KeyRing.parse(first).key_ids == ("k1",)

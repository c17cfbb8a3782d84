"""Secrets at rest: AES-256-GCM under a key ring read from OWNERSYNC_SECRETS_KEY.

The setting is `kid:BASE64KEY[,kid:BASE64KEY…]`: the first key seals, every key opens, and the
key id travels beside each ciphertext, so a new key can be put first and the stored secrets
resealed under it (`KeyRing.reseal`) before the old one is dropped. Each ciphertext is bound to
where it is stored (the `context`, e.g. tenant and column) as associated data: a ciphertext
copied into another tenant's row does not open.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
_NONCE_BYTES = 12
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_PLACEHOLDERS = {"changeme", "change-me", "secret", "password", "xxx", "todo", "key"}
SETTING = "OWNERSYNC_SECRETS_KEY"
HOW_TO_MAKE_ONE = (
    f"set {SETTING} to `k1:` followed by 32 random bytes in base64, e.g. the output of "
    "python -c \"import base64,os; print('k1:' + base64.urlsafe_b64encode(os.urandom(32))"
    '.decode())"'
)


class SecretsKeyInvalid(ValueError):
    """The key ring setting cannot be used (malformed, short, placeholder, repeated id)."""


class SecretsKeyMissing(Exception):
    """A secret was to be sealed or opened and no key ring is configured."""

    def __init__(self) -> None:
        super().__init__(
            f"{SETTING} is not set: ownersync stores no secret without an encryption key; "
            + HOW_TO_MAKE_ONE
        )


class SecretUnreadable(Exception):
    """A stored secret does not open: its key id is not in the ring, or it was tampered with."""


@dataclass(frozen=True)
class Sealed:
    """A secret as it is stored: the ciphertext (nonce + AES-GCM output, base64) and the id of
    the key that sealed it."""

    key_id: str
    ciphertext: str


def new_key_spec(key_id: str = "k1") -> str:
    """A fresh `kid:BASE64KEY` entry for OWNERSYNC_SECRETS_KEY."""
    return f"{key_id}:{base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode()}"


class KeyRing:
    def __init__(self, keys: Iterable[tuple[str, bytes]]) -> None:
        self._keys: dict[str, AESGCM] = {}
        order: list[str] = []
        for key_id, key in keys:
            if key_id in self._keys:
                raise SecretsKeyInvalid(f"{SETTING}: key id {key_id!r} appears twice")
            self._keys[key_id] = AESGCM(_checked_key(key_id, key))
            order.append(key_id)
        if not order:
            raise SecretsKeyInvalid(f"{SETTING} holds no key; " + HOW_TO_MAKE_ONE)
        self.current_key_id = order[0]
        self.key_ids = tuple(order)

    @classmethod
    def parse(cls, spec: str) -> KeyRing:
        """`kid:BASE64KEY[,kid:BASE64KEY…]`, the first key sealing; every problem named."""
        entries: list[tuple[str, bytes]] = []
        for raw in spec.split(","):
            entry = raw.strip()
            if entry.lower() in _PLACEHOLDERS:
                raise SecretsKeyInvalid(f"{SETTING} is a placeholder; " + HOW_TO_MAKE_ONE)
            key_id, sep, encoded = entry.partition(":")
            if not sep or not _KEY_ID.match(key_id):
                raise SecretsKeyInvalid(
                    f"{SETTING}: every entry is `kid:BASE64KEY` with a key id of letters, digits, "
                    "`-` or `_` (32 at most); " + HOW_TO_MAKE_ONE
                )
            entries.append((key_id, _decoded(key_id, encoded)))
        return cls(entries)

    def seal(self, plaintext: str, *, context: str) -> Sealed:
        nonce = os.urandom(_NONCE_BYTES)
        aead = self._keys[self.current_key_id]
        body = aead.encrypt(nonce, plaintext.encode(), context.encode())
        return Sealed(self.current_key_id, base64.b64encode(nonce + body).decode())

    def open(self, sealed: Sealed, *, context: str) -> str:
        aead = self._keys.get(sealed.key_id)
        if aead is None:
            raise SecretUnreadable(
                f"sealed under key id {sealed.key_id!r}, which {SETTING} no longer holds "
                f"(it holds {', '.join(self.key_ids)})"
            )
        try:
            raw = base64.b64decode(sealed.ciphertext, validate=True)
            plaintext = aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode())
        except (InvalidTag, binascii.Error, ValueError):
            raise SecretUnreadable(
                f"the secret sealed under key id {sealed.key_id!r} does not open: "
                "altered, or stored for another place"
            ) from None
        return plaintext.decode()

    def reseal(self, sealed: Sealed, *, context: str) -> Sealed | None:
        """The secret sealed under the current key, or None when it already is."""
        if sealed.key_id == self.current_key_id:
            return None
        return self.seal(self.open(sealed, context=context), context=context)


def _decoded(key_id: str, encoded: str) -> bytes:
    try:
        padded = encoded + "=" * (-len(encoded) % 4)
        return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise SecretsKeyInvalid(
            f"{SETTING}: the key of {key_id!r} is not base64; " + HOW_TO_MAKE_ONE
        ) from None


def _checked_key(key_id: str, key: bytes) -> bytes:
    if len(key) != KEY_BYTES:
        raise SecretsKeyInvalid(
            f"{SETTING}: the key of {key_id!r} is {len(key)} bytes, AES-256 needs {KEY_BYTES}; "
            + HOW_TO_MAKE_ONE
        )
    # A key of one repeated byte (all zeros, "AAAA…") is somebody's placeholder, not a key.
    if len(set(key)) < 8:
        raise SecretsKeyInvalid(
            f"{SETTING}: the key of {key_id!r} is not random (too few distinct bytes); "
            + HOW_TO_MAKE_ONE
        )
    return key

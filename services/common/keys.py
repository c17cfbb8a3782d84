"""Keys that callers present and ownersync keeps only as hashes (the SF endpoint key).

The keys are 256-bit random, so a plain SHA-256 is as good as a slow hash. Checking compares
against every candidate in constant time, with or without a match, and a tenant that does not
exist is checked against a stand-in hash so that it costs the same as a wrong key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from datetime import datetime

ENDPOINT_KEY_PREFIX = "osek_"
# Compared against when there is nothing to compare against: same work, never a match.
_NO_KEY = hashlib.sha256(b"ownersync: no key").hexdigest()


def new_endpoint_key() -> str:
    return ENDPOINT_KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_matches(presented: str | None, hashes: Iterable[str | None]) -> bool:
    """Whether `presented` is one of the keys whose hashes are given (None: no key)."""
    candidates = [h for h in hashes if h] or [_NO_KEY]
    digest = key_hash(presented or "")
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(digest, candidate)
    return matched and bool(presented)


def valid_hashes(
    current: str | None, previous: str | None, previous_expires_at: datetime | None, now: datetime
) -> list[str]:
    """The current hash, then the previous one while its grace period lasts."""
    valid = [current] if current else []
    if previous and previous_expires_at is not None and now < previous_expires_at:
        valid.append(previous)
    return valid

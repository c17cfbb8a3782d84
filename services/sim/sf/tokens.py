"""Salesforce's access tokens as its identity service knows them: which org and connected app
each was issued to, with what scopes, until when.

Simulated orgs issue into one `AccessTokens` and the AE simulator checks against the same one,
as the real AE trusts the tokens of the org that owns the business unit. Whoever serves both
simulators hands the same instance to both (`SfSimState(tokens=…)`, `AeSimState(tokens=…)`).
Tokens are kept by their SHA-256, so looking one up compares no secret byte by byte.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

DEFAULT_LIFETIME = timedelta(hours=2)  # Salesforce's default session timeout


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Grant:
    org_id: str
    client_id: str
    scopes: frozenset[str]
    expires_at: datetime


class AccessTokens:
    def __init__(
        self,
        *,
        lifetime: timedelta = DEFAULT_LIFETIME,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self._grants: dict[str, Grant] = {}

    def issue(self, org_id: str, client_id: str, scopes: Iterable[str]) -> str:
        token = f"{org_id[:15]}!{secrets.token_urlsafe(48)}"
        expires_at = self.clock() + self.lifetime
        self._grants[_digest(token)] = Grant(org_id, client_id, frozenset(scopes), expires_at)
        return token

    def grant(self, token: str) -> Grant | None:
        """What `token` grants now; None when it is unknown, revoked or expired."""
        grant = self._grants.get(_digest(token))
        if grant is None or grant.expires_at <= self.clock():
            return None
        return grant

    def revoke(self, org_id: str, client_id: str | None = None) -> int:
        """Forget the org's tokens (of one connected app, or all): they answer 401 at once."""
        doomed = [d for d, g in self._grants.items() if _of(g, org_id, client_id)]
        for digest in doomed:
            del self._grants[digest]
        return len(doomed)

    def expire(self, org_id: str, client_id: str | None = None) -> int:
        """Run the org's tokens out of time, as a session timeout would."""
        now = self.clock()
        expired = 0
        for digest, grant in self._grants.items():
            if _of(grant, org_id, client_id) and grant.expires_at > now:
                self._grants[digest] = replace(grant, expires_at=now)
                expired += 1
        return expired

    def live(self, org_id: str) -> int:
        now = self.clock()
        return sum(1 for g in self._grants.values() if g.org_id == org_id and g.expires_at > now)


def _of(grant: Grant, org_id: str, client_id: str | None) -> bool:
    return grant.org_id == org_id and client_id in (None, grant.client_id)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()

"""The simulated orgs' access tokens, in memory: what each grants, until when, and the
switches that revoke and expire them or change the connected app's secret and scopes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.sim.sf.org import SfSimError, SfSimState
from services.sim.sf.tokens import AccessTokens

ORG_A, ORG_B = "00D5e000000OrgAAAA", "00D5e000000OrgBAAA"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 3, 9, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_a_token_grants_its_org_app_and_scopes_until_it_expires() -> None:
    clock = Clock()
    tokens = AccessTokens(lifetime=timedelta(minutes=5), clock=clock)
    token = tokens.issue(ORG_A, "app", {"api", "pardot_api"})

    grant = tokens.grant(token)
    clock.now += timedelta(minutes=5)

    assert grant is not None
    assert (grant.org_id, grant.client_id, grant.scopes) == (
        ORG_A,
        "app",
        frozenset({"api", "pardot_api"}),
    )
    assert tokens.grant(token) is None
    assert tokens.grant("not-a-token") is None


def test_revoking_and_expiring_touch_one_org_only() -> None:
    tokens = AccessTokens()
    a1, a2 = tokens.issue(ORG_A, "app", {"api"}), tokens.issue(ORG_A, "app", {"api"})
    b = tokens.issue(ORG_B, "app", {"api"})

    assert tokens.revoke(ORG_A) == 2
    assert tokens.grant(a1) is None and tokens.grant(a2) is None
    assert tokens.grant(b) is not None
    assert tokens.expire(ORG_B) == 1
    assert tokens.grant(b) is None


def test_two_orgs_sharing_one_token_registry_accept_only_their_own_tokens() -> None:
    shared = AccessTokens()
    org_a = SfSimState(org_id=ORG_A, tokens=shared)
    org_b = SfSimState(org_id=ORG_B, client_id="b", client_secret="b-secret", tokens=shared)
    token_b = org_b.issue_token("b", "b-secret")

    org_b.authorize(f"Bearer {token_b}")
    with pytest.raises(SfSimError, match="INVALID_SESSION_ID"):
        org_a.authorize(f"Bearer {token_b}")


def test_a_token_without_the_api_scope_is_no_session_for_the_rest_api() -> None:
    org = SfSimState(org_id=ORG_A, oauth_scopes=frozenset({"pardot_api"}))
    token = org.issue_token(org.client_id, "ownersync-sim-secret")

    with pytest.raises(SfSimError, match="INVALID_SESSION_ID"):
        org.authorize(f"Bearer {token}")


def test_a_rotated_client_secret_refuses_the_old_one_and_a_revoked_one_refuses_all() -> None:
    org = SfSimState(org_id=ORG_A)
    old = org.client_secret
    assert old is not None

    new = org.rotate_client_secret()
    with pytest.raises(ValueError, match="invalid client credentials"):
        org.issue_token(org.client_id, old)
    org.issue_token(org.client_id, new)

    org.revoke_client_secret()
    with pytest.raises(ValueError, match="invalid client credentials"):
        org.issue_token(org.client_id, new)

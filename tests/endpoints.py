"""SF outbound-message URLs as the tests call them: with the demo tenant's endpoint key."""

from __future__ import annotations

from services.common.endpoints import SfAction, sf_outbound_url
from services.demo.replay import demo_tenant

ACME_ENDPOINT_KEY = demo_tenant().salesforce_endpoint_key


def sf_path(action: SfAction, tenant: str = "acme", key: str | None = ACME_ENDPOINT_KEY) -> str:
    """The path SF posts an outbound message of `action` to: the endpoint key in the query."""
    return sf_outbound_url("", tenant, action, key)

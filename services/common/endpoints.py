"""The URLs a tenant pastes into SF and AE: one place that spells them."""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote, urlencode

SfAction = Literal["record-created", "record-reassigned", "record-updated"]


def sf_outbound_url(base_url: str, tenant: str, action: SfAction, key: str | None) -> str:
    """The endpoint URL of an SF outbound-message action, carrying the tenant's endpoint key."""
    url = f"{base_url.rstrip('/')}/salesforce/{quote(tenant, safe='')}/{action}"
    return f"{url}?{urlencode({'key': key})}" if key else url


def ae_webhook_url(base_url: str, tenant: str) -> str:
    return f"{base_url.rstrip('/')}/engagement/{quote(tenant, safe='')}/events"

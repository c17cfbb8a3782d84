"""A tenant file's fields have the types of the API's inputs: what the API answers 422 to is
not a tenant file."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from services.admin.tenant_file import TenantFile
from services.demo.replay import SF


def _demo_file() -> dict[str, Any]:
    return dict(json.loads((SF / "tenant.json").read_text()))


def test_the_demo_tenant_file_holds_every_id_in_its_18_character_form() -> None:
    raw = _demo_file()
    raw["queues"] = {"inbound_leads": raw["queues"]["inbound_leads"][:15]}
    data = TenantFile.model_validate(raw)
    assert data.queues == {"inbound_leads": "00G5g0000QQQdLAEQ1"}
    assert data.connector_user_name == "connector"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tenant", "Upper Case"),
        ("salesforce_org_id", "0055g0000Zti3ElAQI"),  # a user id, not an org id
        ("queues", {"inbound_leads": "0055g0000Zti3ElAQI"}),
        ("engagement_users", {"alice": 0}),
        ("webhook_secret", "too short"),
        ("sync_mode", "accounts"),
        ("salesforce_endpoint_key", "too short"),
    ],
)
def test_a_value_the_api_refuses_makes_the_file_invalid(field: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        TenantFile.model_validate({**_demo_file(), field: value})


def test_a_connector_user_missing_from_salesforce_users_makes_the_file_invalid() -> None:
    raw = _demo_file()
    del raw["salesforce_users"]["connector"]
    with pytest.raises(ValidationError, match="connector_user is not one of salesforce_users"):
        TenantFile.model_validate(raw)

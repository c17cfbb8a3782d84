"""The kernel's one builder for each thing several places need: a tenant's policy from its
row, the words for AE's owner, the rule ids as audit rows and metrics spell them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.admin.records import ae_owner_in
from services.common.db.store import policy_from_row, policy_of
from services.common.domain import Rule, TenantPolicy, describe_ae_owner


def test_policy_is_built_from_every_decision_setting_of_the_tenant_row() -> None:
    row = {
        "id": "acme",
        "salesforce_org_id": "00D5g000004xAbCEAU",
        "connector_user_id": "0055g00000ePONxAAO",
        "sync_mode": "contacts",
        "auto_create_prospects": False,
        "connector_verified": False,
        "webhook_secret": "not read",
    }

    assert (
        policy_of(row)
        == policy_from_row(SimpleNamespace(_mapping=row))
        == TenantPolicy(
            tenant_id="acme",
            connector_user_id="0055g00000ePONxAAO",
            sync_mode="contacts",
            auto_create_prospects=False,
            connector_verified=False,
        )
    )


@pytest.mark.parametrize(
    ("user", "queue", "words"),
    [(101, None, "AE user 101"), (None, "00G5g0000QQQdLAEQ1", "the queue 00G5g0000QQQdLAEQ1")],
)
def test_ae_owner_is_named_the_same_way_everywhere(
    user: int | None, queue: str | None, words: str
) -> None:
    assert describe_ae_owner(user, queue) == words
    assert ae_owner_in({"ae_assigned_user_id": user, "ae_assigned_queue_id": queue}) == words


def test_no_ae_owner_is_worded_to_fit_the_sentence() -> None:
    assert describe_ae_owner(None, None) == "nobody"
    assert describe_ae_owner(None, None, unassigned="the prospect unassigned").endswith(
        "unassigned"
    )
    assert ae_owner_in(None) == ae_owner_in({}) == "unassigned"


def test_rule_ids_are_stored_and_labelled_as_the_plain_strings_they_always_were() -> None:
    assert [r.value for r in Rule] == [
        "A0",
        *(f"A{n}" for n in range(1, 10)),
        "DUP",
        "STALE",
        *(f"S{n}" for n in range(1, 10)),
        "RELAY",
        "MERGE",
        "SLA",
    ]
    assert all(str(r) == f"{r}" == r.value == r for r in Rule)
    assert max(len(r.value) for r in Rule) <= 8  # audit_log.rule is String(8)

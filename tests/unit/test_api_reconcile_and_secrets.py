"""Pure parts of the admin layer: reconcile's S5/S6 verdicts, webhook secrets during a
rotation, the opaque cursors."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from services.admin.errors import Invalid
from services.admin.pagination import decode_cursor, encode_cursor
from services.admin.reconcile import Verdict, reconcile_record
from services.admin.tenants import valid_webhook_secrets
from services.common.domain import AeProspectUpsert, RecordState, TenantPolicy

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)
POLICY = TenantPolicy(tenant_id="acme", connector_user_id="0055g00000ePONxAAO")
BOB = "0055g0000M6fuVCAQY"
QUEUE = "00G5g0000QQQdLAEQ1"
RECORD = RecordState(
    id=1,
    prospect_id=9,
    sf_record_id="00Q5g0000ZWHszxEQD",
    sf_object="Lead",
    email="kim@example.com",
    ae_assigned_user_id=101,
    sf_owner_id=BOB,
    last_modstamp=NOW - timedelta(hours=1),
)


def _verdict(record: RecordState, owner_ae: int | None) -> Verdict:
    return reconcile_record(record, owner_ae, policy=POLICY, run_id=uuid.uuid4(), now=NOW)


def test_record_owned_in_sf_by_a_connected_user_gets_that_users_ae_user() -> None:
    verdict = _verdict(RECORD, 102)
    assert verdict.outcome == "fixed" and verdict.decision is not None
    after = verdict.decision.after
    assert after is not None
    assert (after.ae_assigned_user_id, after.ae_assigned_queue_id) == (102, None)
    assert after.last_modstamp == RECORD.last_modstamp  # not a newer SF notification
    assert verdict.decision.rule == "S5" and verdict.decision.reason.startswith("reconcile: ")
    assert verdict.decision.effects == (
        AeProspectUpsert(102, None, "kim@example.com", "00Q5g0000ZWHszxEQD"),
    )


def test_record_on_a_queue_in_sf_gets_the_queue_in_ae() -> None:
    verdict = _verdict(RECORD.evolve(sf_owner_id=QUEUE), None)
    assert verdict.decision is not None and verdict.decision.rule == "S6"
    assert verdict.decision.after is not None
    assert verdict.decision.after.ae_assigned_queue_id == QUEUE
    assert verdict.decision.after.ae_assigned_user_id is None


def test_agreeing_unconnected_and_unsynced_records_are_left_alone() -> None:
    assert _verdict(RECORD.evolve(ae_assigned_user_id=102), 102).outcome == "agree"
    assert _verdict(RECORD, None).outcome == "sf_owner_not_connected"
    assert _verdict(RECORD.evolve(sf_owner_id=None, sf_record_id=None), None).outcome == (
        "not_in_salesforce"
    )


def test_record_with_no_modstamp_is_reconciled_not_taken_for_stale() -> None:
    verdict = _verdict(RECORD.evolve(last_modstamp=None), 102)
    assert verdict.outcome == "fixed" and verdict.decision is not None
    assert verdict.decision.after is not None and verdict.decision.after.last_modstamp is None


@dataclass
class _Tenant:
    webhook_secret: str
    previous_webhook_secret: str | None
    previous_secret_expires_at: datetime | None


def test_previous_webhook_secret_is_valid_only_until_it_expires() -> None:
    tenant = _Tenant("new", "old", NOW + timedelta(minutes=5))
    assert valid_webhook_secrets(tenant, NOW) == ["new", "old"]
    assert valid_webhook_secrets(tenant, NOW + timedelta(minutes=5)) == ["new"]
    assert valid_webhook_secrets(_Tenant("only", None, None), NOW) == ["only"]


def test_cursors_round_trip_and_refuse_anything_else() -> None:
    assert decode_cursor(encode_cursor(42), int) == 42
    assert decode_cursor(encode_cursor("005x"), str) == "005x"
    assert decode_cursor(None, int) is None
    for bad in ("%%%", encode_cursor("x"), "e30"):
        with pytest.raises(Invalid):
            decode_cursor(bad, int)

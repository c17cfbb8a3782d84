"""Effects through the outbox: a typed effect becomes a row (kind + versioned payload) and the
row becomes the same typed effect again, old payloads included; the relay dispatches on type."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from services.common.db.store import Cause, outbox_row
from services.common.domain import (
    AeProspectUpsert,
    Effect,
    EffectPayloadError,
    Learned,
    RecordState,
    SfOwnerReassign,
    SfRecordUpsert,
    effect_from_outbox,
)
from services.relay.relay import Attempt, Senders

NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
CAUSE = Cause("0b6a2e5f-4c1e-4d59-9a4b-7c0f3f0e2a11", "04l5g0000UoNypnAQC", "sf.record.created")
EFFECTS: list[Effect] = [
    AeProspectUpsert(101, None, email="kim@example.com", salesforce_id="00Q5g0000ZWHszxEQD"),
    AeProspectUpsert(None, "00G5g0000QQQdLAEQ1"),
    SfRecordUpsert("Lead", "0055g0000Zti3ElAQI", auto_assign=False, email="kim@example.com"),
    SfRecordUpsert("Contact", None, auto_assign=True),
    SfOwnerReassign("Lead", "0055g0000Zti3EmAQI"),
]


def through_the_json_column(row: dict[str, Any]) -> Any:
    return json.loads(json.dumps(row["payload"]))


@pytest.mark.parametrize("effect", EFFECTS, ids=lambda e: f"{e.kind}")
def test_effect_comes_back_from_its_outbox_row_as_the_same_typed_effect(effect: Effect) -> None:
    row = outbox_row("acme", 7, CAUSE, effect, NOW)

    assert (row["kind"], row["target"]) == (effect.kind, effect.target)
    assert row["payload"]["version"] == 1
    assert row["event_id"] == CAUSE.event_id and row["status"] == "pending"
    assert effect_from_outbox(row["kind"], through_the_json_column(row)) == effect


def test_payloads_written_before_effects_carried_a_version_still_load() -> None:
    # Exactly what the outbox held before: `asdict(effect)`, no version.
    ae = {
        "assigned_user_id": 101,
        "assigned_queue_id": None,
        "email": "kim@example.com",
        "salesforce_id": None,
    }
    sf = {"sobject": "Lead", "owner_id": None, "auto_assign": True, "email": "di@example.com"}

    assert effect_from_outbox("ae.prospect.upsert", ae) == AeProspectUpsert(
        101, None, email="kim@example.com"
    )
    assert effect_from_outbox("sf.record.upsert", sf) == SfRecordUpsert(
        "Lead", None, auto_assign=True, email="di@example.com"
    )


def test_an_older_payload_version_is_upcast_before_it_is_loaded() -> None:
    def owner_was_called_owner(fields: dict[str, Any]) -> dict[str, Any]:
        renamed = {**fields, "owner_id": fields["owner"]}
        del renamed["owner"]
        return renamed

    old = {"version": 0, "sobject": "Lead", "owner": "0055g0000Zti3ElAQI", "auto_assign": False}

    loaded = effect_from_outbox(
        "sf.record.upsert", old, upcasters={("sf.record.upsert", 0): owner_was_called_owner}
    )

    assert loaded == SfRecordUpsert("Lead", "0055g0000Zti3ElAQI", auto_assign=False)
    with pytest.raises(EffectPayloadError, match="no upcaster"):
        effect_from_outbox("sf.record.upsert", old)


@pytest.mark.parametrize(
    ("kind", "payload", "why"),
    [
        ("sf.task.create", {"subject": "call"}, "unknown effect kind"),
        ("ae.prospect.upsert", {"version": 2, "assigned_user_id": 1}, "not known to this code"),
        ("sf.record.upsert", {"sobject": "Account", "owner_id": None, "auto_assign": True}, "fit"),
    ],
    ids=["unknown kind", "newer version", "bad field"],
)
def test_a_row_no_effect_fits_is_refused_with_why(
    kind: str, payload: dict[str, Any], why: str
) -> None:
    with pytest.raises(EffectPayloadError, match=why):
        effect_from_outbox(kind, payload)


async def test_senders_dispatch_each_effect_on_its_type() -> None:
    sent: list[tuple[str, Effect]] = []
    attempt = Attempt("acme", NOW, tried_before=False)

    async def to_ae(record: RecordState, effect: AeProspectUpsert, tried: Attempt) -> Learned:
        assert tried is attempt
        sent.append(("ae", effect))
        return Learned(prospect_id=5001)

    async def to_sf(
        record: RecordState, effect: SfRecordUpsert | SfOwnerReassign, tried: Attempt
    ) -> Learned:
        assert tried is attempt
        sent.append(("sf", effect))
        return Learned(sf_record_id="00Q5g0000ZWHszxEQD", sf_object=effect.sobject)

    senders = Senders(ae=to_ae, sf=to_sf)
    learned = [await senders.send(RecordState(id=7), effect, attempt) for effect in EFFECTS]

    assert sent == [(e.target, e) for e in EFFECTS]
    assert learned[0].columns() == {"prospect_id": 5001}
    assert learned[2].columns() == {"sf_record_id": "00Q5g0000ZWHszxEQD", "sf_object": "Lead"}
    assert senders.kinds == ["ae.prospect.upsert", "sf.record.upsert", "sf.record.owner"]
    assert Senders(ae=to_ae).kinds == ["ae.prospect.upsert"]  # no SF org: SF effects wait

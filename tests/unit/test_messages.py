import json
import uuid
from datetime import UTC, datetime

from services.common.messages import SfRecord, SfRecordEvent, dump_event, event_id_for, load_event


def test_event_ids_are_deterministic_per_tenant_and_source_notification() -> None:
    assert event_id_for("acme", "sf", "04l1") == event_id_for("acme", "sf", "04l1")
    assert event_id_for("acme", "sf", "04l1") != event_id_for("other", "sf", "04l1")


def test_events_round_trip_through_json() -> None:
    now = datetime(2026, 11, 2, 9, tzinfo=UTC)
    event = SfRecordEvent(
        type="sf.record.reassigned",
        tenant="acme",
        event_id=uuid.uuid4(),
        source_id="04l1",
        occurred_at=now,
        received_at=now,
        payload=SfRecord(
            object="Lead",
            record_id="00Q5g0000IXRUVN",
            owner_id="0055g0000Zti3El",
            system_modstamp=now,
        ),
    )
    assert load_event(dump_event(event)) == event


def test_a_version_1_payload_written_today_still_loads() -> None:
    body = {
        "type": "sf.record.created",
        "version": 1,
        "tenant": "acme",
        "event_id": "6f1c5b0e-8a55-5b8e-9d55-0e8c8b7d4c11",
        "source_id": "04l5g0000UoNypnAQC",
        "occurred_at": "2026-11-02T09:00:00Z",
        "received_at": "2026-11-02T09:00:01Z",
        "payload": {
            "object": "Lead",
            "record_id": "00Q5g0000ZWHszxEQD",
            "owner_id": "0055g0000Zti3ElAQI",
            "email": "kim@example.com",
            "system_modstamp": "2026-11-02T09:00:00Z",
            "created_date": None,
            "action_id": None,
        },
    }
    event = load_event(json.dumps(body).encode())
    assert isinstance(event, SfRecordEvent) and event.payload.owner_id == "0055g0000Zti3ElAQI"

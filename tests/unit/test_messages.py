import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from services.common.messages import (
    UPCASTERS,
    SfRecord,
    SfRecordEvent,
    dump_event,
    dump_events,
    event_id_for,
    load_event,
    load_events,
)


def test_event_ids_are_deterministic_per_tenant_and_source_notification() -> None:
    assert event_id_for("acme", "sf", "04l1") == event_id_for("acme", "sf", "04l1")
    assert event_id_for("acme", "sf", "04l1") != event_id_for("other", "sf", "04l1")


def test_sf_event_ids_sort_as_their_notification_serials_and_stay_distinct() -> None:
    # A SF id: key prefix, pod, a reserved character, then a 9-character base-62 serial.
    serials = ["000000009", "00000000A", "00000000z", "000000010", "0000001Zz", "zzzzzzzzz"]
    ids = [event_id_for("acme", "sf", f"04l5g0{s}") for s in serials]
    assert all(i.version == 8 and i.variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids) and [str(i) for i in ids] == sorted(str(i) for i in ids)
    same_serial = {
        event_id_for(t, "sf", f"04l{pod}0000000042") for t in ("a", "b") for pod in ("5g", "6h")
    }
    assert len(same_serial) == 4  # the hash bits tell apart notifications of one serial


def test_event_ids_of_other_sources_and_shapes_are_uuid5() -> None:
    assert event_id_for("acme", "ae", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W").version == 5
    assert event_id_for("acme", "sf", "04l-not-an-id").version == 5


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


def _created(n: int, version: int = 1) -> dict[str, object]:
    return {
        "type": "sf.record.created",
        "version": version,
        "tenant": "acme",
        "event_id": str(event_id_for("acme", "sf", f"04l5g0000UoNyp{n:04d}")),
        "source_id": f"04l5g0000UoNyp{n:04d}",
        "occurred_at": "2026-11-02T09:00:00Z",
        "received_at": "2026-11-02T09:00:01Z",
        "payload": {
            "object": "Lead",
            "record_id": "00Q5g0000ZWHszx",
            "owner_id": "0055g0000Zti3El",
            "system_modstamp": "2026-11-02T09:00:00Z",
        },
    }


def test_a_message_of_several_events_loads_them_in_order_with_their_ids_normalised() -> None:
    events = load_events(json.dumps([_created(1), _created(2)]).encode())
    assert [e.source_id for e in events] == ["04l5g0000UoNyp0001", "04l5g0000UoNyp0002"]
    assert all(isinstance(e, SfRecordEvent) for e in events)
    assert {e.payload.record_id for e in events if isinstance(e, SfRecordEvent)} == {
        "00Q5g0000ZWHszxEQD"
    }
    assert load_events(dump_events(events)) == events


def test_an_older_version_in_a_message_is_upcast_before_it_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def from_version_0(data: dict[str, Any]) -> dict[str, Any]:
        payload = dict(data["payload"])
        payload["owner_id"] = payload.pop("owner")
        return {**data, "version": 1, "payload": payload}

    monkeypatch.setitem(UPCASTERS, ("sf.record.created", 0), from_version_0)
    old: dict[str, Any] = _created(2, version=0)
    old["payload"]["owner"] = old["payload"].pop("owner_id")
    events = load_events(json.dumps([_created(1), old]).encode())
    assert [e.version for e in events] == [1, 1]
    assert isinstance(events[1], SfRecordEvent)
    assert events[1].payload.owner_id == "0055g0000Zti3ElAQI"


@pytest.mark.parametrize("body", [b"[]", b"{", b'{"type": "sf.record.created"}', b"[1]"])
def test_a_message_that_holds_no_valid_event_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        load_events(body)

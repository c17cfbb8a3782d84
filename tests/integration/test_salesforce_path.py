"""SF outbound messages through the HTTP receiver, RabbitMQ, the syncer, Postgres, the relay and
the AE simulator: the fixtures give the results their MANIFEST.json describes. (What the
receiver refuses is in tests/service/test_receiver_refusals.py.)"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from services.bootstrap import Running
from services.common.db.tables import audit_log, inbox, records
from services.common.sfid import to18
from services.sim.embedded import wait_until_idle
from tests.endpoints import sf_path
from tests.outbound import SOAP_HEADERS, Poster, is_ack
from tests.store import decision_rows, table_counts, table_rows

pytestmark = pytest.mark.integration

KIM = "00Q5g0000ZWHszxEQD"
QUEUE = "00G5g0000QQQdLAEQ1"


@pytest.fixture
def poster(stack: Running, fixtures_dir: Path) -> Poster:
    return Poster(stack, fixtures_dir)


async def test_kims_lead_follows_the_manifest_story_through_every_reassignment(
    poster: Poster,
) -> None:
    assert is_ack(await poster.post("lead-created-owner-connected.xml"))
    kim = await poster.record(KIM)
    assert await poster.last_rule() == "S2"
    assert poster.ae_prospect(kim["prospect_id"])["assignedUserId"] == 101

    assert is_ack(await poster.post("lead-reassigned-not-connected.xml", "record-reassigned"))
    assert await poster.last_rule() == "S4"
    assert poster.ae_prospect(kim["prospect_id"])["assignedUserId"] == 101
    assert (await poster.record(KIM))["sf_owner_id"] == "0055g00002X7EufAAF"

    assert is_ack(await poster.post("lead-reassigned-connected.xml", "record-reassigned"))
    assert await poster.last_rule() == "S5"
    assert poster.ae_prospect(kim["prospect_id"])["assignedUserId"] == 102

    assert is_ack(await poster.post("lead-reassigned-stale.xml", "record-reassigned"))
    assert await poster.last_rule() == "S7"
    assert poster.ae_prospect(kim["prospect_id"])["assignedUserId"] == 102

    assert is_ack(await poster.post("lead-reassigned-to-queue.xml", "record-reassigned"))
    assert await poster.last_rule() == "S6"
    prospect = poster.ae_prospect(kim["prospect_id"])
    assert (prospect["assignedUserId"], prospect["assignedQueueId"]) == (None, QUEUE)


async def test_lead_created_with_unconnected_owner_makes_an_unassigned_prospect(
    poster: Poster,
) -> None:
    assert is_ack(await poster.post("lead-created-owner-not-connected.xml"))
    record = await poster.record("00Q5g0000sOuOvGEAV")
    assert await poster.last_rule() == "S1"
    prospect = poster.ae_prospect(record["prospect_id"])
    assert prospect["assignedUserId"] is None and prospect["assignedQueueId"] is None
    assert prospect["salesforceId"] == "00Q5g0000sOuOvGEAV"
    assert prospect["email"] == "jo@example.com"


async def test_contact_created_with_connected_owner_is_assigned_to_bob(poster: Poster) -> None:
    assert is_ack(await poster.post("contact-created.xml"))
    record = await poster.record("0035g0000PcZvNKAQ0")
    assert record["sf_object"] == "Contact"
    assert poster.ae_prospect(record["prospect_id"])["assignedUserId"] == 102


async def test_fifteen_character_ids_are_stored_in_their_eighteen_character_form(
    poster: Poster,
) -> None:
    assert is_ack(await poster.post("lead-created-15-char-ids.xml"))
    record = await poster.record("00Q5g0000IXRUVNEQ5")
    assert record["sf_owner_id"] == "0055g0000Zti3ElAQI"
    assert poster.ae_prospect(record["prospect_id"])["assignedUserId"] == 101


async def test_batch_of_100_is_acked_once_and_yields_100_applied_events(poster: Poster) -> None:
    response = await poster.post("lead-created-batch-100.xml")
    assert is_ack(response)
    assert response.text.count("<Ack>") == 1
    counts = await table_counts(poster.live)
    assert counts["inbox"] == 100
    decisions = await decision_rows(poster.live)
    assert len(decisions) == 100
    assert counts["audit_log"] == 200  # and the relay learned 100 new prospect ids
    assert counts["records"] == 100
    assert poster.live.ae_sim is not None
    assert len(poster.live.ae_sim.prospects) == 100
    assert {r["rule"] for r in decisions} == {"S1", "S2"}


async def test_posting_the_same_message_twice_changes_nothing_the_second_time(
    poster: Poster,
) -> None:
    await poster.post("lead-created-owner-connected.xml")
    await poster.post("lead-reassigned-connected.xml", "record-reassigned")
    before = await table_counts(poster.live)
    assert poster.live.ae_sim is not None
    ae_calls = len(poster.live.ae_sim.call_log)
    records_before = await table_rows(poster.live, records)

    assert is_ack(await poster.post("lead-reassigned-connected.xml", "record-reassigned"))

    assert await table_counts(poster.live) == before
    assert await table_rows(poster.live, records) == records_before
    assert len(poster.live.ae_sim.call_log) == ae_calls


async def test_stale_notification_posted_after_the_newer_one_changes_nothing(
    poster: Poster,
) -> None:
    await poster.post("lead-created-owner-connected.xml")
    await poster.post("lead-reassigned-connected.xml", "record-reassigned")
    kim = await poster.record(KIM)
    assert poster.live.ae_sim is not None
    ae_calls = len(poster.live.ae_sim.call_log)

    await poster.post("lead-reassigned-stale.xml", "record-reassigned")

    after = await poster.record(KIM)
    assert after["sf_owner_id"] == kim["sf_owner_id"] == "0055g0000M6fuVCAQY"
    assert after["last_modstamp"] == kim["last_modstamp"]
    assert len(poster.live.ae_sim.call_log) == ae_calls
    stale = [r for r in await table_rows(poster.live, audit_log) if r["rule"] == "S7"]
    assert len(stale) == 1 and "stale" in stale[0]["reason"]


async def test_relay_retries_transient_ae_failures_until_the_prospect_exists(
    poster: Poster,
) -> None:
    assert poster.live.ae_sim is not None and poster.live.relay is not None
    poster.live.relay.backoff_base = 0.05
    poster.live.ae_sim.faults.configure(fail_next=6, fail_status=503)
    await poster.post("lead-created-owner-connected.xml")
    kim = await poster.record(KIM)
    assert kim["prospect_id"] is not None
    assert poster.ae_prospect(kim["prospect_id"])["assignedUserId"] == 101
    # Every fault was met: by the create, then by the look-ups made before creating again.
    assert poster.live.ae_sim.calls().count(503) == 6
    assert list(poster.live.ae_sim.prospects) == [kim["prospect_id"]]


async def test_prospect_id_the_relay_learns_from_ae_is_audited_on_its_record(
    poster: Poster,
) -> None:
    await poster.post("lead-created-owner-connected.xml")
    kim = await poster.record(KIM)
    learned = [r for r in await table_rows(poster.live, audit_log) if r["rule"] == "RELAY"]
    assert len(learned) == 1
    row = learned[0]
    assert row["record_id"] == kim["id"] and row["event_type"] == "ownersync.relay"
    assert row["reason"] == f"the relay learned: AE created prospect {kim['prospect_id']}"
    assert row["before"]["prospect_id"] is None
    assert row["after"]["prospect_id"] == kim["prospect_id"]
    assert row["after"]["ae_assigned_user_id"] == 101
    # It names the effect it learned from, and the event that asked for that effect.
    (s2,) = await decision_rows(poster.live)
    assert row["event_id"] == s2["event_id"] and row["source_id"].startswith("outbox ")
    assert row["id"] > s2["id"]


async def test_inbox_rows_name_the_sf_notification_ids(poster: Poster) -> None:
    await poster.post("lead-created-owner-connected.xml")
    assert [r["source_id"] for r in await table_rows(poster.live, inbox)] == ["04l5g0000UoNypnAQC"]


async def test_repeated_reassignments_of_one_record_cost_one_ae_call(
    poster: Poster,
) -> None:
    await poster.post("lead-created-owner-connected.xml")
    assert poster.live.relay is not None and poster.live.ae_sim is not None
    poster.live.relay.coalesce = timedelta(seconds=1)
    patches_before = len(poster.live.ae_sim.calls("PATCH"))
    body = (poster.fixtures / "lead-reassigned-connected.xml").read_text()
    owners = ["0055g0000Zti3ElAQI", "0055g0000M6fuVCAQY"] * 3  # alice, bob, alice, ...
    async with httpx.AsyncClient(base_url=poster.live.receiver_url or "") as http:
        for minute, owner in enumerate(owners, start=11):
            message = (
                body.replace("04l5g0000u45n6cAAA", to18(f"04l5g0000u45n{minute:02d}"))
                .replace("0055g0000M6fuVCAQY", owner)
                .replace("T09:10:00.000Z", f"T09:{minute}:00.000Z")
            )
            response = await http.post(
                sf_path("record-reassigned"), content=message, headers=SOAP_HEADERS
            )
            assert is_ack(response)
    poster.posted += len(owners)
    await wait_until_idle(poster.live, settled=poster.posted)
    kim = await poster.record(KIM)
    assert poster.ae_prospect(kim["prospect_id"])["assignedUserId"] == 102  # the last: bob
    assert len(poster.live.ae_sim.calls("PATCH")) - patches_before == 1

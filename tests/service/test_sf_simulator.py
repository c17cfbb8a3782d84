"""The Salesforce simulator over real HTTP: assignment rule, REST errors, outbound messages."""

from __future__ import annotations

import collections
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from defusedxml import ElementTree as SafeET
from fastapi import FastAPI, Request, Response

import services.demo
from services.common.web import serve_app
from services.sim.sf import OUTBOUND_NS, SOBJECT_NS, SfSimState, create_sf_app

FIXTURE = (
    Path(services.demo.__file__).parent / "fixtures/salesforce/lead-created-owner-connected.xml"
)
CREATED_ACTION = "04k5g0000o5gLzdAAE"
REASSIGNED_ACTION = "04k5g0000ECR19BAQT"
LEADS = "/services/data/v62.0/sobjects/Lead"
CONTACTS = "/services/data/v62.0/sobjects/Contact"
ACK = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
    f'<notificationsResponse xmlns="{OUTBOUND_NS}"><Ack>true</Ack></notificationsResponse>'
    "</soapenv:Body></soapenv:Envelope>"
)


def _ns(tag: str) -> str:
    return f"{{{OUTBOUND_NS}}}{tag}"


@dataclass
class Received:
    action: str
    action_id: str
    status: int
    notifications: list[dict[str, str | None]]  # "Id" (the notification id), then sf: fields
    body: bytes

    @property
    def ids(self) -> list[str]:
        return [str(n["Id"]) for n in self.notifications]


@dataclass
class OutboundReceiver:
    """What ownersync's receiver does with outbound messages, minus everything but the ack."""

    fail_next: int = 0
    received: list[Received] = field(default_factory=list)

    def acked(self) -> list[Received]:
        return [r for r in self.received if r.status == 200]

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/salesforce/acme/{action}")
        async def notifications(action: str, request: Request) -> Response:
            body = await request.body()
            status = 200
            if self.fail_next > 0:
                self.fail_next -= 1
                status = 503
            self.received.append(_parse(action, SafeET.fromstring(body), status, body))
            if status != 200:
                return Response("<fault/>", status_code=status, media_type="text/xml")
            return Response(ACK, media_type="text/xml")

        return app


def _parse(action: str, root: Any, status: int, body: bytes) -> Received:
    notifications_el = root.find(f".//{_ns('notifications')}")
    notifications = []
    for element in notifications_el.findall(_ns("Notification")):
        parsed: dict[str, str | None] = {"Id": element.findtext(_ns("Id"))}
        sobject = element.find(_ns("sObject"))
        parsed["type"] = sobject.get("{http://www.w3.org/2001/XMLSchema-instance}type")
        for child in sobject:
            parsed[f"sf:{child.tag.rpartition('}')[2]}"] = child.text
        notifications.append(parsed)
    action_id = notifications_el.findtext(_ns("ActionId"))
    return Received(action, action_id, status, notifications, body)


@dataclass
class Org:
    state: SfSimState
    http: httpx.AsyncClient
    receiver: OutboundReceiver
    alice: str
    bob: str
    carol: str
    queue: str

    async def create(
        self, sobject_path: str, fields: dict[str, str], auto_assign: str | None = None
    ) -> httpx.Response:
        headers = {} if auto_assign is None else {"Sforce-Auto-Assign": auto_assign}
        return await self.http.post(sobject_path, json=fields, headers=headers)

    async def create_lead(
        self, fields: dict[str, str], auto_assign: str | None = None
    ) -> dict[str, Any]:
        response = await self.create(LEADS, {"LastName": "Lee", **fields}, auto_assign)
        assert response.status_code == 201, response.text
        record: dict[str, Any] = (await self.http.get(f"{LEADS}/{response.json()['id']}")).json()
        return record


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[OutboundReceiver, str]]:
    receiver = OutboundReceiver()
    async with serve_app(receiver.app()) as base_url:
        yield receiver, base_url


@pytest.fixture
async def org(receiver: tuple[OutboundReceiver, str]) -> AsyncIterator[Org]:
    outbound_receiver, receiver_url = receiver
    state = SfSimState(client_id="sim-test", client_secret="sim-test-secret")
    alice = state.add_user("Alice Adams", "alice@example.com")
    bob = state.add_user("Bob Brown", "bob@example.com")
    carol = state.add_user("Carol Clark", "carol@example.com")
    queue = state.add_queue("Inbound leads", [alice, bob])
    state.outbound.configure(
        created_url=f"{receiver_url}/salesforce/acme/record-created",
        reassigned_url=f"{receiver_url}/salesforce/acme/record-reassigned",
        created_action_id=CREATED_ACTION,
        reassigned_action_id=REASSIGNED_ACTION,
    )
    state.outbound.batch_window_ms = 5
    state.outbound.initial_retry_interval = 0.02
    async with (
        serve_app(create_sf_app(state)) as base_url,
        httpx.AsyncClient(base_url=base_url) as http,
    ):
        form = {"grant_type": "client_credentials", "client_id": "sim-test"}
        token = await http.post(
            "/services/oauth2/token", data={**form, "client_secret": "sim-test-secret"}
        )
        http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        yield Org(state, http, outbound_receiver, alice, bob, carol, queue)


# ---------------------------------------------------------------- assignment rule


async def test_assignment_rule_first_matching_entry_wins(org: Org) -> None:
    org.state.add_rule_entry(org.alice, [("Country", "equals", "FR")])
    org.state.add_rule_entry(org.queue, [("Company", "contains", "acme")])

    both_match = await org.create_lead({"Company": "Acme SA", "Country": "FR"})
    second_matches = await org.create_lead({"Company": "ACME Inc", "Country": "US"})

    assert both_match["OwnerId"] == org.alice
    assert second_matches["OwnerId"] == org.queue


async def test_lead_matching_no_rule_entry_goes_to_the_default_owner(org: Org) -> None:
    org.state.add_rule_entry(
        org.alice, [("Country", "equals", "FR"), ("Company", "startsWith", "A")]
    )
    org.state.default_owner_id = org.carol

    record = await org.create_lead({"Company": "Zeta", "Country": "FR"}, auto_assign="TRUE")

    assert record["OwnerId"] == org.carol


async def test_auto_assign_false_keeps_the_owner_sent_and_defaults_to_the_api_user(
    org: Org,
) -> None:
    org.state.add_rule_entry(org.alice)  # matches everything

    kept = await org.create_lead({"Company": "Acme", "OwnerId": org.bob}, auto_assign="FALSE")
    unset = await org.create_lead({"Company": "Acme"}, auto_assign="FALSE")
    ruled = await org.create_lead({"Company": "Acme", "OwnerId": org.bob})

    assert kept["OwnerId"] == org.bob
    assert unset["OwnerId"] == org.state.api_user_id
    assert ruled["OwnerId"] == org.alice  # a missing header means TRUE: the rule overrides


async def test_update_without_the_header_runs_the_rule_again(org: Org) -> None:
    record = await org.create_lead({"Company": "Acme", "OwnerId": org.bob}, auto_assign="FALSE")
    org.state.add_rule_entry(org.carol)

    response = await org.http.patch(f"{LEADS}/{record['Id']}", json={"Title": "CTO"})

    assert response.status_code == 204
    assert org.state.leads[record["Id"]]["OwnerId"] == org.carol


async def test_contacts_ignore_the_rule_and_refuse_a_queue_owner(org: Org) -> None:
    org.state.add_rule_entry(org.alice)
    contact = {"LastName": "Lee", "Email": "lee@example.com"}

    created = await org.create(CONTACTS, {**contact, "OwnerId": org.bob}, auto_assign="TRUE")
    queued = await org.create(CONTACTS, {**contact, "OwnerId": org.queue}, auto_assign="FALSE")

    assert created.status_code == 201
    assert org.state.contacts[created.json()["id"]]["OwnerId"] == org.bob
    assert queued.status_code == 400
    assert queued.json()[0]["errorCode"] == "INVALID_CROSS_REFERENCE_KEY"


# ---------------------------------------------------------------- REST behaviour


async def test_errors_come_back_as_salesforce_error_arrays(org: Org) -> None:
    inactive = org.state.add_user("Old Timer", active=False)
    missing = await org.create(LEADS, {"Email": "x@example.com"})
    inactive_owner = await org.create(
        LEADS, {"LastName": "Lee", "Company": "Acme", "OwnerId": inactive}, auto_assign="FALSE"
    )
    bad_field = await org.create(LEADS, {"LastName": "Lee", "Company": "Acme", "title": "x"})
    malformed = await org.http.get(f"{LEADS}/not-an-id")
    not_found = await org.http.get(f"{LEADS}/{org.state.new_id('00Q')}")

    assert missing.status_code == 400
    assert missing.json() == [
        {
            "message": "Required fields are missing: [LastName, Company]",
            "errorCode": "REQUIRED_FIELD_MISSING",
            "fields": ["LastName", "Company"],
        }
    ]
    assert (inactive_owner.status_code, inactive_owner.json()[0]["errorCode"]) == (
        400,
        "INVALID_CROSS_REFERENCE_KEY",
    )
    assert (bad_field.status_code, bad_field.json()[0]["errorCode"]) == (400, "INVALID_FIELD")
    assert (malformed.status_code, malformed.json()[0]["errorCode"]) == (400, "MALFORMED_ID")
    assert (not_found.status_code, not_found.json()[0]["errorCode"]) == (404, "NOT_FOUND")


async def test_fifteen_character_ids_are_accepted_and_answered_in_eighteen(org: Org) -> None:
    record = await org.create_lead({"Company": "Acme"})

    response = await org.http.get(f"{LEADS}/{record['Id'][:15]}")

    assert response.status_code == 200
    assert response.json()["Id"] == record["Id"]
    assert response.json()["attributes"] == {"type": "Lead", "url": f"{LEADS}/{record['Id']}"}


async def test_system_modstamp_strictly_increases_on_every_write(org: Org) -> None:
    record = await org.create_lead({"Company": "Acme"})
    stamps = [record["SystemModstamp"]]
    for title in ("A", "B", "C"):
        await org.http.patch(f"{LEADS}/{record['Id']}", json={"Title": title})
        stamps.append(org.state.leads[record["Id"]]["SystemModstamp"])

    assert stamps == sorted(set(stamps))
    assert all(
        len(stamp) == len("2026-11-02T09:00:00.000Z") and stamp.endswith("Z") for stamp in stamps
    )


async def test_expired_tokens_answer_invalid_session(org: Org) -> None:
    org.state.expire_tokens()

    response = await org.http.get(f"{LEADS}/{org.state.new_id('00Q')}")

    assert response.status_code == 401
    assert response.json() == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID", "fields": []}
    ]


async def test_faults_set_over_http_answer_the_next_calls_then_stop(org: Org) -> None:
    switched = await org.http.post(
        "/_sim/faults", json={"request_limit_exceeded": 1, "server_errors": 1}
    )
    limited = await org.create(LEADS, {"LastName": "Lee", "Company": "Acme"})
    failed = await org.create(LEADS, {"LastName": "Lee", "Company": "Acme"})
    served = await org.create(LEADS, {"LastName": "Lee", "Company": "Acme"})

    assert switched.status_code == 200
    assert limited.status_code == 403
    assert limited.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    assert failed.status_code == 503
    assert served.status_code == 201
    assert [c.status for c in org.state.calls if c.path == LEADS] == [403, 503, 201]


async def test_reset_empties_the_org_but_keeps_its_identity(org: Org) -> None:
    await org.create_lead({"Company": "Acme"})

    reset = await org.http.post("/_sim/reset")
    dump = (await org.http.get("/_sim/state")).json()

    assert reset.status_code == 204
    assert dump["leads"] == {}
    assert list(dump["users"]) == [org.state.api_user_id]


# ---------------------------------------------------------------- idempotent creates

KEYED = f"{LEADS}/OwnersyncKey__c"
QUERY = "/services/data/v62.0/query"


async def test_upsert_through_an_external_id_creates_then_updates_the_same_record(
    org: Org,
) -> None:
    org.state.external_id_fields = {"OwnersyncKey__c"}

    created = await org.http.patch(f"{KEYED}/acme%3A7", json={"LastName": "Lee", "Company": "A"})
    updated = await org.http.patch(f"{KEYED}/acme%3A7", json={"Company": "Acme"})

    assert (created.status_code, created.json()["created"]) == (201, True)
    assert (updated.status_code, updated.json()["created"]) == (200, False)
    assert created.json()["id"] == updated.json()["id"]
    [lead] = org.state.leads.values()
    assert (lead["OwnersyncKey__c"], lead["Company"]) == ("acme:7", "Acme")


async def test_upsert_through_a_field_the_org_lacks_is_not_found(org: Org) -> None:
    response = await org.http.patch(f"{KEYED}/acme%3A7", json={"LastName": "Lee"})

    assert response.status_code == 404
    assert response.json()[0]["errorCode"] == "NOT_FOUND"
    assert org.state.leads == {}


async def test_a_custom_field_the_org_lacks_is_refused_on_write(org: Org) -> None:
    response = await org.create(LEADS, {"LastName": "Lee", "Company": "A", "Nope__c": "x"})

    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "INVALID_FIELD"


async def test_external_ids_are_switched_on_over_http_and_shown_by_describe(org: Org) -> None:
    before = (await org.http.get(f"{LEADS}/describe")).json()
    switched = await org.http.post("/_sim/schema", json={"external_id_fields": ["Key__c"]})
    after = (await org.http.get(f"{LEADS}/describe")).json()

    assert switched.json() == {"external_id_fields": ["Key__c"]}
    assert not any(f["externalId"] for f in before["fields"])
    [key] = [f for f in after["fields"] if f["externalId"]]
    assert (key["name"], key["createable"], key["updateable"]) == ("Key__c", True, True)


async def test_query_finds_leads_by_email_creator_and_creation_time(org: Org) -> None:
    mine = await org.create_lead({"Company": "A", "Email": "O'Brien@example.com"})
    await org.create_lead({"Company": "A", "Email": "other@example.com"})
    soql = (
        "SELECT Id, OwnerId FROM Lead WHERE Email = 'o\\'brien@example.com' "
        f"AND CreatedById = '{org.state.api_user_id[:15]}' AND CreatedDate >= 2020-01-01T00:00:00Z "
        "ORDER BY CreatedDate ASC LIMIT 5"
    )

    found = await org.http.get(QUERY, params={"q": soql})
    later = await org.http.get(QUERY, params={"q": soql.replace("2020", "2999")})

    assert found.status_code == 200
    assert found.json()["records"] == [
        {"attributes": {"type": "Lead"}, "Id": mine["Id"], "OwnerId": mine["OwnerId"]}
    ]
    assert later.json() == {"totalSize": 0, "done": True, "records": []}


@pytest.mark.parametrize(
    ("soql", "error"),
    [
        ("SELECT Id FROM Lead WHERE Email = 'unterminated", "MALFORMED_QUERY"),
        ("SELECT Id FROM Lead WHERE Email = 'bad\\qescape'", "MALFORMED_QUERY"),
        ("SELECT Id FROM Lead WHERE Email LIKE 'a%'", "MALFORMED_QUERY"),
        ("SELECT Id FROM Account", "INVALID_TYPE"),
        ("SELECT Id FROM Lead WHERE Nope__c = 'x'", "INVALID_FIELD"),
    ],
)
async def test_query_outside_the_subset_is_refused_as_salesforce_would(
    org: Org, soql: str, error: str
) -> None:
    response = await org.http.get(QUERY, params={"q": soql})

    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == error


async def test_lost_answers_set_over_http_drop_the_answer_of_an_applied_write(org: Org) -> None:
    switched = await org.http.post(
        "/_sim/faults", json={"lose_answers_after_apply": 1, "lost_answer": "server_error"}
    )
    lost = await org.create(LEADS, {"LastName": "Lee", "Company": "A"})
    kept = await org.create(LEADS, {"LastName": "Lee", "Company": "B"})

    assert switched.json()["lose_answers_after_apply"] == 1
    assert lost.status_code == 500
    assert lost.json()[0]["errorCode"] == "UNKNOWN_EXCEPTION"
    assert kept.status_code == 201
    assert sorted(r["Company"] for r in org.state.leads.values()) == ["A", "B"]
    assert org.state.faults.answers_lost == 1


# ---------------------------------------------------------------- outbound messages


async def test_creating_and_reassigning_a_lead_sends_created_then_reassigned_messages(
    org: Org,
) -> None:
    record = await org.create_lead(
        {"Company": "Acme", "Email": "kim@example.com", "OwnerId": org.alice}, "FALSE"
    )
    patched = await org.http.patch(
        f"{LEADS}/{record['Id']}",
        json={"OwnerId": org.bob},
        headers={"Sforce-Auto-Assign": "FALSE"},
    )
    await org.state.outbound.drain(timeout=5)

    created, reassigned = org.receiver.acked()
    assert patched.status_code == 204
    assert (created.action, created.action_id) == ("record-created", CREATED_ACTION)
    assert (reassigned.action, reassigned.action_id) == ("record-reassigned", REASSIGNED_ACTION)
    [created_lead] = created.notifications
    [reassigned_lead] = reassigned.notifications
    assert created_lead["type"] == reassigned_lead["type"] == "sf:Lead"
    assert created_lead["sf:Id"] == reassigned_lead["sf:Id"] == record["Id"]
    assert created_lead["sf:Email"] == "kim@example.com"
    assert (created_lead["sf:OwnerId"], reassigned_lead["sf:OwnerId"]) == (org.alice, org.bob)
    assert str(created_lead["sf:SystemModstamp"]) < str(reassigned_lead["sf:SystemModstamp"])
    assert created_lead["sf:CreatedDate"] == reassigned_lead["sf:CreatedDate"]


async def test_an_update_that_keeps_the_owner_sends_no_reassigned_message(org: Org) -> None:
    record = await org.create_lead({"Company": "Acme", "OwnerId": org.alice}, "FALSE")
    await org.http.patch(
        f"{LEADS}/{record['Id']}", json={"Title": "CTO"}, headers={"Sforce-Auto-Assign": "FALSE"}
    )
    await org.state.outbound.drain(timeout=5)

    assert [r.action for r in org.receiver.received] == ["record-created"]


async def test_a_receiver_failing_twice_gets_the_same_notification_ids_until_it_acks(
    org: Org,
) -> None:
    org.receiver.fail_next = 2
    first = org.state.create_record("Lead", {"LastName": "Lee", "Company": "Acme"})
    second = org.state.create_record("Lead", {"LastName": "Ray", "Company": "Acme"})
    await org.state.outbound.drain(timeout=5)

    attempts = org.receiver.received
    assert [r.status for r in attempts] == [503, 503, 200]
    assert attempts[0].ids == attempts[1].ids == attempts[2].ids
    sent_for = {n["sf:Id"] for n in attempts[2].notifications}
    assert sent_for == {first["Id"], second["Id"]}
    log = org.state.outbound.deliveries
    assert [(d.attempt, d.status, d.acked) for d in log] == [
        (1, 503, False),
        (2, 503, False),
        (3, 200, True),
    ]
    assert len({d.delivery_id for d in log}) == 1


async def test_150_creates_are_delivered_in_batches_of_at_most_100(org: Org) -> None:
    # Written in one go (no await in between) so they are all pending when the sender wakes.
    for n in range(150):
        org.state.create_record("Lead", {"LastName": f"P{n}", "Company": "Acme"})
    await org.state.outbound.drain(timeout=10)

    sizes = [len(r.notifications) for r in org.receiver.acked()]
    delivered = [i for r in org.receiver.acked() for i in r.ids]
    assert sizes == [100, 50]
    assert len(set(delivered)) == 150


async def test_duplicate_mode_delivers_each_notification_id_twice(org: Org) -> None:
    org.state.outbound.duplicate = True
    for n in range(3):
        org.state.create_record("Lead", {"LastName": f"P{n}", "Company": "Acme"})
    await org.state.outbound.drain(timeout=5)

    counts = collections.Counter(i for r in org.receiver.acked() for i in r.ids)
    assert len(counts) == 3
    assert set(counts.values()) == {2}


async def test_reorder_mode_delivers_notifications_out_of_write_order(org: Org) -> None:
    org.state.rng.seed(7)
    org.state.outbound.reorder = True
    written = [
        org.state.create_record("Lead", {"LastName": f"P{n}", "Company": "Acme"})["Id"]
        for n in range(20)
    ]
    await org.state.outbound.drain(timeout=5)

    delivered = [str(n["sf:Id"]) for r in org.receiver.acked() for n in r.notifications]
    assert sorted(delivered) == sorted(written)
    assert delivered != written


def _shape(xml: bytes) -> tuple[list[tuple[str, tuple[str, ...]]], list[tuple[str, str]]]:
    """Element paths with their attribute names, and the namespace declarations in order."""
    paths: list[tuple[str, tuple[str, ...]]] = []
    declarations: list[tuple[str, str]] = []
    stack: list[str] = []
    for event, item in SafeET.iterparse(io.BytesIO(xml), events=("start", "end", "start-ns")):
        if event == "start-ns":
            declarations.append(item)
        elif event == "start":
            stack.append(item.tag)
            paths.append(("/".join(stack), tuple(sorted(item.attrib))))
        else:
            stack.pop()
    return paths, declarations


async def test_emitted_xml_has_the_structure_of_the_salesforce_fixture(org: Org) -> None:
    email = "o'brien&co<x>@example.com"  # must arrive escaped and intact
    record = await org.create_lead({"Company": "Acme", "Email": email})
    await org.state.outbound.drain(timeout=5)

    [message] = org.receiver.acked()
    assert _shape(message.body) == _shape(FIXTURE.read_bytes())
    assert message.body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert f'<sObject xsi:type="sf:Lead" xmlns:sf="{SOBJECT_NS}">'.encode() in message.body
    root = SafeET.fromstring(message.body)
    assert root.findtext(f".//{_ns('OrganizationId')}") == org.state.org_id
    session_id = root.find(f".//{_ns('SessionId')}")
    assert session_id is not None
    assert session_id.attrib == {"{http://www.w3.org/2001/XMLSchema-instance}nil": "true"}
    assert root.findtext(f".//{{{SOBJECT_NS}}}Id") == record["Id"]
    assert root.findtext(f".//{{{SOBJECT_NS}}}Email") == email

"""The relay's create paths with fake clients: a create that may have got through is looked
for and adopted, never simply sent again; a first try creates without looking."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from services.common.ae_client import AeClient, AeOutcomeUnknown, AeProspect, AeProspectFields
from services.common.domain import AeProspectUpsert, Learned, RecordState, SfRecordUpsert
from services.common.sf_client import SfClient, SfOutcomeUnknown, SfRecordFields, SfRecordRef
from services.relay.relay import Attempt
from services.relay.senders import CLOCK_SKEW, KEY_FIELD, ae_prospect_sender, sf_record_sender

WRITTEN = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
FIRST_TRY = Attempt("acme", WRITTEN, tried_before=False)
RETRY = Attempt("acme", WRITTEN, tried_before=True)
KIM_LEAD = "00Q5g0000ZWHszxEQD"
ALICE_SF, CONNECTOR = "0055g0000Zti3ElAQI", "0055g00000ePONxAAO"
NEW = RecordState(id=7, email="kim@example.com")


@dataclass
class FakeAe:
    """AE's prospects; `lose` creates are applied and then answer as if the line dropped,
    `fail` creates are not applied at all but answer the same."""

    prospects: list[AeProspect] = field(default_factory=list)
    lose: int = 0
    fail: int = 0
    creates: int = 0
    looks: int = 0
    updates: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    async def create_prospect(self, fields: AeProspectFields) -> AeProspect:
        self.creates += 1
        if self.fail:
            self.fail -= 1
            raise AeOutcomeUnknown(503, None, "unavailable")
        made = self.add(**fields.model_dump(), created_at=WRITTEN + timedelta(seconds=1))
        if self.lose:
            self.lose -= 1
            raise AeOutcomeUnknown(None, None, "peer closed connection")
        return made

    async def find_prospects_by_email(self, email: str) -> list[AeProspect]:
        self.looks += 1
        return [p for p in self.prospects if p.email == email]

    async def set_prospect(self, prospect_id: int, changes: AeProspectFields) -> None:
        assert any(p.id == prospect_id for p in self.prospects)
        self.updates.append((prospect_id, changes.model_dump(exclude_unset=True)))

    def add(self, **fields: Any) -> AeProspect:
        prospect = AeProspect(id=5001 + len(self.prospects), **fields)
        self.prospects.append(prospect)
        return prospect


def kim_in_ae(**changes: Any) -> AeProspectUpsert:
    wanted = AeProspectUpsert(101, None, email="kim@example.com", salesforce_id=KIM_LEAD)
    return replace(wanted, **changes)


async def send_to_ae(ae: FakeAe, effect: AeProspectUpsert, attempt: Attempt) -> Learned:
    return await ae_prospect_sender(cast(AeClient, ae))(NEW, effect, attempt)


async def test_first_try_at_an_ae_create_creates_without_looking() -> None:
    ae = FakeAe()

    learned = await send_to_ae(ae, kim_in_ae(), FIRST_TRY)

    assert learned == Learned(prospect_id=5001)
    assert (ae.creates, ae.looks) == (1, 0)


async def test_ae_create_whose_answer_was_lost_is_found_and_adopted_not_made_again() -> None:
    ae = FakeAe(lose=1)

    learned = await send_to_ae(ae, kim_in_ae(), FIRST_TRY)

    assert learned == Learned(prospect_id=5001)
    assert (ae.creates, len(ae.prospects), ae.updates) == (1, 1, [])


async def test_ae_create_not_found_after_a_lost_answer_waits_for_a_try_that_looks_first() -> None:
    ae = FakeAe(fail=1)

    with pytest.raises(AeOutcomeUnknown):
        await send_to_ae(ae, kim_in_ae(), FIRST_TRY)
    learned = await send_to_ae(ae, kim_in_ae(), RETRY)

    assert learned == Learned(prospect_id=5001)
    assert (ae.creates, ae.looks, len(ae.prospects)) == (2, 2, 1)


async def test_ae_retry_adopts_the_linked_prospect_and_gives_it_the_wanted_assignee() -> None:
    ae = FakeAe()
    ae.add(email="kim@example.com", salesforce_id="00Q5g0000IXRUVNEQ5")  # another lead's
    theirs = ae.add(email="kim@example.com", salesforce_id=KIM_LEAD, assigned_user_id=102)

    learned = await send_to_ae(ae, kim_in_ae(), RETRY)

    assert learned == Learned(prospect_id=theirs.id)
    assert ae.creates == 0
    assert ae.updates == [
        (theirs.id, {"assigned_user_id": 101, "assigned_queue_id": None, "salesforce_id": KIM_LEAD})
    ]


async def test_ae_retry_without_sf_link_adopts_only_a_prospect_made_since_the_effect() -> None:
    ae = FakeAe()
    ae.add(email="kim@example.com", created_at=WRITTEN - CLOCK_SKEW - timedelta(seconds=1))
    ae.add(email="kim@example.com", salesforce_id=KIM_LEAD, created_at=WRITTEN)
    made = ae.add(email="kim@example.com", created_at=WRITTEN - timedelta(seconds=30))

    learned = await send_to_ae(ae, kim_in_ae(salesforce_id=None), RETRY)

    assert learned == Learned(prospect_id=made.id)
    assert ae.creates == 0


async def test_ae_retry_with_nothing_made_creates() -> None:
    ae = FakeAe()
    ae.add(email="kim@example.com", created_at=WRITTEN - timedelta(days=3))  # someone else's

    learned = await send_to_ae(ae, kim_in_ae(), RETRY)

    assert learned == Learned(prospect_id=5002)
    assert (ae.creates, ae.looks) == (1, 1)


@dataclass
class FakeSf:
    """An org's leads by id (with their owner); `key_field` switches OwnersyncKey__c on."""

    key_field: bool = False
    leads: dict[str, str] = field(default_factory=dict)
    lose: int = 0
    calls: list[tuple[str, Any]] = field(default_factory=list)

    async def external_id_fields(self, sobject: str) -> frozenset[str]:
        return frozenset({KEY_FIELD} if self.key_field else set())

    async def upsert(
        self, sobject: str, field: str, key: str, fields: SfRecordFields, *, auto_assign: bool
    ) -> str:
        self.calls.append(("upsert", (sobject, field, key, auto_assign)))
        return KIM_LEAD

    async def create(self, sobject: str, fields: SfRecordFields, *, auto_assign: bool) -> str:
        self.calls.append(("create", fields.email))
        self.leads[KIM_LEAD] = CONNECTOR if auto_assign else fields.owner_id or CONNECTOR
        if self.lose:
            self.lose -= 1
            raise SfOutcomeUnknown(500)
        return KIM_LEAD

    async def first_created_since(
        self, sobject: str, *, email: str, since: datetime
    ) -> SfRecordRef | None:
        self.calls.append(("look", (email, since)))
        return next((SfRecordRef(i, owner) for i, owner in self.leads.items()), None)

    async def update(
        self, sobject: str, record_id: str, changes: SfRecordFields, *, auto_assign: bool
    ) -> None:
        self.calls.append(("update", (record_id, changes.owner_id, auto_assign)))
        self.leads[record_id] = changes.owner_id or self.leads[record_id]


async def send_to_sf(sf: FakeSf, effect: SfRecordUpsert, attempt: Attempt) -> Learned:
    return await sf_record_sender(cast(SfClient, sf))(NEW, effect, attempt)


TO_ALICE = SfRecordUpsert("Lead", ALICE_SF, auto_assign=False, email="kim@example.com")
BY_RULE = SfRecordUpsert("Lead", None, auto_assign=True, email="kim@example.com")


async def test_org_with_the_key_field_gets_an_upsert_keyed_by_tenant_and_record() -> None:
    sf = FakeSf(key_field=True)

    learned = await send_to_sf(sf, TO_ALICE, RETRY)

    assert learned == Learned(sf_record_id=KIM_LEAD, sf_object="Lead", sf_owner_id=ALICE_SF)
    assert sf.calls == [("upsert", ("Lead", KEY_FIELD, "acme:7", False))]


async def test_sf_create_whose_answer_was_lost_is_found_by_soql_since_the_effect() -> None:
    sf = FakeSf(lose=1)

    learned = await send_to_sf(sf, TO_ALICE, FIRST_TRY)

    assert learned == Learned(sf_record_id=KIM_LEAD, sf_object="Lead", sf_owner_id=ALICE_SF)
    assert sf.calls == [
        ("create", "kim@example.com"),
        ("look", ("kim@example.com", WRITTEN - CLOCK_SKEW)),
    ]


async def test_sf_retry_looks_first_and_gives_a_found_record_the_wanted_owner() -> None:
    sf = FakeSf(leads={KIM_LEAD: CONNECTOR})

    learned = await send_to_sf(sf, TO_ALICE, RETRY)

    assert learned.sf_record_id == KIM_LEAD
    assert [name for name, _ in sf.calls] == ["look", "update"]
    assert sf.leads == {KIM_LEAD: ALICE_SF}


async def test_sf_record_found_after_the_active_rule_keeps_the_rules_owner() -> None:
    sf = FakeSf(leads={KIM_LEAD: CONNECTOR})

    learned = await send_to_sf(sf, BY_RULE, RETRY)

    assert learned == Learned(sf_record_id=KIM_LEAD, sf_object="Lead")
    assert [name for name, _ in sf.calls] == ["look"]

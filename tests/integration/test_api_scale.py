"""User sync and reconcile on a tenant of a few thousand users and records: the counts come
out as the generator says, in batched SQL (seconds, not minutes)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from services.common.db.tables import audit_log, connected_users, outbox, records
from tests.integration.api_support import ACME, QUEUE, Api, sf_id

pytestmark = pytest.mark.integration

T = f"/v1/tenants/{ACME}"
N = 3000


@dataclass
class Population:
    sf: list[dict[str, Any]] = field(default_factory=list)
    ae: list[dict[str, Any]] = field(default_factory=list)
    premapped: list[tuple[int, str]] = field(default_factory=list)
    expected: Counter[str] = field(default_factory=Counter)


def population() -> Population:
    """Ten kinds of AE user, 300 of each, every one with the outcome it must get."""
    p = Population()
    # acme's own: 101 and 102 are connected, 105 has no email.
    p.expected.update({"already_mapped": 2, "unmatched": 1})
    for i in range(N):
        sf, email, ae = sf_id("005", 10_000 + i), f"user{i}@big.io", 100_000 + i
        p.sf.append({"id": sf, "email": email, "active": i % 50 != 0})
        kind = i % 10
        if kind == 0:  # by SF user id; every fifth of them is an inactive SF user
            p.ae.append({"id": ae, "salesforceUserId": sf})
            p.expected["matched" if i % 50 else "unmatched"] += 1
        elif kind == 1:  # by email, other letter case
            p.ae.append({"id": ae, "email": email.upper()})
            p.expected["matched"] += 1
        elif kind == 2:  # nobody in SF has the email
            p.ae.append({"id": ae, "email": f"nobody{i}@big.io"})
            p.expected["unmatched"] += 1
        elif kind == 3:  # nothing to match by
            p.ae.append({"id": ae})
            p.expected["unmatched"] += 1
        elif kind == 4:  # two AE users want the same SF user
            p.ae += [{"id": ae, "email": email}, {"id": 200_000 + i, "email": email}]
            p.expected["conflicting"] += 2
        elif kind == 5:  # the SF user is already someone else's
            p.ae += [{"id": ae, "email": email}, {"id": 300_000 + i}]
            p.premapped.append((300_000 + i, sf))
            p.expected.update({"conflicting": 1, "already_mapped": 1})
        elif kind == 7:  # two active SF users share the email
            p.ae.append({"id": ae, "email": email})
            p.sf.append({"id": sf_id("005", 50_000 + i), "email": email})
            p.expected["conflicting"] += 1
        else:
            p.ae.append({"id": ae, "email": email})
            p.expected["matched"] += 1
    return p


async def _load(api: Api, p: Population) -> None:
    for kind, users in (("sf-users", p.sf), ("ae-users", p.ae)):
        response = await api.post(f"{T}/{kind}/bulk", key="write", json={"users": users})
        assert response.status_code == 200, response.text
        assert response.json()["created"] == len(users)
    now = datetime.now(UTC)
    async with api.runtime.engine.begin() as conn:
        await conn.execute(
            insert(connected_users),
            [
                {"tenant_id": ACME, "ae_user_id": a, "sf_user_id": s, "created_at": now}
                for a, s in p.premapped
            ],
        )


async def test_user_sync_of_a_few_thousand_users_gives_the_expected_counts(api: Api) -> None:
    p = population()
    await _load(api, p)
    assert sum(p.expected.values()) == 3603

    started = time.monotonic()
    dry = (await api.post(f"{T}/user-sync", key="write", json={"dryRun": True})).json()
    assert dry["counts"] == dict(p.expected)
    assert dry["counts"] == {
        "matched": 1440,
        "already_mapped": 302,
        "unmatched": 661,
        "conflicting": 1200,
    }
    done = (await api.post(f"{T}/user-sync", key="write", json={"dryRun": False})).json()
    elapsed = time.monotonic() - started
    assert done["counts"] == dry["counts"] and len(done["users"]) == 3603
    async with api.runtime.engine.connect() as conn:
        mapped = (
            await conn.execute(
                select(func.count())
                .select_from(connected_users)
                .where(connected_users.c.tenant_id == ACME)
            )
        ).scalar_one()
    assert mapped == 2 + 300 + 1440
    assert elapsed < 20, f"user sync took {elapsed:.1f}s"


async def test_reconcile_of_a_few_thousand_records_fixes_what_the_mappings_allow(api: Api) -> None:
    p = population()
    await _load(api, p)
    await api.post(f"{T}/user-sync", key="write", json={})
    # kind 6 users (i % 10 == 6) are connected by email: AE 100000+i <-> SF 10000+i.
    connected = [(100_000 + i, sf_id("005", 10_000 + i)) for i in range(N) if i % 10 == 6]
    unconnected_sf = sf_id("005", 10_002)  # kind 2: nobody's
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for r in range(4000):
        ae, sf = connected[r % len(connected)]
        other_ae = connected[(r + 1) % len(connected)][0]
        base = {
            "tenant_id": ACME,
            "prospect_id": 1_000_000 + r,
            "sf_record_id": sf_id("00Q", 70_000 + r),
            "sf_object": "Lead",
            "email": f"lead{r}@big.io",
            "ae_assigned_user_id": None,
            "ae_assigned_queue_id": None,
            "sf_owner_id": sf,
            "last_modstamp": now,
            "created_at": now,
            "updated_at": now,
        }
        match r % 8:
            case 0:  # agree
                base["ae_assigned_user_id"] = ae
            case 1:  # AE has another user: S5
                base["ae_assigned_user_id"] = other_ae
            case 2:  # on the queue in both: agree
                base.update(sf_owner_id=QUEUE, ae_assigned_queue_id=QUEUE)
            case 3:  # SF moved it to the queue, AE did not follow: S6
                base.update(sf_owner_id=QUEUE, ae_assigned_user_id=101)
            case 4:  # SF owner not connected: left alone (S4)
                base.update(sf_owner_id=unconnected_sf, ae_assigned_user_id=101)
            case 5:  # not in SF yet
                base.update(sf_record_id=None, sf_object=None, sf_owner_id=None, last_modstamp=None)
            case 6:  # unassigned in AE: S5
                pass
            case 7:  # on a queue in AE, owned by a connected user in SF: S5
                base["ae_assigned_queue_id"] = QUEUE
        rows.append(base)
    async with api.runtime.engine.begin() as conn:
        await conn.execute(insert(records), rows)

    started = time.monotonic()
    dry = (await api.post(f"{T}/reconcile", key="write", json={"dryRun": True})).json()
    assert dry["examined"] == 4000
    assert dry["outcomes"] == {
        "agree": 1000,
        "would_fix": 2000,
        "sf_owner_not_connected": 500,
        "not_in_salesforce": 500,
    }
    assert dry["fixedByRule"] == {"S5": 1500, "S6": 500}
    assert len(dry["changes"]) == 100 and dry["changesTruncated"] is True

    done = (await api.post(f"{T}/reconcile", key="write", json={"dryRun": False})).json()
    elapsed = time.monotonic() - started
    assert done["outcomes"] == {
        "agree": 1000,
        "fixed": 2000,
        "sf_owner_not_connected": 500,
        "not_in_salesforce": 500,
    }
    async with api.runtime.engine.connect() as conn:
        audits = (
            await conn.execute(
                select(audit_log.c.rule, audit_log.c.reason).where(
                    audit_log.c.event_id == done["runId"]
                )
            )
        ).all()
        effects = (
            await conn.execute(
                select(func.count()).select_from(outbox).where(outbox.c.event_id == done["runId"])
            )
        ).scalar_one()
    assert Counter(a.rule for a in audits) == {"S5": 1500, "S6": 500}
    assert all(a.reason.startswith("reconcile: ") for a in audits)
    assert effects == 2000
    again = (await api.post(f"{T}/reconcile", key="write", json={"dryRun": True})).json()
    assert again["outcomes"]["agree"] == 3000 and again["outcomes"]["would_fix"] == 0
    assert elapsed < 30, f"reconcile took {elapsed:.1f}s"

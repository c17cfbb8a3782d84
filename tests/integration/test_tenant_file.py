"""`ownersync tenant load`: a tenant file goes through the same admin rules as the API, and a
file the rules refuse leaves nothing of itself behind."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from services.admin.errors import AdminError, Conflict, Invalid
from services.admin.tenant_file import TenantFile, load_tenant
from services.admin.tenants import valid_webhook_secrets
from services.cli import app
from services.common.db.engine import make_engine
from services.common.db.tables import (
    ae_users,
    connected_users,
    group_members,
    groups,
    queues,
    sf_users,
    tenants,
)
from services.common.keys import key_hash
from services.common.settings import Settings
from services.demo.replay import SF
from tests.integration.api_support import ALICE_SF, DAVE_SF, sf_id

pytestmark = pytest.mark.integration

TENANT_JSON = SF / "tenant.json"
DIRECTORY = (tenants, sf_users, ae_users, connected_users, queues, groups, group_members)

Edit = Callable[[dict[str, Any]], None]


def _demo_file() -> dict[str, Any]:
    return dict(json.loads(TENANT_JSON.read_text()))


def _edited(edit: Edit) -> TenantFile:
    raw = _demo_file()
    edit(raw)
    return TenantFile.model_validate(raw)


async def _directory(settings: Settings, tenant_id: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every stored row of the tenant's settings, users, mappings, queues and groups."""
    engine = make_engine(settings.database_url)
    rows: dict[str, list[tuple[Any, ...]]] = {}
    async with engine.connect() as conn:
        for table in DIRECTORY:
            key = table.c.id if table is tenants else table.c.tenant_id
            found = await conn.execute(select(table).where(key == tenant_id))
            rows[table.name] = sorted(tuple(map(str, r)) for r in found)
    await engine.dispose()
    return rows


async def _load(settings: Settings, data: TenantFile) -> dict[str, int]:
    engine = make_engine(settings.database_url)
    try:
        async with engine.begin() as conn:
            return await load_tenant(conn, data)
    finally:
        await engine.dispose()


def _connect_erin_to_alice(raw: dict[str, Any]) -> None:
    raw["connected_users"].append({"engagement_user": 105, "salesforce_user": ALICE_SF})


def _move_bob_to_dave(raw: dict[str, Any]) -> None:
    raw["connected_users"].append({"engagement_user": 102, "salesforce_user": DAVE_SF})


def _group_with_a_stranger(raw: dict[str, Any]) -> None:
    raw["groups"]["7"]["members"].append(999)


def _connect_an_unknown_sf_user(raw: dict[str, Any]) -> None:
    raw["connected_users"].append({"engagement_user": 105, "salesforce_user": sf_id("005", 77)})


REFUSALS: list[tuple[str, Edit, type[AdminError], str]] = [
    ("sf_user_held_by_another", _connect_erin_to_alice, Conflict, "mapping_conflict"),
    ("ae_user_held_by_another", _move_bob_to_dave, Conflict, "mapping_conflict"),
    ("unknown_group_member", _group_with_a_stranger, Invalid, "unknown_user"),
    ("unknown_sf_user_connected", _connect_an_unknown_sf_user, Invalid, "unknown_user"),
]


@pytest.mark.parametrize(
    ("edit", "refusal", "code"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
async def test_a_file_that_breaks_an_admin_rule_is_refused_and_the_tenant_kept_as_it_was(
    base_settings: Settings, clean: None, edit: Edit, refusal: type[AdminError], code: str
) -> None:
    before = await _directory(base_settings, "acme")
    with pytest.raises(refusal) as refused:
        await _load(base_settings, _edited(edit))
    assert refused.value.code == code
    assert await _directory(base_settings, "acme") == before


async def test_a_new_tenant_whose_file_breaks_a_rule_is_not_created_at_all(
    base_settings: Settings, clean: None
) -> None:
    def initech(raw: dict[str, Any]) -> None:
        raw.update(tenant="initech", salesforce_org_id=sf_id("00D", 9))
        _connect_erin_to_alice(raw)

    with pytest.raises(Conflict, match="holds"):
        await _load(base_settings, _edited(initech))
    assert all(rows == [] for rows in (await _directory(base_settings, "initech")).values())


async def test_a_file_naming_another_tenants_org_is_refused_like_the_api_does(
    base_settings: Settings, clean: None
) -> None:
    def initech_on_acmes_org(raw: dict[str, Any]) -> None:
        raw["tenant"] = "initech"

    with pytest.raises(Conflict) as refused:
        await _load(base_settings, _edited(initech_on_acmes_org))
    assert refused.value.code == "org_in_use"


async def _tenant_row(settings: Settings, tenant_id: str) -> Any:
    engine = make_engine(settings.database_url)
    async with engine.connect() as conn:
        row = (await conn.execute(select(tenants).where(tenants.c.id == tenant_id))).one()
    await engine.dispose()
    return row


async def test_loading_again_replaces_users_mappings_queues_groups_secret_and_key(
    base_settings: Settings, clean: None
) -> None:
    def fewer(raw: dict[str, Any]) -> None:
        del raw["engagement_users"]["erin_unconnected"]
        raw["connected_users"] = raw["connected_users"][:1]
        raw["queues"] = {}
        raw["groups"]["7"]["members"] = [101]
        raw["sync_mode"] = "contacts"
        raw["webhook_secret"] = "whsec_" + "r" * 32
        raw["salesforce_endpoint_key"] = "osek_" + "k" * 40

    counts = await _load(base_settings, _edited(fewer))
    assert counts == {
        "salesforce_users": 5,
        "engagement_users": 2,
        "connected_users": 1,
        "queues": 0,
        "groups": 1,
    }
    stored = await _directory(base_settings, "acme")
    assert len(stored["ae_users"]) == 2 and len(stored["connected_users"]) == 1
    assert stored["queues"] == [] and len(stored["group_members"]) == 1

    row = await _tenant_row(base_settings, "acme")
    assert row.sync_mode == "contacts"
    assert valid_webhook_secrets(row, row.created_at) == ["whsec_" + "r" * 32]
    assert row.endpoint_key_hash == key_hash("osek_" + "k" * 40)
    assert row.previous_endpoint_key_hash is None


async def test_a_new_tenant_from_a_file_without_an_endpoint_key_has_none(
    base_settings: Settings, clean: None
) -> None:
    def initech_without_key(raw: dict[str, Any]) -> None:
        raw.update(tenant="initech", salesforce_org_id=sf_id("00D", 9))
        del raw["salesforce_endpoint_key"]

    await _load(base_settings, _edited(initech_without_key))
    row = await _tenant_row(base_settings, "initech")
    assert row.endpoint_key_hash is None  # SF messages refused until an operator sets one
    assert row.webhook_secret == _demo_file()["webhook_secret"]
    acme = await _tenant_row(base_settings, "acme")
    assert acme.endpoint_key_hash == key_hash(_demo_file()["salesforce_endpoint_key"])


def test_the_cli_shows_the_refusal_and_exits_1_leaving_the_tenant_as_it_was(
    base_settings: Settings, clean: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OWNERSYNC_DATABASE_URL", base_settings.database_url)
    raw = _demo_file()
    _connect_erin_to_alice(raw)
    conflicting = tmp_path / "tenant.json"
    conflicting.write_text(json.dumps(raw))
    before = asyncio.run(_directory(base_settings, "acme"))

    result = CliRunner().invoke(app, ["tenant", "load", str(conflicting)], catch_exceptions=False)

    assert result.exit_code == 1, result.output
    assert "mapping_conflict" in result.output and '"aeUserId": 101' in result.output
    assert asyncio.run(_directory(base_settings, "acme")) == before
    loaded = CliRunner().invoke(app, ["tenant", "load", str(TENANT_JSON)], catch_exceptions=False)
    assert loaded.exit_code == 0, loaded.output
    assert "2 connected users" in loaded.output


def _with_follow_up_sla(raw: dict[str, Any]) -> None:
    raw["untouched_statuses"] = ["New", "Open - Not Contacted"]
    raw["groups"]["7"].update(
        {
            "sla_seconds": 5400,
            "sla_business_hours": True,
            "max_escalations": 1,
            "fallback_owner": "00G5g0000QQQdLA",
            "member_hours": {
                "101": {"time_zone": "Europe/Berlin", "weekly_hours": {"mon": "08:00-16:00"}}
            },
        }
    )


async def test_a_file_sets_the_group_sla_member_hours_and_untouched_statuses(
    base_settings: Settings, clean: None
) -> None:
    await _load(base_settings, _edited(_with_follow_up_sla))

    engine = make_engine(base_settings.database_url)
    async with engine.connect() as conn:
        group = (await conn.execute(select(groups).where(groups.c.id == 7))).one()
        hours = (
            await conn.execute(select(group_members).where(group_members.c.ae_user_id == 101))
        ).one()
        tenant = (await conn.execute(select(tenants).where(tenants.c.id == "acme"))).one()
    await engine.dispose()
    assert (group.sla_seconds, group.sla_business_hours, group.max_escalations) == (5400, True, 1)
    assert group.fallback_owner_id == "00G5g0000QQQdLAEQ1"
    assert (hours.time_zone, hours.weekly_hours) == ("Europe/Berlin", {"mon": "08:00-16:00"})
    assert tenant.untouched_statuses == ["New", "Open - Not Contacted"]

    # The file replaces the tenant: without the SLA entries the SLA is off again.
    await _load(base_settings, _edited(lambda raw: None))
    engine = make_engine(base_settings.database_url)
    async with engine.connect() as conn:
        group = (await conn.execute(select(groups).where(groups.c.id == 7))).one()
        tenant = (await conn.execute(select(tenants).where(tenants.c.id == "acme"))).one()
    await engine.dispose()
    assert (group.sla_seconds, tenant.untouched_statuses) == (None, None)


def test_the_cli_sets_a_group_sla_and_shows_it_in_hours_or_minutes(
    base_settings: Settings, clean: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OWNERSYNC_DATABASE_URL", base_settings.database_url)
    monkeypatch.setenv("OWNERSYNC_TENANT", "acme")
    runner = CliRunner()

    set_2h = runner.invoke(app, ["groups", "sla", "7", "--sla", "2h"], catch_exceptions=False)
    assert set_2h.exit_code == 0, set_2h.output
    assert "follow-up SLA 2 h; 2 escalations" in set_2h.output
    set_90m = runner.invoke(
        app,
        ["groups", "sla", "7", "--sla", "90m", "--fallback", "00G5g0000QQQdLA"],
        catch_exceptions=False,
    )
    assert "90 min; 2 escalations, then 00G5g0000QQQdLAEQ1" in " ".join(set_90m.output.split())
    listed = runner.invoke(app, ["groups", "list"], catch_exceptions=False)
    assert "90 min" in listed.output
    wrong = runner.invoke(app, ["groups", "sla", "7", "--sla", "soon"], catch_exceptions=False)
    assert wrong.exit_code == 2 and "not a duration" in wrong.output
    hours = runner.invoke(
        app,
        ["groups", "hours", "7", "101", "--tz", "America/New_York", "--hours", "mon=09:00-17:00"],
        catch_exceptions=False,
    )
    assert hours.exit_code == 0 and "mon 09:00-17:00" in hours.output

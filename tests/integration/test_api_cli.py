"""The operator commands on the real Postgres and RabbitMQ: the same service layer as the
API, the same refusals, tables for people."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert
from typer.testing import CliRunner

from services.cli import app
from services.cli.common import console
from services.common.broker.base import REASON_HEADER
from services.common.broker.rabbit import RabbitBroker
from services.common.db.engine import make_engine
from services.common.db.tables import audit_log, records
from services.common.runtime import build_broker
from services.common.settings import Settings
from tests.integration.api_support import ALICE_SF, DAVE_SF, sf_id

pytestmark = pytest.mark.integration

KIM = "00Q5g0000ZWHszxEQD"


@pytest.fixture
def cli(base_settings: Settings, clean: None, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in ("database_url", "amqp_url", "exchange", "queue_prefix", "delivery_limit"):
        monkeypatch.setenv(f"OWNERSYNC_{name.upper()}", str(getattr(base_settings, name)))
    monkeypatch.setenv("OWNERSYNC_TENANT", "acme")
    monkeypatch.setattr(console, "width", 250)  # no wrapped cells to search in
    return CliRunner()


def ok(cli: CliRunner, *args: str) -> str:
    result = cli.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _insert_kim(settings: Settings) -> None:
    async def insert_rows() -> None:
        engine = make_engine(settings.database_url)
        now = datetime.now(UTC)
        async with engine.begin() as conn:
            record_id = (
                await conn.execute(
                    insert(records)
                    .values(
                        tenant_id="acme",
                        prospect_id=7001,
                        sf_record_id=KIM,
                        sf_object="Lead",
                        ae_assigned_user_id=101,
                        sf_owner_id=DAVE_SF,
                        last_modstamp=now,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(records.c.id)
                )
            ).scalar_one()
            await conn.execute(
                insert(audit_log).values(
                    tenant_id="acme",
                    record_id=record_id,
                    rule="S4",
                    reason=f"SF owner {DAVE_SF} is not a connected user: AE keeps AE user 101",
                    before=None,
                    after={"ae_assigned_user_id": 101, "sf_owner_id": DAVE_SF},
                    event_type="sf.record.reassigned",
                    source_id="04l5g0000UoNypnAQC",
                    created_at=now,
                )
            )
        await engine.dispose()

    asyncio.run(insert_rows())


def test_users_load_then_user_sync_dry_run_then_for_real(cli: CliRunner, tmp_path: Path) -> None:
    sf = tmp_path / "sf.csv"
    sf.write_text(
        f"id,name,email\n{DAVE_SF},dave,dave@acme.io\n{sf_id('005', 8)},eve,eve@acme.io\n"
    )
    ae = tmp_path / "ae.json"
    ae.write_text('[{"id": 105, "email": "Dave@Acme.io"}, {"id": 106, "email": "x@acme.io"}]')
    assert "1 created, 1 updated" in ok(cli, "users", "load", "sf", str(sf))
    assert "1 created, 1 updated" in ok(cli, "users", "load", "ae", str(ae))
    dry = ok(cli, "user-sync", "--dry-run")
    assert "dry run" in dry and "1 matched, 2 already mapped, 1 unmatched, 0 conflicting" in dry
    assert "105" in ok(cli, "user-sync") and "105" in ok(cli, "mappings", "list")
    again = ok(cli, "user-sync")
    assert "0 matched, 3 already mapped" in again


def test_conflicting_mapping_is_refused_with_the_holder_named(cli: CliRunner) -> None:
    result = cli.invoke(app, ["mappings", "add", "105", ALICE_SF])
    assert result.exit_code == 1
    assert "mapping_conflict" in result.output and "101" in result.output
    assert "connected AE user 105" in ok(cli, "mappings", "add", "105", DAVE_SF)
    assert "disconnected AE user 105" in ok(cli, "mappings", "remove", "105")
    unknown = cli.invoke(app, ["mappings", "remove", "105"])
    assert unknown.exit_code == 1 and "not_found" in unknown.output


def test_record_shows_state_and_audit_and_reconcile_fixes_it(
    cli: CliRunner, base_settings: Settings
) -> None:
    _insert_kim(base_settings)
    shown = ok(cli, "record", KIM[:15])
    assert "S4" in shown and "not a connected user" in shown and "7001" in shown
    assert "S4" in ok(cli, "record", "7001")
    assert cli.invoke(app, ["record", "nonsense!"]).exit_code == 2
    assert cli.invoke(app, ["record", "424242"]).exit_code == 1

    assert "sf_owner_not_connected │ 1" in ok(cli, "reconcile", "--dry-run")
    ok(cli, "mappings", "add", "105", DAVE_SF)
    dry = ok(cli, "reconcile", "--dry-run")
    assert "would_fix              │ 1" in dry and "user 105" in dry
    done = ok(cli, "reconcile")
    assert "fixed                  │ 1" in done and "by S5" in done
    assert "reconcile: " in ok(cli, "record", KIM)


def test_tenant_is_created_with_a_key_and_its_secret_rotated(cli: CliRunner) -> None:
    created = ok(
        cli,
        "tenant",
        "create",
        "initech",
        "--org",
        sf_id("00D", 3),
        "--connector",
        sf_id("005", 3),
    )
    assert "webhook secret (shown once): whsec_" in created
    again = cli.invoke(
        app,
        ["tenant", "create", "initech", "--org", sf_id("00D", 4), "--connector", sf_id("005", 4)],
    )
    assert again.exit_code == 1 and "tenant_exists" in again.output
    key = ok(cli, "tenant", "keys", "create", "-t", "initech", "--name", "crm", "--scope", "write")
    assert "osk_" in key and "(write)" in key
    assert "crm" in ok(cli, "tenant", "keys", "list", "-t", "initech")
    assert "contacts" in ok(cli, "tenant", "set", "initech", "--sync-mode", "contacts")
    assert "valid until" in ok(cli, "tenant", "rotate-secret", "initech", "--grace-hours", "2")
    assert "initech" in ok(cli, "tenant", "list")


def test_tenant_endpoint_key_is_shown_once_at_creation_and_rotated(cli: CliRunner) -> None:
    created = ok(
        cli, "tenant", "create", "hooli", "--org", sf_id("00D", 5), "--connector", sf_id("005", 5)
    )
    first = re.search(r"SF endpoint key \(shown once\): (osek_\S+)", created)
    assert first is not None
    assert first.group(1) not in ok(cli, "tenant", "show", "hooli")
    rotated = ok(cli, "tenant", "rotate-endpoint-key", "hooli", "--grace-hours", "0")
    second = re.search(r"new SF endpoint key \(shown once\): (osek_\S+)", rotated)
    assert second is not None and second.group(1) != first.group(1)
    assert "no grace period" in rotated


def test_dead_letters_are_listed_replayed_and_discarded(
    cli: CliRunner, base_settings: Settings
) -> None:
    async def park(n: int) -> None:
        import aio_pika

        broker = build_broker(base_settings)
        assert isinstance(broker, RabbitBroker)
        await broker.connect()
        assert broker._connection is not None
        async with broker._connection.channel(publisher_confirms=True) as channel:
            dlx = await channel.get_exchange(broker.dlx_name)
            for i in range(n):
                body = f'{{"type": "sf.record.created", "tenant": "acme", "n": {i}}}'.encode()
                headers: aio_pika.abc.HeadersType = {REASON_HEADER: f"reason {i}", "tenant": "acme"}
                message = aio_pika.Message(
                    body, headers=headers, message_id=f"letter-{i}", type="sf.record.created"
                )
                await dlx.publish(message, routing_key="")
        await broker.close()

    asyncio.run(park(3))
    listed = ok(cli, "dead-letters", "list")
    assert all(f"letter-{i}" in listed and f"reason {i}" in listed for i in range(3))
    assert "discarded letter-2" in ok(cli, "dead-letters", "discard", "letter-2")
    assert "replayed 1: letter-0" in ok(cli, "dead-letters", "replay", "letter-0")
    assert "replayed 1: letter-1" in ok(cli, "dead-letters", "replay", "--all")
    assert "letter-" not in ok(cli, "dead-letters", "list")
    assert cli.invoke(app, ["dead-letters", "replay"]).exit_code == 2

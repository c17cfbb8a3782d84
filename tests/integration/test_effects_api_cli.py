"""Effects that wait (an outage, a spent quota) or are dead show in the API and the CLI, with
the age of the oldest; an operator discards one, and the discard is audited on its record."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select
from typer.testing import CliRunner

from services.cli import app
from services.cli.common import console
from services.common.db.engine import make_engine
from services.common.db.store import Cause, outbox_row
from services.common.db.tables import audit_log, outbox, records
from services.common.domain import AeProspectUpsert
from services.common.settings import Settings
from tests.integration.test_api_support import Api, error, sf_id

pytest_plugins = ["tests.integration.test_api_support"]
pytestmark = pytest.mark.integration

CAUSE = Cause("3b1f6c9e-0000-4000-8000-000000000001", "test", "test")


async def outbox_of_acme(database_url: str) -> dict[str, int]:
    """A record with three AE effects: waiting (an older and a newer), and one dead; another
    record with one being sent. Returns their ids by name."""
    now = datetime.now(UTC)
    engine = make_engine(database_url)
    ids: dict[str, int] = {}
    async with engine.begin() as conn:

        async def record(n: int) -> int:
            row = {
                "tenant_id": "acme",
                "prospect_id": 7000 + n,
                "sf_record_id": sf_id("00Q", 700 + n),
                "email": f"w{n}@example.com",
                "created_at": now,
                "updated_at": now,
            }
            return int(
                (
                    await conn.execute(insert(records).values(row).returning(records.c.id))
                ).scalar_one()
            )

        async def effect(name: str, record_id: int, age: float, **columns: Any) -> None:
            written = now - timedelta(seconds=age)
            row = outbox_row("acme", record_id, CAUSE, AeProspectUpsert(101, None), written)
            ids[name] = int(
                (
                    await conn.execute(
                        insert(outbox).values({**row, **columns}).returning(outbox.c.id)
                    )
                ).scalar_one()
            )

        first, second = await record(1), await record(2)
        await effect("older", first, 600, attempts=40, last_error="AeTransientError: AE 503: down")
        await effect("newer", first, 300, attempts=20, last_error="AeTransientError: AE 503")
        await effect("dead", first, 900, status="dead", attempts=1, last_error="AE 400: bad")
        await effect("sending", second, 5, status="sending", lease_owner="relay-0:1")
    await engine.dispose()
    return ids


async def test_the_api_lists_waiting_effects_with_the_oldest_age_and_discards_one(
    api: Api, base_settings: Settings
) -> None:
    ids = await outbox_of_acme(base_settings.database_url)

    response = await api.get("/v1/tenants/acme/effects", key="read")  # waiting by default
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["count"] == 2 and 600 <= page["oldestAgeSeconds"] < 660
    assert [e["id"] for e in page["items"]] == [ids["older"], ids["newer"]]
    assert page["items"][0]["state"] == "waiting" and page["items"][0]["attempts"] == 40
    assert "503" in page["items"][0]["lastError"]

    dead = (await api.get("/v1/tenants/acme/effects?state=dead", key="read")).json()
    assert [e["id"] for e in dead["items"]] == [ids["dead"]] and dead["count"] == 1
    sending = (await api.get("/v1/tenants/acme/effects?state=sending", key="read")).json()
    assert [e["leaseOwner"] for e in sending["items"]] == ["relay-0:1"]
    # Another tenant's key sees nothing of acme's.
    assert (await api.get("/v1/tenants/acme/effects", key="globex")).status_code == 404

    path = f"/v1/tenants/acme/effects/{ids['newer']}"
    assert (await api.delete(path, key="read")).status_code == 403  # discarding takes write
    response = await api.delete(path, key="write")
    assert response.status_code == 200, response.text
    # The older row it had replaced goes with it: nothing of that record is left to send.
    assert response.json() == {"discarded": ids["newer"], "superseded": [ids["older"]]}
    after = (await api.get("/v1/tenants/acme/effects", key="read")).json()
    assert after["count"] == 0 and after["oldestAgeSeconds"] is None

    busy = await api.delete(f"/v1/tenants/acme/effects/{ids['sending']}", key="write")
    assert busy.status_code == 409 and error(busy)["code"] == "effect_sending"
    gone = await api.delete(path, key="write")
    assert gone.status_code == 404

    async with api.runtime.engine.connect() as conn:
        rows = {r.id: r.status for r in await conn.execute(select(outbox))}
        audit = (await conn.execute(select(audit_log))).all()
    assert rows[ids["newer"]] == "discarded" and rows[ids["older"]] == "superseded"
    (entry,) = audit
    assert entry.rule == "RELAY" and entry.event_type == "ownersync.operator"
    key_id = api.keys["write"].split("_")[1]  # osk_<key id>_<secret>: the id, never the secret
    assert entry.reason.startswith(f"API key {key_id} discarded")
    assert f"discarded the ae.prospect.upsert effect {ids['newer']}" in entry.reason


@pytest.fixture
def cli(base_settings: Settings, clean: None, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("OWNERSYNC_DATABASE_URL", base_settings.database_url)
    monkeypatch.setenv("OWNERSYNC_AMQP_URL", str(base_settings.amqp_url))
    monkeypatch.setenv("OWNERSYNC_TENANT", "acme")
    monkeypatch.setattr(console, "width", 250)
    return CliRunner()


def test_the_cli_lists_waiting_and_dead_effects_and_discards_one(
    cli: CliRunner, base_settings: Settings
) -> None:
    ids = asyncio.run(outbox_of_acme(base_settings.database_url))

    listed = cli.invoke(app, ["effects", "list"], catch_exceptions=False)
    assert listed.exit_code == 0, listed.output
    assert str(ids["older"]) in listed.output and str(ids["newer"]) in listed.output
    assert "2 waiting, the oldest 6" in listed.output  # 600 s and a little
    assert "AeTransientError: AE 503: down" in listed.output

    dead = cli.invoke(app, ["effects", "list", "--state", "dead"], catch_exceptions=False)
    assert "AE 400: bad" in dead.output and "1 dead" in dead.output

    discarded = cli.invoke(app, ["effects", "discard", str(ids["dead"])], catch_exceptions=False)
    assert discarded.exit_code == 0, discarded.output
    assert f"discarded effect {ids['dead']}" in discarded.output
    after = cli.invoke(app, ["effects", "list", "-s", "dead"], catch_exceptions=False)
    assert "0 dead" in after.output

    refused = cli.invoke(app, ["effects", "discard", str(ids["sending"])])
    assert refused.exit_code == 1 and "effect_sending" in refused.output

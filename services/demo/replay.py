"""`ownersync demo`: the bundled SF fixtures through receiver -> broker -> syncer -> relay -> AE.

Runs on a fresh embedded store (a temporary SQLite file, the in-process broker and the AE
simulator over real HTTP) so that every run shows the same story.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from services.common.db.engine import make_engine, migrate
from services.common.db.tables import audit_log, records
from services.common.messages import event_id_for
from services.common.settings import Settings
from services.common.tenant_file import TenantFile, load_tenant
from services.receiver.soap import parse_outbound_message
from services.runner import ROLES, Running, running, wait_until_idle
from services.sim.server import free_port

FIXTURES = Path(__file__).parent / "fixtures"
SF = FIXTURES / "salesforce"

# The story of kim's lead first (the MANIFEST's order), then the rest, then the hostile ones.
SF_STORY = [
    ("lead-created-owner-not-connected.xml", "record-created"),
    ("lead-created-owner-connected.xml", "record-created"),
    ("lead-reassigned-not-connected.xml", "record-reassigned"),
    ("lead-reassigned-connected.xml", "record-reassigned"),
    ("lead-reassigned-stale.xml", "record-reassigned"),
    ("lead-reassigned-connected.xml", "record-reassigned"),  # SF's retry of the same message
    ("lead-reassigned-to-queue.xml", "record-reassigned"),
    ("contact-created.xml", "record-created"),
    ("lead-created-15-char-ids.xml", "record-created"),
    ("lead-created-batch-100.xml", "record-created"),
]


def demo_tenant() -> TenantFile:
    return TenantFile.read(SF / "tenant.json")


async def run_demo(console: Console) -> None:
    tenant = demo_tenant()
    with tempfile.TemporaryDirectory(prefix="ownersync-demo-") as tmp:
        settings = Settings(
            database_url=f"sqlite+aiosqlite:///{tmp}/demo.db",
            amqp_url=None,
            ae_base_url=None,
            sf_base_url=None,
            port=free_port(),
            relay_interval_ms=20,
        )
        await asyncio.to_thread(migrate, settings.database_url)
        engine = make_engine(settings.database_url)
        async with engine.begin() as conn:
            await load_tenant(conn, tenant)
        await engine.dispose()
        stop = asyncio.Event()
        async with running(settings, ROLES, stop) as live:
            table = await _replay_salesforce(live, tenant)
    console.print(table)
    console.print(
        "Every decision is in the audit log with its rule, before, after and reason; "
        "run [bold]ownersync run[/bold] to keep the service up."
    )


async def _replay_salesforce(live: Running, tenant: TenantFile) -> Table:
    names = _user_names(tenant)
    table = Table(title=f"Salesforce -> Account Engagement (tenant {tenant.tenant})")
    for column in ("SF message", "HTTP", "rule", "AE owner after", "why"):
        table.add_column(column, overflow="fold")
    seen: set[str] = set()
    posted = 0
    async with httpx.AsyncClient(base_url=live.receiver_url or "", timeout=30) as http:
        for name, action in SF_STORY:
            body = (SF / name).read_bytes()
            since = await _last_audit_id(live)
            response = await http.post(
                f"/salesforce/{tenant.tenant}/{action}",
                content=body,
                headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'},
            )
            if response.status_code == 200:
                posted += len(parse_outbound_message(body).notifications)
            await wait_until_idle(live, settled=posted)
            label = name + (" (again)" if name in seen else "")
            seen.add(name)
            rows = await _audit_rows(live, tenant.tenant, body, since)
            owner = await _ae_owner(live, tenant.tenant, body, names)
            if len(rows) > 1:
                rules = Counter(r.rule for r in rows)
                summary = ", ".join(f"{rule} x{n}" for rule, n in sorted(rules.items()))
                table.add_row(
                    label,
                    str(response.status_code),
                    summary,
                    "-",
                    f"{len(rows)} notifications applied",
                )
            elif rows:
                table.add_row(label, str(response.status_code), rows[0].rule, owner, rows[0].reason)
            else:
                table.add_row(
                    label,
                    str(response.status_code),
                    "S8",
                    owner,
                    "already processed: no effect, acknowledged again",
                )
        for bad in sorted((SF / "bad").iterdir()):
            response = await http.post(
                f"/salesforce/{tenant.tenant}/record-created",
                content=bad.read_bytes(),
                headers={"Content-Type": "text/xml; charset=utf-8"},
            )
            table.add_row(
                f"bad/{bad.name}",
                str(response.status_code),
                "refused",
                "-",
                _faultstring(response.text),
            )
    return table


async def _last_audit_id(live: Running) -> int:
    async with live.runtime.engine.connect() as conn:
        return int((await conn.execute(select(func.max(audit_log.c.id)))).scalar() or 0)


async def _audit_rows(live: Running, tenant: str, body: bytes, since: int) -> list[Any]:
    ids = [
        str(event_id_for(tenant, "sf", n.id)) for n in parse_outbound_message(body).notifications
    ]
    async with live.runtime.engine.connect() as conn:
        result = await conn.execute(
            select(audit_log.c.rule, audit_log.c.reason)
            .where(audit_log.c.event_id.in_(ids), audit_log.c.id > since)
            .order_by(audit_log.c.id)
        )
        return list(result)


async def _ae_owner(live: Running, tenant: str, body: bytes, names: dict[Any, str]) -> str:
    record_id = parse_outbound_message(body).notifications[0].record.record_id
    async with live.runtime.engine.connect() as conn:
        prospect_id = (
            await conn.execute(
                select(records.c.prospect_id).where(
                    records.c.tenant_id == tenant, records.c.sf_record_id == record_id
                )
            )
        ).scalar_one_or_none()
    if prospect_id is None or live.ae_sim is None:
        return "no prospect"
    prospect = live.ae_sim.prospects[prospect_id]
    return describe_ae_owner(prospect, names)


def describe_ae_owner(prospect: dict[str, Any], names: dict[Any, str]) -> str:
    pid = prospect["id"]
    if prospect.get("assignedUserId") is not None:
        user = prospect["assignedUserId"]
        return f"prospect {pid}: user {user} ({names.get(user, '?')})"
    if prospect.get("assignedQueueId") is not None:
        queue = prospect["assignedQueueId"]
        return f"prospect {pid}: queue {names.get(queue, queue)}"
    return f"prospect {pid}: unassigned"


def _user_names(tenant: TenantFile) -> dict[Any, str]:
    names: dict[Any, str] = {v: k for k, v in tenant.engagement_users.items()}
    names.update({v: k for k, v in tenant.queues.items()})
    return names


def _faultstring(text: str) -> str:
    start, end = text.find("<faultstring>"), text.find("</faultstring>")
    return text[start + 13 : end] if start >= 0 else text[:120]

"""A tenant at a glance, for the console's first page: the flow of the last hour by rule,
the effects not sent yet, AE's quota spent today and whether the connections are set."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin.connections import show_connections
from services.admin.effects import list_effects
from services.admin.schemas import ConnectionsView, EffectState
from services.admin.tenants import tenant_row
from services.common.db.tables import ae_quota, audit_log, inbox, tenant_connections

WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class EffectsWaiting:
    state: EffectState
    count: int
    oldest_age_seconds: float | None


@dataclass(frozen=True)
class AeQuotaToday:
    business_unit_id: str
    calls: int
    quota: int | None


@dataclass(frozen=True)
class Overview:
    window_minutes: int
    events_in: int
    decisions_by_rule: dict[str, int]
    effects: list[EffectsWaiting]
    ae_quota: AeQuotaToday | None
    connections: ConnectionsView
    per_minute: dict[str, float] = field(default_factory=dict)

    @property
    def events_per_minute(self) -> float:
        return round(self.events_in / self.window_minutes, 2)


async def tenant_overview(
    conn: AsyncConnection,
    tenant_id: str,
    now: datetime,
    *,
    ae_daily_quota: int | None,
    quota_timezone: str = "UTC",
) -> Overview:
    await tenant_row(conn, tenant_id)
    since = now - WINDOW
    events_in = (
        await conn.execute(
            select(func.count()).where(
                inbox.c.tenant_id == tenant_id, inbox.c.processed_at >= since
            )
        )
    ).scalar_one()
    by_rule = {
        row.rule: row.n
        for row in await conn.execute(
            select(audit_log.c.rule, func.count().label("n"))
            .where(audit_log.c.tenant_id == tenant_id, audit_log.c.created_at >= since)
            .group_by(audit_log.c.rule)
            .order_by(audit_log.c.rule)
        )
    }
    effects = []
    for state in ("waiting", "sending", "dead"):
        page = await list_effects(conn, tenant_id, state, now=now, limit=1)
        effects.append(EffectsWaiting(state, page.count, page.oldest_age_seconds))
    minutes = int(WINDOW.total_seconds() // 60)
    return Overview(
        window_minutes=minutes,
        events_in=events_in,
        decisions_by_rule=by_rule,
        effects=effects,
        ae_quota=await _quota_today(conn, tenant_id, now, ae_daily_quota, quota_timezone),
        connections=await show_connections(conn, tenant_id),
        per_minute={rule: round(n / minutes, 2) for rule, n in by_rule.items()},
    )


async def _quota_today(
    conn: AsyncConnection, tenant_id: str, now: datetime, quota: int | None, zone: str
) -> AeQuotaToday | None:
    unit = (
        await conn.execute(
            select(tenant_connections.c.ae_business_unit_id).where(
                tenant_connections.c.tenant_id == tenant_id
            )
        )
    ).scalar_one_or_none()
    if unit is None:
        return None
    row = (await conn.execute(select(ae_quota).where(ae_quota.c.business_unit_id == unit))).first()
    today = now.astimezone(ZoneInfo(zone)).date()
    calls = row.calls if row is not None and row.day == today else 0
    return AeQuotaToday(unit, calls, quota)

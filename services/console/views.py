"""What each console page shows, read through the admin service layer (the same calls as the
API and the CLI). Each function answers the template's context; none changes anything."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.admin import (
    connections,
    effects,
    groups,
    mappings,
    overview,
    records,
    tenants,
    users,
)
from services.admin import dead_letters as dl
from services.admin.errors import AdminError, Conflict, Invalid, NotFound, Unavailable
from services.admin.pagination import MAX_LIMIT
from services.admin.schemas import AuditEntry, RecordView
from services.common.runtime import Runtime
from services.console.session import ConsoleUser

SHOWN = MAX_LIMIT  # one page of each list; the API and the CLI page through the rest


def now() -> datetime:
    return datetime.now(UTC)


async def overview_page(runtime: Runtime, user: ConsoleUser) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        seen = await overview.tenant_overview(
            conn,
            user.tenant_id,
            now(),
            ae_daily_quota=runtime.settings.ae_daily_quota,
            quota_timezone=runtime.settings.ae_quota_timezone,
        )
    letters: int | None
    try:
        page = await dl.list_dead_letters(
            dl.dead_letter_store(runtime.broker), user.tenant_id, limit=dl.SCAN_LIMIT
        )
        letters = len(page.items)
    except Unavailable:
        letters = None
    return {"overview": seen, "dead_letters": letters}


def owners(owners: dict[str, Any] | None) -> dict[str, str]:
    """An audit entry's before or after, as the timeline shows it."""
    if not owners:
        return {"ae": "—", "sf": "—"}
    return {"ae": records.ae_owner_in(owners), "sf": str(owners.get("sf_owner_id") or "none")}


def trace_url(runtime: Runtime, entry: AuditEntry) -> str | None:
    template = runtime.settings.trace_url_template
    if not template or not entry.trace_id:
        return None
    return template.replace("{trace_id}", entry.trace_id)


async def records_page(runtime: Runtime, user: ConsoleUser, query: str) -> dict[str, Any]:
    found: list[tuple[RecordView, list[AuditEntry]]] = []
    error = None
    if query.strip():
        async with runtime.engine.connect() as conn:
            try:
                for record in await records.find_records(conn, user.tenant_id, query):
                    audit = await records.record_audit(
                        conn,
                        user.tenant_id,
                        "prospect" if record.prospect_id else "sf",
                        record.prospect_id or record.sf_record_id,
                        limit=SHOWN,
                    )
                    found.append((record, audit.items))
            except Invalid as exc:
                error = exc.message
    return {
        "query": query,
        "found": found,
        "search_error": error,
        "owners": owners,
        "trace_url": lambda entry: trace_url(runtime, entry),
    }


async def users_page(runtime: Runtime, user: ConsoleUser) -> dict[str, Any]:
    tenant = user.tenant_id
    async with runtime.engine.connect() as conn:
        ae = await users.list_ae_users(conn, tenant, limit=SHOWN)
        sf = await users.list_sf_users(conn, tenant, limit=SHOWN)
        held = await mappings.list_mappings(conn, tenant, limit=SHOWN)
    sf_names = {u.id: u.name or u.id for u in sf.items}
    return {
        "ae_users": ae.items,
        "sf_users": sf.items,
        "mappings": held.items,
        "sf_names": sf_names,
        "ae_names": {u.id: u.name or str(u.id) for u in ae.items},
        "unconnected_ae": [u for u in ae.items if u.active and u.connected_sf_user_id is None],
        "unconnected_sf": [u for u in sf.items if u.active and u.connected_ae_user_id is None],
    }


async def round_robin_page(runtime: Runtime, user: ConsoleUser) -> dict[str, Any]:
    tenant = user.tenant_id
    async with runtime.engine.begin() as conn:  # the next pick reads the members locked
        found = await groups.list_groups(conn, tenant, limit=SHOWN)
        ae = await users.list_ae_users(conn, tenant, limit=SHOWN)
        picks = await groups.next_picks(conn, tenant, [g.id for g in found.items], now())
    return {
        "groups": found.items,
        "picks": picks,
        "ae_by_id": {u.id: u for u in ae.items},
    }


async def dead_letters_page(runtime: Runtime, user: ConsoleUser) -> dict[str, Any]:
    letters: list[Any] = []
    broker_error = None
    try:
        page = await dl.list_dead_letters(
            dl.dead_letter_store(runtime.broker), user.tenant_id, limit=SHOWN
        )
        letters = page.items
    except Unavailable as exc:
        broker_error = exc.message
    held = {}
    async with runtime.engine.connect() as conn:
        for state in ("waiting", "dead"):
            held[state] = await effects.list_effects(
                conn, user.tenant_id, state, now=now(), limit=SHOWN
            )
    return {"letters": letters, "broker_error": broker_error, "held": held}


async def setup_page(runtime: Runtime, user: ConsoleUser, base_url: str) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        tenant = await tenants.get_tenant(conn, user.tenant_id, now())
        stored = await connections.show_connections(conn, user.tenant_id)
    base = base_url.rstrip("/")
    return {
        "tenant": tenant,
        "connections": stored,
        "sf_urls": {
            action: f"{base}/salesforce/{user.tenant_id}/{action}?key="
            for action in ("record-created", "record-reassigned")
        },
        "ae_url": f"{base}/engagement/{user.tenant_id}/events",
    }


STATUS: dict[type[AdminError], int] = {NotFound: 404, Conflict: 409, Invalid: 422, Unavailable: 503}


def explain(exc: AdminError) -> dict[str, Any]:
    """An admin refusal as the page shows it: its words, its code and the facts behind it."""
    status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 400)
    return {"status": status, "message": exc.message, "code": exc.code, "details": exc.details}

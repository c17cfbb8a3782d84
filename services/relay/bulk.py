"""Bulk mode: a tenant's large backlog of AE owner changes goes through one AE import.

Why: a burst (an admin reassigns 50,000 leads in SF) costs one AE call per record on the normal
path, against AE's 5 concurrent calls and daily quota per business unit. The v5 Import API moves
thousands of owners in a handful of calls.

Which API. AE's v5 Import API (https://developer.salesforce.com/docs/marketing/pardot/guide/
import-v5.html) upserts prospects from a CSV (columns = prospect field names, the match column
`matchId` = prospect id) and can bulk-assign prospects to a user (the "Prospects > Prospects >
Assign" ability); un-assigning is NOT supported through it. v4's `batchUpdate`
(https://developer.salesforce.com/docs/marketing/pardot/guide/prospects-v4.html, 50 prospects a
call, per-row errors in the answer) updates prospect fields but assignment is its own call
(`do/assign`), so it cannot move owners in bulk. Endpoints used (see AeClient):
`POST /api/v5/imports` (multipart: `input` JSON {operation Upsert, object Prospect,
createOnNoMatch false} + `importFile` CSV `matchId,assignedUserId`), `PATCH /api/v5/imports/{id}`
{"status": "Ready"}, `GET /api/v5/imports/{id}` (status Open/Waiting/Processing/Complete,
errorCount), `GET /api/v5/imports/{id}/errors` (CSV of the failed rows with their error).

When. Every `interval` bulk mode counts, per tenant, the records with a fresh AE owner update
waiting: never tried (attempts 0: a row that failed once, in an import or alone, goes one by
one), the prospect exists (not a create) and the owner is a user (not an un-assign, not a queue).
Above `threshold` up to `size` of them are leased (like the normal claim, fenced by the same
`relay_leases` versions and the relay's own lease, renewed every third of it while the import
runs: an import takes longer than a call) and
their rows marked `sending`. While a tenant's backlog goes by import the normal claim leaves
those fresh owner updates alone (`leave_to_bulk`) and sends everything else; a tenant whose
import could not be made rests for `cooldown`, its rows going one by one meanwhile. A tenant
in bulk mode stays in it down to a tenth of the threshold, and the next import starts as soon as
one ends, so a burst still being decided goes by import to its end.

Only the owner goes in the CSV (`assignedUserId`): the one-by-one update also writes the
prospect's `salesforceId`, an import row does not (a column AE might refuse would fail every
row). `relay_leases.sent` records the record's state as a normal send does, so a prospect whose
SF link AE lacks is not linked by bulk mode; AE's connector links prospects to SF itself.

What. Each record's LATEST decided owner, read just before the import (as `_send` does), one
CSV row per record; a record whose last settled send carried that state already costs nothing.
The import is created Open, then submitted (Ready) by a second call: a create whose answer is
lost leaves at worst an Open import AE never processes, so the rows simply go back to pending
(no attempt counted) and are sent again, which is idempotent. Once Complete the error CSV is
read; records whose row failed go back to pending with one attempt counted, so the one-by-one
path takes them (and decides whether the failure is permanent); the others are settled as a
normal send settles them (done, older rows superseded, `relay_leases.sent` recorded), in
batches. An error CSV whose rows cannot all be matched to prospects fails the whole import back
to the one-by-one path: nothing is settled done that may not be.

Killed or stopped mid-import: nothing is settled and nothing renews the leases; the rows stay
`sending` until their lease ends (within one relay lease, 60 s) and the normal claim sends them.
An import still unfinished at `SEND_WINDOW` of `lease` (the longest an import may take) is given
up: its records go one by one, which may race with AE finishing the import late (same owners,
unless they changed).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import and_, distinct, exists, func, select, update

from services.common import metrics
from services.common.ae_client import (
    AeClient,
    AeError,
    AeImport,
    AeRequestRejected,
    AeTransientError,
)
from services.common.db.store import one_of, record_from_row
from services.common.db.tables import outbox, records, relay_leases
from services.common.domain import AeProspectUpsert, Learned, RecordState
from services.relay.relay import SEND_WINDOW, Outcome, Relay, _Claim, db_now

log = logging.getLogger("ownersync.relay.bulk")

__all__ = ["BulkMode", "BulkRowFailed", "failed_rows", "owners_csv"]

# The import's CSV: the match column and the one field it writes.
MATCH_COLUMN = "matchId"
OWNER_COLUMN = "assignedUserId"

# Status reads of a running import: every `poll` seconds at first, then 1.5 times longer each
# time, up to 30 s.
POLL_GROWTH, POLL_MAX = 1.5, 30.0

# A fresh AE owner update: the outbox row never tried, and its record (joined or in EXISTS)
# has a prospect and a user to own it; an import can make it.
_FRESH_ROW = (
    outbox.c.kind == AeProspectUpsert.kind,
    outbox.c.status == "pending",
    outbox.c.attempts == 0,
)
_OWNER_UPDATE = (records.c.prospect_id.is_not(None), records.c.ae_assigned_user_id.is_not(None))

# Records per statement: a lease insert binds 4 parameters per record.
CHUNK = 2000
# Records settled per transaction (the normal path's settle, many statements each).
SETTLE_CHUNK = 500
T = TypeVar("T")

# Who sends a tenant's AE calls: its AE client (None: the tenant is held, or has no AE).
AeClients = Callable[[str], Awaitable[AeClient | None]]


class BulkRowFailed(Exception):
    """The record's row of an import failed (or the import did): it goes one by one."""


def owners_csv(owners: list[tuple[int, int]]) -> str:
    """The import's CSV: a header, then one `prospect id,user id` row per prospect."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([MATCH_COLUMN, OWNER_COLUMN])
    writer.writerows(owners)
    return out.getvalue()


def failed_rows(errors_csv: str) -> tuple[dict[int, str], int]:
    """The prospects of an import's error CSV, each with its error, and the count of rows that
    name no prospect (then the caller cannot tell which succeeded). The error is the row's
    columns other than ours, whatever AE names them."""
    failed: dict[int, str] = {}
    unknown = 0
    reader = csv.DictReader(io.StringIO(errors_csv))
    for row in reader:
        if not any((value or "").strip() for value in row.values()):
            continue
        extra = [
            str(value)
            for key, value in row.items()
            if key not in (MATCH_COLUMN, OWNER_COLUMN) and value
        ]
        try:
            failed[int((row.get(MATCH_COLUMN) or "").strip())] = "; ".join(extra) or "failed"
        except ValueError:
            unknown += 1
    return failed, unknown


def bulk_eligible(record: RecordState) -> bool:
    """An owner update an import can make: the prospect exists and the owner is a user."""
    return record.prospect_id is not None and record.ae_assigned_user_id is not None


@dataclass
class BulkResult:
    """What one import did: records by outcome, and the AE calls it took."""

    imported: int = 0
    failed: int = 0
    unchanged: int = 0
    not_bulk: int = 0
    calls: int = 0
    outcome: str = ""
    counts: dict[str, int] = field(default_factory=dict)


class BulkMode:
    """Runs beside `relay` (it sets `relay.bulk`): large AE backlogs go by import."""

    def __init__(
        self,
        relay: Relay,
        clients: AeClients,
        *,
        threshold: int = 1000,
        size: int = 5_000,
        lease: float = 600.0,
        poll: float = 2.0,
        interval: float = 5.0,
        cooldown: float = 60.0,
        refused_rest: float = 3600.0,
    ) -> None:
        """`threshold`: records waiting in one tenant above which an import starts (0: off);
        `size`: records per import; `lease`: the longest an import may take (the records'
        leases are the relay's own, renewed meanwhile);
        `poll`: seconds before the first status read (then longer); `cooldown`: seconds a
        tenant's bulk mode rests after an import that failed as a whole; `refused_rest`: after
        AE refused to create one (4xx: no Import API, or the user may not import or assign)."""
        self.relay = relay
        self.clients = clients
        self.threshold = threshold
        self.size = size
        self.lease = timedelta(seconds=lease)
        self.poll = poll
        self.interval = interval
        self.cooldown = cooldown
        self.refused_rest = refused_rest
        self.results: list[BulkResult] = []
        self._resting: dict[str, float] = {}
        # Tenants whose backlog bulk mode is taking: the normal claim leaves their fresh rows.
        self.busy: set[str] = set()
        relay.bulk = self

    async def run(self, stop: asyncio.Event) -> None:
        """Look for large backlogs every `interval`, an import at a time per tenant."""
        if self.threshold <= 0:
            return
        while not stop.is_set():
            imported = False
            try:
                waiting = await self.backlogs()
                due = [t for t, n in waiting.items() if self._due(t, n)]
                self.busy = set(due)
                done = await asyncio.gather(*(self.run_once(t) for t in due))
                imported = any(r.outcome == "complete" for r in done)
            except Exception:
                self.busy = set()
                log.exception("bulk mode pass failed")
            if not imported:  # after an import, what came meanwhile goes in the next at once
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)

    def _due(self, tenant: str, waiting: int) -> bool:
        """Above the threshold; a tenant in bulk mode stays in it down to a tenth of it, so a
        burst still coming in goes by import to its end instead of trickling out one by one
        between imports."""
        floor = self.threshold // 10 if tenant in self.busy else self.threshold
        return waiting > floor and self._awake(tenant)

    async def backlogs(self) -> dict[str, int]:
        """Records with a fresh AE owner update waiting, by tenant."""
        async with self.relay.engine.connect() as conn:
            now = await db_now(conn)
            query = (
                select(outbox.c.tenant_id, func.count(distinct(outbox.c.record_id)))
                .join(records, records.c.id == outbox.c.record_id)
                .where(*self._fresh(now))
                .group_by(outbox.c.tenant_id)
            )
            return {tenant: int(count) for tenant, count in await conn.execute(query)}

    async def run_once(self, tenant: str) -> BulkResult:
        """One import of `tenant`'s waiting owner updates: claim, send, wait, settle."""
        result = BulkResult()
        client = await self.clients(tenant)
        if client is None:
            self.busy.discard(tenant)  # its rows go one by one, held like any other
            result.outcome = "no_client"
            return result
        claims = await self._claim(tenant)
        if not claims:
            result.outcome = "nothing"
            return result
        calls_before = client.calls_made
        try:
            await self._import(tenant, client, claims, result)
        finally:
            result.calls = client.calls_made - calls_before
            self.results.append(result)
            metrics.AE_BULK_IMPORTS.labels(tenant, result.outcome or "abandoned").inc()
            for outcome in ("imported", "failed", "unchanged", "not_bulk"):
                if count := getattr(result, outcome):
                    metrics.AE_BULK_RECORDS.labels(tenant, outcome).inc(count)
        return result

    def leave_to_bulk(self) -> list[Any]:
        """What the normal claim adds while tenants' backlogs go by import: it leaves alone
        their fresh owner updates (one import carries them), and takes everything else."""
        if not self.busy:
            return []
        owner_update = exists().where(records.c.id == outbox.c.record_id, *_OWNER_UPDATE)
        return [~and_(outbox.c.tenant_id.in_(sorted(self.busy)), *_FRESH_ROW, owner_update)]

    # --- claim ----------------------------------------------------------------------------

    def _fresh(self, now: datetime) -> list[Any]:
        """Rows an import may take (joined to their records): fresh owner updates, due, of
        records not leased."""
        held = exists().where(
            relay_leases.c.record_id == outbox.c.record_id, relay_leases.c.expires_at > now
        )
        return [*_FRESH_ROW, *_OWNER_UPDATE, outbox.c.next_attempt_at <= now, ~held]

    async def _claim(self, tenant: str) -> list[_Claim]:
        relay = self.relay
        async with relay.engine.begin() as conn:
            now = await db_now(conn)
            due = (
                select(outbox.c.record_id)
                .join(records, records.c.id == outbox.c.record_id)
                .where(outbox.c.tenant_id == tenant, *self._fresh(now))
            )
            if conn.dialect.name == "postgresql":
                due = due.with_for_update(of=outbox, skip_locked=True)
            found = await conn.execute(due.order_by(outbox.c.id).limit(self.size))
            wanted = sorted({r.record_id for r in found})
            if not wanted:
                return []
            claims = []
            for part in _chunks(wanted):
                taken = await relay._take_leases(conn, part, now)
                claims += await relay._gather(conn, taken, [AeProspectUpsert.kind])
        deadline = asyncio.get_running_loop().time() + self.lease.total_seconds() * SEND_WINDOW
        for claim in claims:
            claim.deadline = deadline
        return claims

    # --- send -----------------------------------------------------------------------------

    async def _import(
        self, tenant: str, client: AeClient, claims: list[_Claim], result: BulkResult
    ) -> None:
        states = await self._current([c.record_id for c in claims])
        outcomes: dict[int, Outcome] = {}
        by_prospect: dict[int, _Claim] = {}
        owners: list[tuple[int, int]] = []
        for claim in claims:
            group = claim.groups[0]
            group.record = states.get(claim.record_id, group.record)
            effect = AeProspectUpsert.of(group.record)
            group.sent = effect
            if self.relay._sent_last(claim, group, effect):
                group.unchanged = True
                outcomes[claim.record_id] = Learned()
                result.unchanged += 1
            elif not bulk_eligible(group.record):
                outcomes[claim.record_id] = BulkRowFailed(
                    "no longer an owner update an import makes"
                )
                result.not_bulk += 1
            else:
                prospect, user = group.record.prospect_id, group.record.ae_assigned_user_id
                assert prospect is not None and user is not None
                by_prospect[prospect] = claim
                owners.append((prospect, user))
        if owners:
            log.info("bulk import of %d owners for %s", len(owners), tenant)
            async with self._renewing(claims):
                imported = await self._run_import(tenant, client, owners, claims, result)
            if imported is None:
                return  # put back, or left to the leases
            failures, all_failed = imported
            for prospect, claim in by_prospect.items():
                if all_failed is not None:
                    outcomes[claim.record_id] = BulkRowFailed(all_failed)
                elif prospect in failures:
                    outcomes[claim.record_id] = BulkRowFailed(f"import row: {failures[prospect]}")
                else:
                    outcomes[claim.record_id] = Learned()
            failed = len(by_prospect) if all_failed is not None else len(failures)
            result.failed += failed
            result.imported += len(by_prospect) - failed
        result.outcome = result.outcome or "complete"
        await self._settle(claims, outcomes)
        log.info(
            "bulk import for %s settled: %d imported, %d failed (one by one), %d unchanged, "
            "%d not for bulk",
            tenant,
            result.imported,
            result.failed,
            result.unchanged,
            result.not_bulk,
        )

    @contextlib.asynccontextmanager
    async def _renewing(self, claims: list[_Claim]) -> AsyncIterator[None]:
        """Keep the claims' leases (the relay's own, 60 s) alive while the import runs, renewed
        every third of a lease: a relay that dies mid-import stops renewing, and its records go
        to another relay within one lease, as after any send. Only a lease still held is
        renewed, never one that ran out (another relay may hold it by now)."""
        relay = self.relay
        ids = [claim.record_id for claim in claims]

        async def renew() -> None:
            while True:
                await asyncio.sleep(relay.lease.total_seconds() / 3)
                try:
                    async with relay.engine.begin() as conn:
                        now = await db_now(conn)
                        await conn.execute(
                            update(relay_leases)
                            .where(
                                one_of(conn, relay_leases.c.record_id, ids),
                                relay_leases.c.owner == relay.owner,
                                relay_leases.c.expires_at > now,
                            )
                            .values(expires_at=now + relay.lease)
                        )
                except Exception:
                    log.warning("bulk mode could not renew the leases of %d records", len(ids))

        renewer = asyncio.create_task(renew(), name="relay-bulk-renew")
        try:
            yield
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)

    async def _run_import(
        self,
        tenant: str,
        client: AeClient,
        owners: list[tuple[int, int]],
        claims: list[_Claim],
        result: BulkResult,
    ) -> tuple[dict[int, str], str | None] | None:
        """Create, submit and wait for the import. The failed prospects with their errors, and
        a reason when every row must count as failed; None when the rows were put back (the
        import was not processed) or are left to their leases."""
        try:
            created = await client.create_import(owners_csv(owners))
        except AeError as exc:
            # Not created, or created Open and never submitted: AE will not process it. Refused
            # outright (no Import API there, or the connector user lacks the Import or Assign
            # ability): bulk mode rests for `refused_rest`, and owners go one by one meanwhile.
            rest = self.refused_rest if isinstance(exc, AeRequestRejected) else None
            await self._put_back(tenant, claims, f"AE import not created: {exc}", result, rest)
            return None
        try:
            status = await client.submit_import(created.id)
        except AeError as exc:
            seen: AeImport | None = None
            with contextlib.suppress(AeError):
                seen = await client.get_import(created.id)
            if seen is None or seen.status == "Open":
                await self._put_back(tenant, claims, f"AE import not submitted: {exc}", result)
                return None
            status = seen
        loop = asyncio.get_running_loop()
        deadline = claims[0].deadline
        wait = self.poll
        while status.running:
            if loop.time() + wait > deadline:
                result.outcome = "failed"
                log.warning("AE import %s for %s outlasted its leases", created.id, tenant)
                return {}, f"AE import {created.id} did not finish in time ({status.status})"
            await asyncio.sleep(wait)
            # A long import is read less and less often: minutes of processing cost few calls.
            wait = min(wait * POLL_GROWTH, max(self.poll, POLL_MAX))
            try:
                status = await client.get_import(created.id)
            except AeTransientError:
                continue
            except AeError as exc:
                result.outcome = "failed"
                return {}, f"AE import {created.id} unreadable: {exc}"
        result.counts = _counts(status)
        if not status.complete:
            result.outcome = "failed"
            return {}, f"AE import {created.id} ended {status.status}"
        if not status.error_count:
            return {}, None
        try:
            failures, unknown = failed_rows(await client.import_errors(created.id))
        except AeError as exc:
            result.outcome = "failed"
            return {}, f"AE import {created.id}: its errors unreadable ({exc})"
        if unknown or len(failures) < status.error_count:
            result.outcome = "failed"
            return {}, f"AE import {created.id}: failed rows that name no prospect"
        return failures, None

    async def _current(self, record_ids: list[int]) -> dict[int, RecordState]:
        """The records' latest decided states, read as the import starts."""
        async with self.relay.engine.connect() as conn:
            rows = await conn.execute(select(records).where(one_of(conn, records.c.id, record_ids)))
            return {row.id: record_from_row(row) for row in rows}

    # --- settle ---------------------------------------------------------------------------

    async def _settle(self, claims: list[_Claim], outcomes: dict[int, Outcome]) -> None:
        """As the normal path settles: done or superseded, failures back to pending with an
        attempt counted (so one by one), fenced by each lease; in batches."""
        items = [(claim, [outcomes[claim.record_id]]) for claim in claims]
        for part in _chunks(items, SETTLE_CHUNK):
            await self.relay._settle_batch(part)

    async def _put_back(
        self,
        tenant: str,
        claims: list[_Claim],
        reason: str,
        result: BulkResult,
        rest: float | None = None,
    ) -> None:
        """The import was not processed: the rows are pending again, no attempt counted (bulk
        mode may take them again after its cooldown; the normal path may before)."""
        result.outcome = "put_back"
        rest = self.cooldown if rest is None else rest
        self._resting[tenant] = asyncio.get_running_loop().time() + rest
        self.busy.discard(tenant)  # resting: the normal path takes its rows meanwhile
        log.warning(
            "%s: %d records put back; bulk mode rests %.0f s for %s",
            reason,
            len(claims),
            rest,
            tenant,
        )
        relay = self.relay
        async with relay.engine.begin() as conn:
            now = await db_now(conn)
            released: set[int] = set()
            for some in _chunks(claims):
                released |= await relay._release(conn, some, now)
            rows = [
                row_id
                for claim in claims
                if claim.record_id in released
                for group in claim.groups
                for row_id in group.row_ids
            ]
            await conn.execute(
                update(outbox)
                .where(
                    one_of(conn, outbox.c.id, rows),
                    outbox.c.status == "sending",
                    outbox.c.lease_owner == relay.owner,
                )
                .values(status="pending", lease_owner=None, lease_version=None, last_error=reason)
            )

    def _awake(self, tenant: str) -> bool:
        return asyncio.get_running_loop().time() >= self._resting.get(tenant, 0.0)


def _chunks(items: list[T], size: int | None = None) -> Iterator[list[T]]:
    """`items` in pieces small enough for one statement's parameters (asyncpg: 32,767)."""
    size = size or CHUNK
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _counts(status: AeImport) -> dict[str, int]:
    return {
        "created": status.created_count or 0,
        "updated": status.updated_count or 0,
        "errors": status.error_count or 0,
    }

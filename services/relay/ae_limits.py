"""AE's limits of one business unit, shared by every relay replica through Postgres.

- The daily call quota: one counter row per business unit (`ae_quota`), its day taken from the
  database clock in AE's time zone (OWNERSYNC_AE_QUOTA_TIMEZONE): the first call of a new day
  starts the count again.
- The 5 concurrent calls: one row per slot (`ae_slots`); a call holds a slot, leased by the
  database clock, while it runs. A replica that dies holding one frees it when the lease ends.
  A slot a call is done with is handed to this process's next call if one comes within
  `linger` seconds (no round trip to give it back and take it again, so a steady stream keeps
  all 5 calls busy), for at most `hold` seconds from its take (then it goes back, and every
  replica may take it again), always well within its lease.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.ae_client import AeQuotaExhausted
from services.common.db.engine import single_statements

log = logging.getLogger("ownersync.relay")

_SPEND = text(
    """
    INSERT INTO ae_quota (business_unit_id, day, calls)
    VALUES (:unit, (now() AT TIME ZONE :zone)::date, 1)
    ON CONFLICT (business_unit_id) DO UPDATE
    SET calls = CASE WHEN ae_quota.day = excluded.day THEN ae_quota.calls + 1 ELSE 1 END,
        day = excluded.day
    WHERE ae_quota.day <> excluded.day OR ae_quota.calls < :quota
    RETURNING calls
    """
)
_SLOTS = text(
    "INSERT INTO ae_slots (business_unit_id, slot)"
    " SELECT :unit, n FROM generate_series(0, :n - 1) n ON CONFLICT DO NOTHING"
)
_TAKE = text(
    """
    UPDATE ae_slots SET holder = :holder, expires_at = now() + make_interval(secs => :lease)
    WHERE (business_unit_id, slot) = (
        SELECT business_unit_id, slot FROM ae_slots
        WHERE business_unit_id = :unit AND slot < :n
          AND (holder IS NULL OR expires_at < now())
        ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING slot
    """
)
_GIVE_BACK = text(
    "UPDATE ae_slots SET holder = NULL, expires_at = NULL"
    " WHERE business_unit_id = :unit AND slot = :slot AND holder = :holder"
)


@dataclass(eq=False)
class _Slot:
    number: int
    holder: str
    taken_at: float  # this process's loop clock


class SharedAeLimits:
    """`AeCallLimits` in Postgres (see the module). `daily_quota` None: no quota is counted."""

    def __init__(
        self,
        engine: AsyncEngine,
        business_unit_id: str,
        *,
        owner: str,
        daily_quota: int | None,
        max_concurrency: int = 5,
        timezone: str = "UTC",
        slot_lease: float = 60.0,
        poll: float = 0.02,
        linger: float = 0.05,
        hold: float = 5.0,
    ) -> None:
        self.engine = engine
        self.unit = business_unit_id
        self.owner = owner
        self.daily_quota = daily_quota
        self.max_concurrency = max_concurrency
        self.timezone = timezone
        self.slot_lease = slot_lease
        self.poll = poll
        self.linger = linger
        self.hold = min(hold, slot_lease / 4)
        self._idle: list[_Slot] = []
        self._returning: set[asyncio.Task[None]] = set()
        self._remaining: int | None = daily_quota
        self._ready = False

    @property
    def quota_remaining(self) -> int | None:
        """As of this process's last call."""
        return self._remaining

    @asynccontextmanager
    async def call(self) -> AsyncIterator[None]:
        await self._spend()
        slot = self._reuse() or await self._take_slot()
        try:
            yield
        finally:
            self._done_with(slot)

    async def aclose(self) -> None:
        """Give back the slots this process holds idle."""
        idle, self._idle = self._idle, []
        for slot in idle:
            await self._give_back(slot)
        if self._returning:
            await asyncio.gather(*self._returning, return_exceptions=True)

    def _reuse(self) -> _Slot | None:
        now = asyncio.get_running_loop().time()
        while self._idle:
            slot = self._idle.pop()
            if now - slot.taken_at < self.hold:
                return slot
            self._return_later(slot, 0.0)
        return None

    def _done_with(self, slot: _Slot) -> None:
        if asyncio.get_running_loop().time() - slot.taken_at >= self.hold:
            self._return_later(slot, 0.0)
            return
        self._idle.append(slot)
        self._return_later(slot, self.linger)

    def _return_later(self, slot: _Slot, delay: float) -> None:
        """Give the slot back after `delay`, unless a call took it meanwhile."""

        async def give_back() -> None:
            if delay > 0:
                await asyncio.sleep(delay)
                if slot not in self._idle:
                    return  # handed to another call
                self._idle.remove(slot)
            await self._give_back(slot)

        task = asyncio.create_task(give_back())
        self._returning.add(task)
        task.add_done_callback(self._returning.discard)

    async def _spend(self) -> None:
        if self.daily_quota is None:
            return
        params = {"unit": self.unit, "zone": self.timezone, "quota": self.daily_quota}
        async with single_statements(self.engine) as conn:
            calls = (await conn.execute(_SPEND, params)).scalar_one_or_none()
        if calls is None:
            self._remaining = 0
            raise AeQuotaExhausted(
                None, None, f"daily quota of {self.daily_quota} calls spent (all replicas)"
            )
        self._remaining = max(self.daily_quota - calls, 0)

    async def _take_slot(self) -> _Slot:
        holder = f"{self.owner}:{uuid.uuid4().hex[:12]}"
        params = {
            "unit": self.unit,
            "n": self.max_concurrency,
            "holder": holder,
            "lease": self.slot_lease,
        }
        while True:
            async with single_statements(self.engine) as conn:
                if not self._ready:
                    await conn.execute(_SLOTS, {"unit": self.unit, "n": self.max_concurrency})
                    self._ready = True
                slot = (await conn.execute(_TAKE, params)).scalar_one_or_none()
            if slot is not None:
                return _Slot(int(slot), holder, asyncio.get_running_loop().time())
            await asyncio.sleep(random.uniform(self.poll / 2, self.poll))

    async def _give_back(self, slot: _Slot) -> None:
        params = {"unit": self.unit, "slot": slot.number, "holder": slot.holder}
        try:
            async with single_statements(self.engine) as conn:
                await conn.execute(_GIVE_BACK, params)
        except Exception:
            # Not fatal: the slot's lease ends it.
            log.warning(
                "AE slot %s of %s not given back; its lease frees it", slot.number, self.unit
            )

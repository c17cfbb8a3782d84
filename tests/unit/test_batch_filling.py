"""How a worker's next batch fills (`fill_batch`, both brokers): what waits is taken at once, up
to the batch size; a timer runs only when a wait is set, and by default none is."""

from __future__ import annotations

import asyncio

from services.common.broker.base import Delivery, fill_batch
from services.common.settings import Settings


def _delivery(events: int) -> Delivery:
    async def settle(*_: object) -> None:
        return None

    return Delivery(b"", 0, settle, events=[object()] * events)  # type: ignore[list-item]


def _queue(*sizes: int) -> asyncio.Queue[Delivery]:
    queue: asyncio.Queue[Delivery] = asyncio.Queue()
    for size in sizes:
        queue.put_nowait(_delivery(size))
    return queue


async def _next_batch(queue: asyncio.Queue[Delivery], *, size: int, wait: float) -> list[int]:
    batch = await fill_batch(queue.get, lambda: not queue.empty(), batch_size=size, batch_wait=wait)
    return [d.size for d in batch]


async def _turns(n: int = 10) -> None:
    """Let the loop run a few times without letting any real time pass."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_by_default_a_lone_message_is_batched_at_once_without_waiting_for_company() -> None:
    """At 50% of capacity most SF messages come to an idle syncer: a 5 ms wait for company that
    seldom came added 5 ms to nearly every message's latency."""
    wait = Settings.model_fields["batch_wait_ms"].default / 1000
    queue = _queue(100)
    batch = asyncio.ensure_future(_next_batch(queue, size=500, wait=wait))
    await _turns()
    assert batch.done(), "the batch waited for more messages"
    queue.put_nowait(_delivery(100))  # came after the batch was taken: the next one's
    assert batch.result() == [100]
    assert await _next_batch(queue, size=500, wait=wait) == [100]


async def test_what_arrived_during_the_last_batch_is_one_batch_up_to_the_batch_size() -> None:
    queue = _queue(100, 100, 100, 100, 100, 100, 1)
    assert await _next_batch(queue, size=500, wait=0) == [100] * 5
    assert await _next_batch(queue, size=500, wait=0) == [100, 1]
    queue = _queue(100, 100, 100, 100)
    assert await _next_batch(queue, size=250, wait=0) == [100, 100, 100]  # the last one past it


async def test_a_wait_when_set_takes_what_comes_within_it() -> None:
    queue = _queue(1)
    batch = asyncio.ensure_future(_next_batch(queue, size=500, wait=5.0))
    await _turns()
    assert not batch.done()
    queue.put_nowait(_delivery(1))
    await _turns()
    assert not batch.done()  # still within the wait, and the batch is not full
    for _ in range(498):
        queue.put_nowait(_delivery(1))
    assert await asyncio.wait_for(batch, 1) == [1] * 500  # full: the wait ends early

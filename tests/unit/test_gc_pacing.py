"""`collect_garbage_every`: full collections come at its pace, and Python starts none of its own
while it runs (each of those freed the garbage of ~10 s at once); Python's thresholds are put
back when it stops."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from services.common.runtime import collect_garbage_every

OBJECTS = 200_000


def _promote_then_drop(objects: int) -> None:
    """Objects in reference cycles that live through young collections, then become garbage:
    what makes Python start a full collection of its own."""
    kept: list[list[Any]] = []
    for _ in range(objects):
        cycle: list[Any] = []
        cycle.append(cycle)
        kept.append(cycle)
    del kept


async def test_full_collections_come_at_the_pace_and_python_starts_none_of_its_own() -> None:
    full: list[str] = []

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append("paced" if pacing else "python")

    thresholds = gc.get_threshold()
    gc.callbacks.append(watch)
    gc.freeze()  # as the roles do: a full collection then takes ms, not pytest's whole heap
    pacing = False
    try:
        # As a control, Python's own schedule: the same garbage starts a full collection.
        _promote_then_drop(OBJECTS)
        assert "python" in full, "the garbage made no full collection: the test shows nothing"
        full.clear()

        collector = asyncio.create_task(collect_garbage_every(0.05))
        await asyncio.sleep(0)
        _promote_then_drop(OBJECTS)  # the collector cannot run meanwhile: Python would
        assert full == []
        pacing = True
        await asyncio.sleep(0.2)  # the first paced collection frees that garbage: a long one
        full.clear()
        await asyncio.sleep(0.32)
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
    finally:
        gc.callbacks.remove(watch)
        gc.unfreeze()

    assert 3 <= full.count("paced") <= 8  # every 50 ms (6), each a few ms long
    assert gc.get_threshold() == thresholds

"""Every garbage collection's pause is timed onto /metrics by the generation it collected
(`ownersync_gc_pause_seconds`): the stalls a latency tail is made of."""

from __future__ import annotations

import gc

from services.common.metrics import GcPauseCollector


def test_each_collection_is_timed_on_metrics_by_generation() -> None:
    collector = GcPauseCollector()
    collector.watch()
    collector.watch()  # once only, however often asked
    try:
        gc.collect()
        gc.collect(0)
    finally:
        gc.callbacks.remove(collector._observe)

    assert collector._observe not in gc.callbacks
    samples = {
        (s.name, s.labels.get("generation"), s.labels.get("le")): s.value
        for family in collector.collect()
        for s in family.samples
    }
    assert samples[("ownersync_gc_pause_seconds_count", "2", None)] == 1
    assert samples[("ownersync_gc_pause_seconds_count", "0", None)] == 1
    assert samples[("ownersync_gc_pause_seconds_count", "1", None)] == 0
    assert samples[("ownersync_gc_pause_seconds_bucket", "2", "+Inf")] == 1
    assert 0 < samples[("ownersync_gc_pause_seconds_sum", "2", None)] < 5

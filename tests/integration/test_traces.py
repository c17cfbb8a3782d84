"""The trace context crosses RabbitMQ for real: the publish span's traceparent travels in the
AMQP message headers, and the worker's decision and the relay's AE call on the real Postgres
continue the trace of the SF outbound message."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer, format_span_id, format_trace_id

from services.bootstrap import Running
from services.common.broker.base import QueueRole
from services.common.broker.rabbit import RabbitBroker
from services.common.db.tables import audit_log
from services.common.runtime import build_runtime
from services.common.settings import Settings
from tests.events import sf_record_event
from tests.outbound import Poster
from tests.store import table_rows
from tests.traces import KIM, ancestry, named, reassignment_spans, trace_id_of

pytestmark = pytest.mark.integration

ALICE_SF = "0055g0000Zti3ElAQI"


@pytest.fixture
def poster(spans: InMemorySpanExporter, stack: Running) -> Poster:
    return Poster(stack)


async def test_the_traceparent_of_the_publish_travels_in_the_amqp_headers(
    base_settings: Settings, clean: None, spans: InMemorySpanExporter, tracer: Tracer
) -> None:
    runtime = build_runtime(base_settings)
    broker = runtime.broker
    assert isinstance(broker, RabbitBroker)
    try:
        with tracer.start_as_current_span("receipt"):
            await broker.publish([sf_record_event(KIM, ALICE_SF)])
        consumer = broker.consume(QueueRole.SYNCER, batch_size=1, batch_wait=0.01)
        [delivery] = await anext(consumer)
        await delivery.ack()
        await consumer.aclose()
    finally:
        await runtime.close()

    [publish] = named(spans.get_finished_spans(), f"publish {base_settings.exchange}")
    assert publish.context is not None
    version, trace_id, span_id, flags = delivery.trace["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    assert trace_id == format_trace_id(publish.context.trace_id)
    assert span_id == format_span_id(publish.context.span_id)


async def test_an_sf_reassignment_over_rabbitmq_and_postgres_is_one_trace_to_the_ae_call(
    base_settings: Settings, spans: InMemorySpanExporter, poster: Poster
) -> None:
    finished = await reassignment_spans(poster, spans)
    [receipt] = named(finished, "POST /salesforce/{tenant}/record-reassigned")
    [send] = named(finished, "send ae.prospect.upsert")
    assert ancestry(finished, send) == [
        "send ae.prospect.upsert",
        "process syncer",
        f"publish {base_settings.exchange}",
        "POST /salesforce/{tenant}/record-reassigned",
    ]
    [s5] = [r for r in await table_rows(poster.live, audit_log) if r["rule"] == "S5"]
    assert s5["trace_id"] == trace_id_of(receipt)

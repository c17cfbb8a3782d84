"""One trace from receipt to effect on the service tier: the receiver's server span, the publish
on the in-process broker, the worker's decision and the relay's call to AE or SF all belong to
the trace of the inbound call, and the audit rows of its decisions (and of what the relay
learned) carry its trace id."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Tracer, format_span_id
from sqlalchemy import select

from services.bootstrap import Running
from services.common import tracing
from services.common.broker.base import QueueRole
from services.common.db.tables import audit_log, outbox
from services.common.runtime import Runtime
from services.common.tracing import traceparent
from services.common.worker import process_batch
from services.syncer.worker import apply_sf_events
from tests.events import sf_record_event
from tests.outbound import Poster
from tests.store import table_rows
from tests.traces import ancestry, named, reassignment_spans, trace_id_of
from tests.webhooks import Engagement, engagement_body

LEADS = ("00Q5g0000uon6YDEAY", "00Q5g0000PU3NKlEQN")
ALICE_SF = "0055g0000Zti3ElAQI"


@pytest.fixture
def poster(spans: InMemorySpanExporter, stack: Running) -> Poster:
    return Poster(stack)


@pytest.fixture
def engagement(spans: InMemorySpanExporter, stack: Running) -> Engagement:
    return Engagement(stack)


async def test_an_sf_reassignment_is_one_trace_from_the_outbound_message_to_the_ae_call(
    spans: InMemorySpanExporter, poster: Poster
) -> None:
    finished = await reassignment_spans(poster, spans)
    [receipt] = named(finished, "POST /salesforce/{tenant}/record-reassigned")
    assert receipt.kind is SpanKind.SERVER
    assert receipt.attributes is not None and receipt.attributes["http.response.status_code"] == 200
    [send] = named(finished, "send ae.prospect.upsert")
    assert send.kind is SpanKind.CLIENT
    assert ancestry(finished, send) == [
        "send ae.prospect.upsert",
        "process syncer",
        "publish memory",
        "POST /salesforce/{tenant}/record-reassigned",
    ]
    trace_id = trace_id_of(receipt)
    [s5] = [r for r in await table_rows(poster.live, audit_log) if r["rule"] == "S5"]
    assert s5["trace_id"] == trace_id
    [effect] = [r for r in await table_rows(poster.live, outbox) if r["event_id"] == s5["event_id"]]
    assert effect["traceparent"].split("-")[1] == trace_id


async def test_an_ae_webhook_is_one_trace_from_the_webhook_to_the_sf_call_and_what_it_taught(
    spans: InMemorySpanExporter, engagement: Engagement
) -> None:
    assert await engagement.post(engagement_body("prospect-created-assigned-connected.json")) == 202

    finished = spans.get_finished_spans()
    [receipt] = named(finished, "POST /engagement/{tenant}/events")
    [send] = named(finished, "send sf.record.upsert")
    assert ancestry(finished, send) == [
        "send sf.record.upsert",
        "process assigner",
        "publish memory",
        "POST /engagement/{tenant}/events",
    ]
    trace_id = trace_id_of(receipt)
    record = await engagement.record(9002)
    audit = await table_rows(engagement.live, audit_log)
    rows = [r for r in audit if r["record_id"] == record["id"]]
    a1 = [r for r in rows if r["rule"] == "A1"]
    learned = [r for r in rows if r["rule"] == "RELAY"]
    assert a1 and learned  # the decision, and the SF record id the relay learned
    assert {r["trace_id"] for r in a1 + learned} == {trace_id}


async def test_a_batch_of_several_messages_links_each_and_keeps_each_decision_in_its_own_trace(
    spans: InMemorySpanExporter, tracer: Tracer, runtime: Runtime
) -> None:
    events = [sf_record_event(lead, ALICE_SF) for lead in LEADS]
    for event in events:
        with tracer.start_as_current_span(f"receipt of {event.payload.record_id}"):
            await runtime.broker.publish([event])
    consumer = runtime.broker.consume(QueueRole.SYNCER, batch_size=10, batch_wait=0.05)
    batch = await anext(consumer)
    await consumer.aclose()
    assert len(batch) == 2
    with tracing.processing("syncer", batch):
        await process_batch(runtime.engine, batch, apply_sf_events)

    finished = spans.get_finished_spans()
    [process] = named(finished, "process syncer")
    decisions = named(finished, "decide syncer")
    publishes = named(finished, "publish memory")
    assert process.parent is None
    assert {link.context.span_id for link in process.links} == {
        p.context.span_id for p in publishes if p.context is not None
    }
    assert sorted(ancestry(finished, d) for d in decisions) == [
        ["decide syncer", "publish memory", f"receipt of {lead}"] for lead in sorted(LEADS)
    ]
    async with runtime.engine.connect() as conn:
        audit = {r.event_id: r for r in await conn.execute(select(audit_log))}
        effects = {r.event_id: r for r in await conn.execute(select(outbox))}
    for event in events:
        [receipt] = named(finished, f"receipt of {event.payload.record_id}")
        [decision] = [d for d in decisions if trace_id_of(d) == trace_id_of(receipt)]
        assert decision.context is not None
        assert audit[str(event.event_id)].trace_id == trace_id_of(receipt)
        assert effects[str(event.event_id)].traceparent == traceparent(decision.context)


async def test_an_api_call_continues_its_callers_trace_and_probes_are_not_traced(
    spans: InMemorySpanExporter, stack: Running
) -> None:
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with httpx.AsyncClient(base_url=stack.receiver_url or "") as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/metrics")).status_code == 200
        answer = await http.get(
            "/v1/tenants/acme/records/prospect/9002", headers={"traceparent": caller}
        )
    assert answer.status_code == 401

    [call] = spans.get_finished_spans()  # refused for its key, before routing
    assert call.kind is SpanKind.SERVER and call.parent is not None
    assert trace_id_of(call) == "0af7651916cd43dd8448eb211c80319c"
    assert format_span_id(call.parent.span_id) == "b7ad6b7169203331"
    assert call.attributes is not None
    assert call.attributes["url.path"] == "/v1/tenants/acme/records/prospect/9002"
    assert call.attributes["http.response.status_code"] == 401

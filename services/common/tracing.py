"""OpenTelemetry traces from receipt to effect: HTTP receipt -> publish -> decision -> relay send.

One trace follows an inbound call: the receiver's server span, the publish span whose context
travels in the message headers (W3C `traceparent`, on RabbitMQ and on the in-process broker),
the worker's span for the message's decisions, and the relay's span for the call to AE or SF,
which continues from the `traceparent` stored with the outbox row. A worker's batch of several
messages gets one span linked to each message's trace, and each message a child span in its
own trace. Audit rows carry the trace id of the decision (or relay answer) they record, and
JSON log lines the trace and span ids of the span they were written in.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set:
then no SDK is imported, no tracer provider installed, and every hook here returns at its
first line. With it set, spans are batched and exported over OTLP/HTTP; the standard OTEL_*
variables (service name, headers, sampler, timeouts) apply.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from services.common.broker.base import Delivery

SERVICE_NAME: Final = "ownersync"
ENDPOINT_VARIABLES: Final = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
# The headers of the W3C trace context: what a message carries of its trace.
CARRIED: Final = ("traceparent", "tracestate")
NOTHING: Final[Mapping[str, str]] = {}
# Probes and scrapes: a span each would bury the traces worth reading.
UNTRACED_PATHS: Final = frozenset({"/metrics", "/healthz", "/readyz"})

_propagator = TraceContextTextMapPropagator()
_tracer: Tracer | None = None
# The span context each event of the batch (or relay pass) in hand was decided (or sent) in.
_event_spans: contextvars.ContextVar[Mapping[str, SpanContext] | None] = contextvars.ContextVar(
    "ownersync_event_spans", default=None
)


def enabled() -> bool:
    return _tracer is not None


def configure_tracing(environ: Mapping[str, str] = os.environ) -> bool:
    """Export spans over OTLP when an endpoint is set; otherwise install nothing. Returns
    whether tracing is on."""
    if _tracer is not None:
        return True
    if not any(environ.get(name) for name in ENDPOINT_VARIABLES):
        return False
    # Imported here: with no endpoint the SDK and the exporter are never loaded.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    service = environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    use_provider(provider)
    return True


def use_provider(provider: trace.TracerProvider | None) -> None:
    """Trace with `provider` (tests pass one with an in-memory exporter); None turns it off."""
    global _tracer
    _tracer = provider.get_tracer(SERVICE_NAME) if provider is not None else None


# --- receipt ---------------------------------------------------------------------------


class _ReceiptSpans:
    """ASGI middleware: a server span per HTTP request, named by its route template (never by
    its query string, where the SF endpoint key travels), continuing a caller's traceparent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracer = _tracer
        if tracer is None or scope["type"] != "http" or scope["path"] in UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {
            name: value.decode("latin-1")
            for key, value in scope["headers"]
            if (name := key.decode("latin-1").lower()) in CARRIED
        }
        method = scope["method"]
        with tracer.start_as_current_span(
            method,
            context=_propagator.extract(headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        ) as span:

            async def send_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            try:
                await self.app(scope, receive, send_status)
            finally:
                # The route the router took (none for a call a middleware answered first, such
                # as one refused for its API key: the span keeps the method alone).
                path = getattr(scope.get("route"), "path", None)
                if isinstance(path, str):
                    span.update_name(f"{method} {path}")
                    span.set_attribute("http.route", path)


def instrument_app(app: Starlette) -> None:
    """Give `app` server spans, when tracing is on."""
    if _tracer is not None:
        app.add_middleware(_ReceiptSpans)


# --- the broker ------------------------------------------------------------------------


_NOOP_PUBLISH: Final = contextlib.nullcontext(NOTHING)


def publishing(
    destination: str, events: int
) -> contextlib.AbstractContextManager[Mapping[str, str]]:
    """A producer span around a publish; yields the headers that carry it (none when off)."""
    if _tracer is None:
        return _NOOP_PUBLISH
    return _publishing(_tracer, destination, events)


@contextlib.contextmanager
def _publishing(tracer: Tracer, destination: str, events: int) -> Iterator[Mapping[str, str]]:
    with tracer.start_as_current_span(
        f"publish {destination}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.operation.type": "publish",
            "messaging.destination.name": destination,
            "messaging.batch.message_count": events,
        },
    ):
        carrier: dict[str, str] = {}
        _propagator.inject(carrier)
        yield carrier


def carried(headers: Mapping[str, Any] | None) -> Mapping[str, str]:
    """The trace context a message's headers carry."""
    if _tracer is None or not headers:
        return NOTHING
    return {k: v for k in CARRIED if isinstance(v := headers.get(k), str)}


# --- decisions -------------------------------------------------------------------------


_NOOP: Final = contextlib.nullcontext()


def processing(
    queue: str, deliveries: Sequence[Delivery]
) -> contextlib.AbstractContextManager[None]:
    """The spans of a batch's decisions: one for the batch, current while it is applied. A
    batch of one message continues that message's trace; a batch of several is linked to each
    and gives each a child span in its own trace. Audit and outbox rows written meanwhile take
    the trace of their event's message."""
    if _tracer is None:
        return _NOOP
    return _processing(_tracer, queue, deliveries)


@contextlib.contextmanager
def _processing(tracer: Tracer, queue: str, deliveries: Sequence[Delivery]) -> Iterator[None]:
    parents = [_remote_context(d.trace) for d in deliveries]
    attributes: dict[str, Any] = {
        "messaging.operation.type": "process",
        "messaging.destination.name": queue,
        "messaging.batch.message_count": len(deliveries),
        "ownersync.events": sum(d.size for d in deliveries),
    }
    single = len(deliveries) == 1
    links = [] if single else [Link(s) for p in parents if (s := _span_context(p)).is_valid]
    with tracer.start_as_current_span(
        f"process {queue}",
        context=parents[0] if single else Context(),
        kind=SpanKind.CONSUMER,
        links=links,
        attributes=attributes,
    ) as batch:
        spans: dict[str, SpanContext] = {}
        children = []
        for delivery, parent in zip(deliveries, parents, strict=True):
            span_context = batch.get_span_context()
            if not single and _span_context(parent).is_valid:
                child = tracer.start_span(
                    f"decide {queue}",
                    context=parent,
                    kind=SpanKind.CONSUMER,
                    links=[Link(span_context)],
                    attributes={"messaging.destination.name": queue},
                )
                children.append(child)
                span_context = child.get_span_context()
            for event in delivery.events:
                spans[str(event.event_id)] = span_context
        token = _event_spans.set(spans)
        try:
            yield
        finally:
            _event_spans.reset(token)
            for child in children:
                child.end()


def _remote_context(carrier: Mapping[str, str]) -> Context:
    """The context a carrier continues; with none, a new trace (not the current span's)."""
    return _propagator.extract(carrier, context=Context()) if carrier else Context()


def _span_context(context: Context) -> SpanContext:
    return trace.get_current_span(context).get_span_context()


# --- what the store writes -------------------------------------------------------------


def _of_event(event_id: str | None) -> SpanContext | None:
    if _tracer is None:
        return None
    spans = _event_spans.get()
    found = spans.get(event_id) if spans is not None and event_id is not None else None
    if found is None:
        found = trace.get_current_span().get_span_context()
    return found if found.is_valid else None


def trace_id_for(event_id: str | None) -> str | None:
    """The trace id (32 hex digits) for an audit row of `event_id`: the trace its decision or
    relay answer was made in, else the current span's; None when tracing is off."""
    found = _of_event(event_id)
    return trace.format_trace_id(found.trace_id) if found is not None else None


def traceparent_for(event_id: str | None) -> str | None:
    """The W3C traceparent for an outbox row of `event_id`, which the relay's span continues."""
    found = _of_event(event_id)
    return traceparent(found) if found is not None else None


def traceparent(span_context: SpanContext) -> str:
    return (
        f"00-{trace.format_trace_id(span_context.trace_id)}-"
        f"{trace.format_span_id(span_context.span_id)}-{int(span_context.trace_flags):02x}"
    )


# --- the relay -------------------------------------------------------------------------


def sending(
    stored: str | None, *, target: str, kind: str, tenant: str
) -> contextlib.AbstractContextManager[None]:
    """A client span around the relay's call to AE or SF, continuing the trace stored with the
    outbox row (`stored`, a traceparent)."""
    if _tracer is None:
        return _NOOP
    return _sending(_tracer, stored, target, kind, tenant)


@contextlib.contextmanager
def _sending(
    tracer: Tracer, stored: str | None, target: str, kind: str, tenant: str
) -> Iterator[None]:
    parent = _remote_context({"traceparent": stored} if stored else NOTHING)
    with tracer.start_as_current_span(
        f"send {kind}",
        context=parent,
        kind=SpanKind.CLIENT,
        attributes={"ownersync.target": target, "ownersync.tenant": tenant},
    ):
        yield


def answering(stored: Mapping[str | None, str | None]) -> contextlib.AbstractContextManager[None]:
    """While the relay settles: the audit rows of what it learned about an event's effect take
    the trace stored with that effect (event id -> traceparent)."""
    if _tracer is None:
        return _NOOP
    spans = {
        event_id: context
        for event_id, value in stored.items()
        if event_id is not None
        and value
        and (context := _span_context(_remote_context({"traceparent": value}))).is_valid
    }
    return _answering(spans)


@contextlib.contextmanager
def _answering(spans: Mapping[str, SpanContext]) -> Iterator[None]:
    token = _event_spans.set(spans)
    try:
        yield
    finally:
        _event_spans.reset(token)


# --- logs ------------------------------------------------------------------------------


def log_ids() -> dict[str, str]:
    """The trace and span ids of the current span, for a log line (none outside a span)."""
    if _tracer is None:
        return {}
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    return {
        "trace_id": trace.format_trace_id(span_context.trace_id),
        "span_id": trace.format_span_id(span_context.span_id),
    }

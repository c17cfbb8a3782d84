"""With `OTEL_EXPORTER_OTLP_ENDPOINT` set, a role's start-up installs the SDK and its spans reach
that endpoint over OTLP/HTTP (a collector played here by a loopback server)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.traces import start_afresh

PROBE = """
from opentelemetry import trace
from services.cli.common import load_settings
from services.common import tracing
load_settings()
print(type(trace.get_tracer_provider()).__name__)
with tracing.publishing("ownersync.events", 1) as carrier:
    print(carrier["traceparent"])
trace.get_tracer_provider().shutdown()  # flushes the batch, as at exit
"""


class Collector(ThreadingHTTPServer):
    received: list[tuple[str, str, bytes]]


class _Handler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.received.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector(("127.0.0.1", 0), _Handler)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_spans_are_exported_over_otlp_http_to_the_endpoint_set(
    collector: Collector, tmp_path: Path
) -> None:
    host, port = collector.server_address[:2]
    provider, traceparent = start_afresh(
        PROBE,
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{host!s}:{port}",
        OTEL_SERVICE_NAME="ownersync-relay",
    )
    assert provider == "TracerProvider"

    [(path, content_type, body)] = collector.received
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    export = ExportTraceServiceRequest.FromString(body)
    [resource_spans] = export.resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert service["service.name"] == "ownersync-relay"
    [span] = [s for scope in resource_spans.scope_spans for s in scope.spans]
    assert span.name == "publish ownersync.events"
    assert span.trace_id.hex() == traceparent.split("-")[1]
    assert span.span_id.hex() == traceparent.split("-")[2]

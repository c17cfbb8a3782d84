"""Tracing costs nothing unless an OTLP endpoint is set (tests/service/test_trace_export.py
covers it set), and log lines carry the trace."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from opentelemetry.trace import Tracer, format_span_id, format_trace_id

from services.common import tracing
from services.common.logs import JsonFormatter, TextFormatter
from tests.traces import start_afresh

# What a role's start-up (`load_settings`) leaves installed, in a fresh interpreter.
PROBE = """
import sys
from opentelemetry import trace
from services.cli.common import load_settings
from services.common import tracing
load_settings()
print(type(trace.get_tracer_provider()).__name__)
print(any(m.startswith("opentelemetry.sdk") for m in sys.modules))
print(tracing.enabled())
"""


def test_with_no_endpoint_set_no_sdk_is_loaded_and_no_tracer_provider_installed(
    tmp_path: Path,
) -> None:
    assert start_afresh(PROBE, tmp_path) == ["ProxyTracerProvider", "False", "False"]


def test_off_the_hooks_carry_and_stamp_nothing() -> None:
    assert not tracing.enabled()
    with tracing.publishing("memory", 1) as carrier:
        assert carrier == {}
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert tracing.carried({"traceparent": traceparent}) == {}
    assert tracing.trace_id_for("some-event") is None
    assert tracing.traceparent_for("some-event") is None


def _line() -> dict[str, object]:
    record = logging.makeLogRecord({"name": "ownersync.relay", "levelname": "INFO", "msg": "sent"})
    line: dict[str, object] = json.loads(JsonFormatter().format(record))
    return line


def test_json_log_lines_carry_the_trace_and_span_of_the_current_span(tracer: Tracer) -> None:
    assert "trace_id" not in _line()  # outside any span
    with tracer.start_as_current_span("send") as span:
        line = _line()
    context = span.get_span_context()
    assert line["trace_id"] == format_trace_id(context.trace_id)
    assert line["span_id"] == format_span_id(context.span_id)


def test_text_log_lines_end_with_the_trace_and_span_of_the_current_span(tracer: Tracer) -> None:
    def text() -> str:
        return TextFormatter().format(logging.makeLogRecord({"name": "r", "msg": "sent"}))

    assert "trace_id" not in text()
    with tracer.start_as_current_span("send") as span:
        line = text()
    context = span.get_span_context()
    assert line.endswith(
        f"sent trace_id={format_trace_id(context.trace_id)} "
        f"span_id={format_span_id(context.span_id)}"
    )


def test_a_stored_traceparent_is_continued_by_the_relays_span(tracer: Tracer) -> None:
    with tracer.start_as_current_span("decide") as decided:
        stored = tracing.traceparent_for(None)
    assert stored is not None
    with tracing.sending(stored, target="ae", kind="ae.prospect.upsert", tenant="acme"):
        line = _line()
    assert line["trace_id"] == format_trace_id(decided.get_span_context().trace_id)
    assert line["span_id"] != format_span_id(decided.get_span_context().span_id)

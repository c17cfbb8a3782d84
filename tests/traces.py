"""Recording the spans ownersync makes (the `spans` fixture) and reading a trace back; starting
ownersync afresh to see what it installs.

Request `spans` before the stack (`stack`, or a fixture built on it): the receiver's app is
given its server spans when it is built, if tracing is on by then.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer, format_trace_id

from services.common import tracing
from tests.outbound import Poster, is_ack

REPO = Path(__file__).resolve().parents[1]
KIM = "00Q5g0000ZWHszxEQD"  # the lead of the SF fixtures
BOB_AE = 102  # kim's owner in AE once reassigned


@pytest.fixture
def span_provider() -> Iterator[TracerProvider]:
    """Tracing on for this test, with an SDK provider of its own (no exporter yet)."""
    provider = TracerProvider()
    tracing.use_provider(provider)
    try:
        yield provider
    finally:
        tracing.use_provider(None)
        provider.shutdown()


@pytest.fixture
def spans(span_provider: TracerProvider) -> InMemorySpanExporter:
    """Tracing on for this test, every finished span kept in memory."""
    exporter = InMemorySpanExporter()
    span_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def tracer(span_provider: TracerProvider) -> Tracer:
    """For a test's own spans (a caller's), in the same provider as ownersync's."""
    return span_provider.get_tracer("tests")


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def trace_id_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return format_trace_id(span.context.trace_id)


def ancestry(spans: Sequence[ReadableSpan], span: ReadableSpan) -> list[str]:
    """The names of `span` and of its parents up to the root of its trace, nearest first."""
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    names = [span.name]
    while span.parent is not None:
        parent = by_id.get(span.parent.span_id)
        assert parent is not None, f"the parent of {span.name} was not recorded"
        assert parent.context is not None and span.context is not None
        assert parent.context.trace_id == span.context.trace_id
        names.append(parent.name)
        span = parent
    return names


async def reassignment_spans(poster: Poster, spans: InMemorySpanExporter) -> list[ReadableSpan]:
    """Kim's lead made with a connected owner, then reassigned to bob: the spans of the
    reassignment alone, once AE holds bob as the owner of kim's prospect."""
    await poster.post("lead-created-owner-connected.xml")
    spans.clear()
    assert is_ack(await poster.post("lead-reassigned-connected.xml", "record-reassigned"))
    kim = await poster.record(KIM)
    assert poster.ae_prospect(kim["prospect_id"])["assignedUserId"] == BOB_AE
    return list(spans.get_finished_spans())


def start_afresh(probe: str, cwd: Path, **env: str) -> list[str]:
    """The words `probe` prints, run in a fresh interpreter from `cwd`, with no OTEL_ or
    OWNERSYNC_ variable of this process but those in `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OWNERSYNC_"))}
    run = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=cwd,
        env={**clean, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return run.stdout.split()

"""What the console's search box names, and where a decision's trace link points."""

from __future__ import annotations

from datetime import UTC, datetime

from services.admin.records import search_key
from services.admin.schemas import AuditEntry
from services.common.runtime import Runtime
from services.common.settings import Settings
from services.console.views import trace_url

KIM_15, KIM_18 = "00Q5g0000ZWHszx", "00Q5g0000ZWHszxEQD"


def test_a_search_names_a_prospect_id_a_sf_id_or_an_email() -> None:
    assert search_key(" 5001 ") == ("prospect", 5001)
    assert search_key(KIM_15) == ("sf", KIM_18)
    assert search_key(KIM_18.lower()) == ("sf", KIM_18)
    assert search_key("Kim@Example.com") == ("email", "Kim@Example.com")
    assert search_key("kim") is None
    assert search_key("9" * 30) is None


def _entry(trace_id: str | None) -> AuditEntry:
    return AuditEntry(
        id=1,
        rule="S4",
        reason="r",
        before=None,
        after=None,
        event_id=None,
        event_type=None,
        source_id=None,
        trace_id=trace_id,
        created_at=datetime.now(UTC),
    )


def _runtime(template: str | None) -> Runtime:
    settings = Settings(trace_url_template=template)
    return Runtime(settings=settings, engine=None, broker=None)  # type: ignore[arg-type]


def test_a_traced_decision_links_to_the_trace_url_template_and_nothing_else_does() -> None:
    template = "https://grafana.example/explore?traceId={trace_id}"
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_url(_runtime(template), _entry(trace)) == (
        f"https://grafana.example/explore?traceId={trace}"
    )
    assert trace_url(_runtime(template), _entry(None)) is None
    assert trace_url(_runtime(None), _entry(trace)) is None

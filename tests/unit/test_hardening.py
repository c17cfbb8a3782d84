"""The pure parts of the hardening: operator keys at start, the rate bucket, cursor bounds,
text logs that cannot be forged, and a length bound on every string a caller can send."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr, ValidationError
from typer.testing import CliRunner

from services.admin.errors import Invalid
from services.admin.pagination import decode_cursor, encode_cursor
from services.api import openapi_document
from services.api.guard import RateLimiter
from services.cli import app
from services.common.logs import JsonFormatter, TextFormatter
from services.common.messages import AeProspectEvent, AeWebhook, SfRecordEvent
from services.common.settings import Settings
from services.receiver.soap import SoapFault, parse_outbound_message

SF = Path(__file__).parents[2] / "services/demo/fixtures/salesforce"
REAL_BROKER = "amqp://guest:guest@rabbit:5672/"

# --- operator keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["a", "x" * 31])
def test_an_operator_key_under_32_characters_is_refused(key: str) -> None:
    with pytest.raises(ValidationError, match="needs 32 at least"):
        Settings(operator_key=SecretStr(key))


@pytest.mark.parametrize(
    "key", ["demo-operator-key-long-enough-for-32-chars", "ownersync_DEMO_key_0123456789abcdef"]
)
def test_a_demo_operator_key_is_refused_unless_the_simulators_run(key: str) -> None:
    with pytest.raises(ValidationError, match="demo key"):
        Settings(operator_key=SecretStr(key), amqp_url=REAL_BROKER)
    with pytest.raises(ValidationError, match="demo key"):
        Settings(operator_key=SecretStr(key), use_simulators=False)
    assert Settings(operator_key=SecretStr(key)).simulate  # the embedded default: simulators on
    assert Settings(operator_key=SecretStr(key), amqp_url=REAL_BROKER, use_simulators=True)


def test_a_long_random_operator_key_is_accepted_anywhere() -> None:
    key = "0f" * 16
    assert Settings(operator_key=SecretStr(key), amqp_url=REAL_BROKER).operator_key is not None
    # "demo" inside a word is no demo key.
    assert Settings(operator_key=SecretStr("demonstrably-random-" + key), amqp_url=REAL_BROKER)


def test_the_cli_refuses_to_start_with_a_weak_operator_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OWNERSYNC_OPERATOR_KEY", "demo-operator-key")
    result = CliRunner().invoke(app, ["run"])
    assert result.exit_code == 2
    assert "invalid configuration" in result.output
    assert "needs 32 at least" in result.output


# --- the rate bucket -------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_limiter_allows_a_burst_then_the_rate_per_key() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.wait("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.wait("a") == pytest.approx(0.5)
    assert limiter.wait("b") == 0.0  # another key, another bucket
    clock.now += 0.5
    assert limiter.wait("a") == 0.0
    assert limiter.wait("a") == pytest.approx(0.5)
    clock.now += 60
    assert [limiter.wait("a") for _ in range(4)][-1] > 0  # refills to the burst, no further


# --- cursors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        (2**63, int),
        (10**300, int),
        (-1, int),
        ("\x00", str),
        ("\ud800", str),
        ("é" * 3, str),
        ("k" * 256, str),
        (True, int),
        (1.5, int),
    ],
)
def test_a_cursor_holding_a_key_no_page_can_end_on_is_invalid(key: Any, kind: type) -> None:
    with pytest.raises(Invalid) as refused:
        decode_cursor(encode_cursor(key), kind)
    assert refused.value.code == "invalid_cursor"


def test_cursors_at_the_bounds_still_decode() -> None:
    assert decode_cursor(encode_cursor(2**63 - 1), int) == 2**63 - 1
    assert decode_cursor(encode_cursor(0), int) == 0
    assert decode_cursor(encode_cursor("0055g0000Zti3ElAQI"), str) == "0055g0000Zti3ElAQI"


# --- logs ------------------------------------------------------------------------------------


def _record(**fields: Any) -> logging.LogRecord:
    return logging.makeLogRecord({"name": "ownersync.receiver", "levelname": "WARNING", **fields})


FORGED = "x\n12:00:00 INFO    ownersync: forged\r\u2028\x1b[2J\x85"


def test_text_logs_escape_control_characters_in_messages_and_extras() -> None:
    text = TextFormatter().format(_record(msg="refused for %s", args=(FORGED,), tenant=FORGED))
    assert len(text.splitlines()) == 1
    assert "\\n12:00:00 INFO" in text and "\\x1b" in text and "\\u2028" in text
    assert "\\x85" in text and "\\r" in text


def test_text_log_tracebacks_are_indented_so_no_line_looks_like_a_record() -> None:
    try:
        raise ValueError(FORGED)
    except ValueError:
        record = _record(msg="failed", exc_info=sys.exc_info())
    lines = TextFormatter().format(record).splitlines()
    assert not lines[0].startswith(" ")
    assert all(line.startswith("    ") for line in lines[1:])
    assert len(lines) > 2


def test_json_logs_stay_one_line_with_the_text_as_it_was() -> None:
    line = JsonFormatter().format(_record(msg="refused for %s", args=(FORGED,)))
    assert len(line.splitlines()) == 1
    assert json.loads(line)["msg"] == f"refused for {FORGED}"


# --- every string bounded --------------------------------------------------------------------


def _unbounded_strings(schema: dict[str, Any], definitions: dict[str, Any]) -> list[str]:
    """The places in `schema` where any string, however long, would validate."""
    found: list[str] = []
    seen: set[str] = set()

    def walk(node: Any, where: str) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, where)
            return
        if not isinstance(node, dict):
            return
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            if name not in seen:
                seen.add(name)
                walk(definitions[name], name)
            return
        bounded = {"maxLength", "enum", "const"} & set(node) or node.get("format") in (
            "date-time",
            "date",
            "uuid",
        )
        if node.get("type") == "string" and not bounded:
            found.append(where)
        for key, value in node.items():
            walk(value, f"{where}.{key}")

    walk(schema, "")
    return found


@pytest.mark.parametrize("model", [SfRecordEvent, AeProspectEvent, AeWebhook])
def test_every_string_field_of_the_messages_has_a_length_limit(model: type[BaseModel]) -> None:
    schema = model.model_json_schema()
    assert _unbounded_strings(schema, schema.get("$defs", {})) == []


def test_every_string_a_v1_request_can_carry_has_a_length_limit() -> None:
    document = openapi_document()
    definitions = document["components"]["schemas"]
    unbounded = [
        f"{method.upper()} {path}: {where}"
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        for where in _unbounded_strings(
            {
                "parameters": [p["schema"] for p in operation.get("parameters", [])],
                "body": operation.get("requestBody", {}),
            },
            definitions,
        )
    ]
    assert unbounded == []


def test_an_email_over_254_characters_is_refused_by_the_messages() -> None:
    prospect = {"id": 1, "email": "a" * 245 + "@acme.test"}
    with pytest.raises(ValidationError, match="254"):
        AeWebhook.model_validate(
            {"type": "prospect.created", "occurredAt": "2026-11-02T09:00:00Z", "prospect": prospect}
        )


def test_an_sf_message_with_an_over_long_email_is_a_400_fault() -> None:
    body = (SF / "lead-created-15-char-ids.xml").read_text()
    start, end = body.index("<sf:Email>") + len("<sf:Email>"), body.index("</sf:Email>")
    body = body[:start] + "a" * 245 + "@acme.test" + body[end:]
    with pytest.raises(SoapFault) as fault:
        parse_outbound_message(body.encode())
    assert fault.value.status == 400 and "254" in fault.value.message

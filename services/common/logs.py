"""Logging: one line per event; JSON (for machines) or text (for people), extras included,
and the trace and span ids when tracing is on and the line is logged inside a span.

Messages carry what callers sent (a tenant from the URL path, a header): in text, a control
character in them is escaped, so that `%0a` in a path cannot start a forged log line, and the
lines of a traceback are indented: a line at column 0 is always the start of a record.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from services.common.tracing import log_ids

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# Secrets that travel in URLs (the SF endpoint key): whatever logs a URL, the value never shows.
_URL_SECRET = re.compile(r"([?&](?:key|access_token|client_secret)=)[^&\s\"'<>]*", re.IGNORECASE)


def redact(text: str) -> str:
    return _URL_SECRET.sub(r"\1[redacted]", text)


# C0, DEL, C1 and the Unicode line and paragraph separators: whatever a terminal or a log
# viewer may take for a line break or a control sequence.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escape_control(text: str) -> str:
    return _CONTROL.sub(_escape_char, text)


def _indented(text: str) -> str:
    return "\n".join(f"    {escape_control(line)}" for line in text.splitlines())


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **log_ids(),
            **_extras(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(line, default=str))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        # Not logging.Formatter.format: it caches the traceback text on the record, where
        # another handler's formatter may have left it unindented.
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        fields = {**_extras(record), **log_ids()}
        extras = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        text = self.formatMessage(record)
        lines = [escape_control(f"{text} {extras}" if extras else text)]
        if record.exc_info:
            lines.append(_indented(self.formatException(record.exc_info)))
        elif record.exc_text:
            lines.append(_indented(record.exc_text))
        if record.stack_info:
            lines.append(_indented(self.formatStack(record.stack_info)))
        return redact("\n".join(lines))


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiormq", "aio_pika", "httpx", "uvicorn.access", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

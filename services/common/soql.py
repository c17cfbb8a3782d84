"""SOQL literals as Salesforce reads them in a WHERE clause, so that no value can end a string
early or change the query around it."""

from __future__ import annotations

from datetime import UTC, datetime

# SOQL's escape sequences; a backslash before anything else is an error in Salesforce.
_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    '"': '\\"',
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
}


def quote(text: str) -> str:
    """`text` as a quoted SOQL string literal."""
    return "'" + "".join(_escape(char) for char in text) + "'"


def _escape(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"\\u{ord(char):04x}"
    return char


def datetime_literal(moment: datetime) -> str:
    """A dateTime literal (unquoted, UTC, whole seconds: earlier, never later, than `moment`)."""
    if moment.tzinfo is None:
        raise ValueError("a SOQL dateTime needs a timezone-aware datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

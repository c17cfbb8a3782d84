"""The SOQL the simulator answers: `SELECT f, … FROM Object [WHERE c AND …] [ORDER BY f
[ASC|DESC]] [LIMIT n]`, each condition `Field op literal` with op one of = != <> < <= > >=.
Literals as Salesforce reads them: quoted strings with SOQL's backslash escapes, dateTimes
(unquoted), null, true, false and numbers. Text compares case-insensitively, ids by their
18-character form, as in Salesforce. Anything else is refused (ValueError) rather than guessed.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.common.sfid import InvalidSalesforceId, to18

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^'\\]|\\.)*')
      | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:\d{2}))
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<op><=|>=|!=|<>|=|<|>)
      | (?P<comma>,)
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_ESCAPES = {
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "b": "\b",
    "f": "\f",
    '"': '"',
    "'": "'",
    "\\": "\\",
}
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: Any

    def matches(self, record: dict[str, Any]) -> bool:
        actual = record.get(self.field)
        if self.value is None or actual is None:
            if self.op not in {"=", "!=", "<>"}:
                return False
            return (actual is None and self.value is None) == (self.op == "=")
        compare = _OPERATORS[self.op]
        if isinstance(self.value, datetime):
            return compare(_datetime(str(actual)), self.value)
        if isinstance(self.value, str):
            field = self.field
            return compare(_comparable(field, str(actual)), _comparable(field, self.value))
        return bool(compare(actual, self.value))


@dataclass(frozen=True)
class Query:
    fields: tuple[str, ...]
    sobject: str
    conditions: tuple[Condition, ...] = ()
    order_by: str | None = None
    descending: bool = False
    limit: int | None = None

    @classmethod
    def parse(cls, soql: str) -> Query:
        return _Parser(soql).query()

    def field_names(self) -> set[str]:
        named = {*self.fields, *(c.field for c in self.conditions)}
        return named | ({self.order_by} if self.order_by else set())

    def run(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        found = [r for r in records if all(c.matches(r) for c in self.conditions)]
        if self.order_by is not None:
            by = self.order_by
            found.sort(key=lambda r: (r.get(by) is None, r.get(by) or ""), reverse=self.descending)
        if self.limit is not None:
            found = found[: self.limit]
        return [{name: record.get(name) for name in self.fields} for record in found]


class _Parser:
    def __init__(self, soql: str) -> None:
        self._tokens = list(_tokens(soql))
        self._at = 0

    def query(self) -> Query:
        self._keyword("SELECT")
        fields = [self._word()]
        while self._take("comma"):
            fields.append(self._word())
        self._keyword("FROM")
        sobject = self._word()
        conditions: list[Condition] = []
        if self._take_keyword("WHERE"):
            conditions.append(self._condition())
            while self._take_keyword("AND"):
                conditions.append(self._condition())
        order_by, descending = None, False
        if self._take_keyword("ORDER"):
            self._keyword("BY")
            order_by = self._word()
            descending = self._take_keyword("DESC")
            if not descending:
                self._take_keyword("ASC")
        limit = None
        if self._take_keyword("LIMIT"):
            limit = int(self._expect("number"))
        if self._at != len(self._tokens):
            raise ValueError(f"unexpected token '{self._tokens[self._at][1]}'")
        return Query(tuple(fields), sobject, tuple(conditions), order_by, descending, limit)

    def _condition(self) -> Condition:
        field = self._word()
        op = self._expect("op")
        kind, text = self._next()
        value: Any
        if kind == "string":
            value = _unescape(text[1:-1])
        elif kind == "datetime":
            value = _datetime(text)
        elif kind == "number":
            value = float(text) if "." in text else int(text)
        elif kind == "word" and text.lower() in {"null", "true", "false"}:
            value = {"null": None, "true": True, "false": False}[text.lower()]
        else:
            raise ValueError(f"expected a literal after {field} {op}, got '{text}'")
        return Condition(field, op, value)

    def _next(self) -> tuple[str, str]:
        if self._at >= len(self._tokens):
            raise ValueError("unexpected end of query")
        token = self._tokens[self._at]
        self._at += 1
        return token

    def _expect(self, kind: str) -> str:
        got, text = self._next()
        if got != kind:
            raise ValueError(f"expected {kind}, got '{text}'")
        return text

    def _word(self) -> str:
        return self._expect("word")

    def _take(self, kind: str) -> bool:
        if self._at < len(self._tokens) and self._tokens[self._at][0] == kind:
            self._at += 1
            return True
        return False

    def _take_keyword(self, keyword: str) -> bool:
        if self._at < len(self._tokens):
            kind, text = self._tokens[self._at]
            if kind == "word" and text.upper() == keyword:
                self._at += 1
                return True
        return False

    def _keyword(self, keyword: str) -> None:
        if not self._take_keyword(keyword):
            found = self._tokens[self._at][1] if self._at < len(self._tokens) else "end"
            raise ValueError(f"expected {keyword}, got '{found}'")


def _tokens(soql: str) -> Iterator[tuple[str, str]]:
    at, end = 0, len(soql.rstrip())
    while at < end:
        match = _TOKEN.match(soql, at)
        if match is None or match.lastgroup is None:
            raise ValueError(f"cannot read the query at '{soql[at : at + 20]}'")
        yield match.lastgroup, match.group(match.lastgroup)
        at = match.end()


def _unescape(body: str) -> str:
    out: list[str] = []
    at = 0
    while at < len(body):
        char = body[at]
        if char != "\\":
            out.append(char)
            at += 1
            continue
        escaped = body[at + 1]  # the token's pattern puts a character after every backslash
        code = body[at + 2 : at + 6]
        if escaped.lower() in _ESCAPES:
            out.append(_ESCAPES[escaped.lower()])
            at += 2
        elif escaped == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", code):
            out.append(chr(int(code, 16)))
            at += 6
        else:
            # Salesforce refuses a backslash before anything it does not know.
            raise ValueError(f"invalid escape '\\{escaped}' in a quoted string")
    return "".join(out)


def _datetime(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a dateTime: '{text}'") from None


def _comparable(field: str, text: str) -> str:
    if field == "Id" or field.endswith("Id"):
        try:
            return to18(text)
        except InvalidSalesforceId:
            return text
    return text.casefold()

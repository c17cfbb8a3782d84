"""Keyset pagination: `?limit=&cursor=` in, `{"items": [...], "nextCursor": ...}` out.

The cursor is opaque to callers: the sort key of the last item of the page, base64url JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from pydantic import Field

from services.admin.errors import Invalid
from services.admin.schemas import ApiModel
from services.common.messages import MAX_ID

T = TypeVar("T")
DEFAULT_LIMIT = 100
MAX_LIMIT = 500
# What a sort key can be: ids and offsets are BIGINT, text keys are ids of 64 characters at
# most. A key outside these would reach the database and fail there, as a 500.
_MAX_TEXT_KEY = 255


class Page(ApiModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        None, description="pass as `cursor` to get the next page; null on the last page"
    )


def encode_cursor(key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": key}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, kind: type) -> Any:
    """The sort key a cursor holds (None for the first page); Invalid for anything else."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)["after"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise Invalid("cursor is not one this API gave out", code="invalid_cursor") from None
    if type(key) is not kind or not _in_bounds(key):
        raise Invalid("cursor is not one this API gave out", code="invalid_cursor")
    return key


def _in_bounds(key: Any) -> bool:
    if isinstance(key, int):
        return 0 <= key <= MAX_ID
    if isinstance(key, str):
        # Printable ASCII only: Postgres refuses NUL and Python cannot encode lone surrogates.
        return len(key) <= _MAX_TEXT_KEY and key.isascii() and key.isprintable()
    return False


def page_of(
    rows: Sequence[Any], limit: int, key: Callable[[Any], Any], view: Callable[[Any], T]
) -> Page[T]:
    """`rows` were fetched with `limit + 1`: the extra row only says whether more follow."""
    more = len(rows) > limit
    rows = rows[:limit]
    return Page[T](
        items=[view(r) for r in rows],
        next_cursor=encode_cursor(key(rows[-1])) if more and rows else None,
    )

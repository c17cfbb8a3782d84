"""What every /v1 route shares: the transaction, the clock, paging parameters, path ids."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Path, Query
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin.pagination import DEFAULT_LIMIT, MAX_LIMIT
from services.admin.schemas import SfQueueId, SfRecordId, SfUserId
from services.common.messages import MAX_ID
from services.common.runtime import Runtime


@contextlib.asynccontextmanager
async def transaction(runtime: Runtime) -> AsyncIterator[AsyncConnection]:
    """The route owns the transaction: committed when the service call returns, rolled back
    when it raises."""
    async with runtime.engine.begin() as conn:
        yield conn


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Paging:
    limit: int
    cursor: str | None


def paging(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="items per page")] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        Query(max_length=500, pattern=r"^[A-Za-z0-9_-]+$", description="`nextCursor` of a page"),
    ] = None,
) -> Paging:
    return Paging(limit, cursor)


AeUserPath = Annotated[int, Path(ge=1, le=MAX_ID, description="AE user id")]
GroupPath = Annotated[int, Path(ge=1, le=MAX_ID, description="AE group id")]
ProspectPath = Annotated[int, Path(ge=1, le=MAX_ID, description="AE prospect id")]
SfUserPath = Annotated[SfUserId, Path()]
SfQueuePath = Annotated[SfQueueId, Path()]
SfRecordPath = Annotated[SfRecordId, Path()]
KeyIdPath = Annotated[str, Path(max_length=32, pattern=r"^[0-9a-f]{16}$")]
DeadLetterPath = Annotated[
    str, Path(max_length=64, pattern=r"^[A-Za-z0-9-]+$", description="the dead letter's id")
]

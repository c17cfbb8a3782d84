"""What kind of failure an exception is, so that the workers know what to do with the message.

- INFRASTRUCTURE: the database or the broker is away (connection refused or lost, a timeout,
  a server shutting down). Nothing is wrong with the message: hold it and try again, without
  spending its deliveries.
- RETRYABLE: two transactions raced (a unique or foreign-key violation, a deadlock, a
  serialization failure, a lock or statement timeout). The same message very likely applies a
  moment later: retry it after a delay, and dead-letter it only when that keeps failing.
- POISON: anything else. The message itself is the problem: requeue it up to the delivery limit,
  then dead-letter it with the reason.

The exception is looked at with everything it wraps (SQLAlchemy's `orig`, `__cause__`,
`__context__`), since drivers and pools wrap each other's errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from enum import StrEnum

import aiormq.exceptions
import asyncpg.exceptions
import sqlalchemy.exc

from services.common.broker.base import BrokerUnavailable


class Failure(StrEnum):
    INFRASTRUCTURE = "infrastructure"
    RETRYABLE = "retryable"
    POISON = "poison"


# SQLSTATE classes and codes (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_INFRASTRUCTURE_STATES = ("08", "53", "57P01", "57P02", "57P03", "58")
_RETRYABLE_STATES = ("23", "40001", "40P01", "55P03", "57014")

# Channel errors that say the topology or the rights are wrong: no retry repairs them.
_AMQP_CONFIGURATION = (
    aiormq.exceptions.ChannelPreconditionFailed,
    aiormq.exceptions.ChannelNotFoundEntity,
    aiormq.exceptions.ChannelAccessRefused,
    aiormq.exceptions.ProbableAuthenticationError,
    aiormq.exceptions.AuthenticationError,
)
_INFRASTRUCTURE_TYPES = (
    BrokerUnavailable,
    ConnectionError,  # refused, reset, aborted; aiormq's connection errors are ones too
    TimeoutError,  # asyncio.timeout, asyncpg's command_timeout and connect timeout
    asyncio.IncompleteReadError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,  # "connection is closed", "connection was closed …"
    aiormq.exceptions.ChannelInvalidStateError,  # acting on a channel the broker closed
    aiormq.exceptions.AMQPChannelError,
    sqlalchemy.exc.DisconnectionError,
    sqlalchemy.exc.TimeoutError,  # the pool had no connection to give in time
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps, each once."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        todo.extend(
            [
                current.__context__,
                current.__cause__,
                orig if isinstance(orig, BaseException) else None,
            ]
        )


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return state if isinstance(state, str) else None


def classify(exc: BaseException) -> Failure:
    """What kind of failure `exc` is (see the module docstring)."""
    chain = list(_chain(exc))
    if any(isinstance(e, _AMQP_CONFIGURATION) for e in chain):
        return Failure.POISON
    for e in chain:
        if isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated:
            return Failure.INFRASTRUCTURE
        state = _sqlstate(e)
        if state is not None and state.startswith(_INFRASTRUCTURE_STATES):
            return Failure.INFRASTRUCTURE
    for e in chain:
        state = _sqlstate(e)
        if state is not None and state.startswith(_RETRYABLE_STATES):
            return Failure.RETRYABLE
        if isinstance(e, sqlalchemy.exc.IntegrityError):
            return Failure.RETRYABLE
    if any(isinstance(e, _INFRASTRUCTURE_TYPES) for e in chain):
        return Failure.INFRASTRUCTURE
    # Other OS errors on a worker's path are socket errors ("Connect call failed", no route).
    if any(type(e) is OSError for e in chain):
        return Failure.INFRASTRUCTURE
    return Failure.POISON


def is_infrastructure(exc: BaseException) -> bool:
    return classify(exc) is Failure.INFRASTRUCTURE

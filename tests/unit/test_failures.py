"""Which failures hold a batch (infrastructure), go through the delayed retry (lost races),
or spend the message's deliveries (poison)."""

from __future__ import annotations

import asyncpg.exceptions
import pytest
import sqlalchemy.exc
from aiormq.exceptions import (
    AMQPConnectionError,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    ConnectionClosed,
)

from services.common.broker.base import BrokerUnavailable
from services.common.failures import Failure, classify, is_infrastructure


class _DriverError(Exception):
    """What SQLAlchemy's asyncpg adapter raises: the SQLSTATE in `sqlstate`."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"driver error {sqlstate}")
        self.sqlstate = sqlstate


def _wrapped(driver: BaseException, kind: type[sqlalchemy.exc.DBAPIError]) -> BaseException:
    return kind("INSERT …", {}, driver)


def _caused_by(cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise RuntimeError("while applying the batch") from inner
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)"),
        ConnectionResetError(104, "Connection reset by peer"),
        OSError("Multiple exceptions: [Errno 111] Connect call failed"),
        TimeoutError(),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.InterfaceError("connection is closed"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        _wrapped(_DriverError("57P01"), sqlalchemy.exc.OperationalError),  # admin shutdown
        _wrapped(_DriverError("08006"), sqlalchemy.exc.OperationalError),  # connection failure
        _wrapped(_DriverError("53300"), sqlalchemy.exc.OperationalError),  # too many clients
        sqlalchemy.exc.TimeoutError("QueuePool limit reached"),
        BrokerUnavailable("RabbitMQ unreachable"),
        AMQPConnectionError("connection lost"),
        ConnectionClosed(320, "CONNECTION_FORCED"),
        ChannelInvalidStateError("channel closed"),
        _caused_by(ConnectionRefusedError(111, "refused")),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_lost_database_or_broker_is_infrastructure(exc: BaseException) -> None:
    assert classify(exc) is Failure.INFRASTRUCTURE
    assert is_infrastructure(exc)


def test_a_statement_on_an_invalidated_connection_is_infrastructure() -> None:
    exc = sqlalchemy.exc.DBAPIError(
        "SELECT 1", {}, Exception("closed"), connection_invalidated=True
    )
    assert classify(exc) is Failure.INFRASTRUCTURE


@pytest.mark.parametrize(
    "exc",
    [
        _wrapped(_DriverError("23505"), sqlalchemy.exc.IntegrityError),  # unique violation
        _wrapped(_DriverError("23503"), sqlalchemy.exc.IntegrityError),  # foreign key
        sqlalchemy.exc.IntegrityError("INSERT …", {}, Exception("duplicate key")),
        _wrapped(_DriverError("40P01"), sqlalchemy.exc.DBAPIError),  # deadlock
        _wrapped(_DriverError("40001"), sqlalchemy.exc.DBAPIError),  # serialization failure
        _wrapped(_DriverError("55P03"), sqlalchemy.exc.OperationalError),  # lock not available
        _wrapped(_DriverError("57014"), sqlalchemy.exc.OperationalError),  # statement timeout
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
    ],
    ids=lambda e: f"{type(e).__name__}-{getattr(getattr(e, 'orig', e), 'sqlstate', '')}",
)
def test_a_lost_race_is_retryable(exc: BaseException) -> None:
    assert classify(exc) is Failure.RETRYABLE
    assert not is_infrastructure(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad payload"),
        KeyError("owner"),
        RuntimeError("a bug"),
        _wrapped(_DriverError("22001"), sqlalchemy.exc.DataError),  # value too long
        _wrapped(_DriverError("42P01"), sqlalchemy.exc.ProgrammingError),  # no such table
        ChannelPreconditionFailed("PRECONDITION_FAILED - inequivalent arg"),
        ChannelNotFoundEntity("NOT_FOUND - no queue"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_anything_else_is_poison(exc: BaseException) -> None:
    assert classify(exc) is Failure.POISON


def test_a_configuration_error_of_the_broker_is_poison_even_when_wrapped() -> None:
    # A wrong topology is not repaired by waiting: the role must fail, not hold forever.
    assert classify(_caused_by(ChannelPreconditionFailed("inequivalent arg"))) is Failure.POISON

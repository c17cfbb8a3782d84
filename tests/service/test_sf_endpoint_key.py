"""The SF endpoint authenticates: the outbound-message URL carries the tenant's endpoint key.

A forged message (no key, a wrong key, another tenant's key, an unknown tenant) gets the same
401 fault and leaves nothing behind; a key rotated with a grace period lets SF switch over; a
SystemModstamp from the future is refused; the key never reaches a log line.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from services.admin.schemas import TenantCreate
from services.admin.tenants import create_tenant, rotate_endpoint_key
from services.bootstrap import Running
from services.common.endpoints import SfAction
from services.common.logs import configure_logging
from services.common.sfid import to18
from services.sim.embedded import wait_until_idle
from tests.endpoints import ACME_ENDPOINT_KEY, sf_path
from tests.store import table_counts

SOAP_HEADERS = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
GLOBEX_ORG = to18("00D5g0000GLOBEX")
GLOBEX_CONNECTOR = to18("0055g0000GLOBEX")


@pytest.fixture
def message(fixtures_dir: Path) -> bytes:
    return (fixtures_dir / "salesforce/lead-created-owner-connected.xml").read_bytes()


async def _post(live: Running, path: str, body: bytes) -> httpx.Response:
    async with httpx.AsyncClient(base_url=live.receiver_url or "") as http:
        return await http.post(path, content=body, headers=SOAP_HEADERS)


async def _globex(live: Running) -> str:
    """A second tenant with a key of its own."""
    async with live.runtime.engine.begin() as conn:
        created = await create_tenant(
            conn,
            TenantCreate.model_validate(
                {"id": "globex", "salesforceOrgId": GLOBEX_ORG, "connectorUserId": GLOBEX_CONNECTOR}
            ),
            datetime.now(UTC),
        )
    return created.salesforce_endpoint_key


async def test_forged_messages_get_the_same_401_and_leave_nothing_behind(
    stack: Running, message: bytes
) -> None:
    globex_key = await _globex(stack)
    before = await table_counts(stack)
    forged = {
        "no key": sf_path("record-created", key=None),
        "a wrong key": sf_path("record-created", key="osek_" + "x" * 43),
        "another tenant's key": sf_path("record-created", key=globex_key),
        "an unknown tenant": sf_path("record-created", tenant="nobody"),
        "an unknown tenant, no key": sf_path("record-created", tenant="nobody", key=None),
    }
    answers = {name: await _post(stack, path, message) for name, path in forged.items()}
    for name, response in answers.items():
        assert response.status_code == 401, name
        assert "<soapenv:Fault>" in response.text, name
    assert len({r.text for r in answers.values()}) == 1, "every refusal must read the same"
    assert "endpoint key" in next(iter(answers.values())).text
    await asyncio.sleep(0.3)  # anything published would have been applied by now
    assert await table_counts(stack) == before
    depths = await stack.runtime.broker.queue_depths()
    assert not any(depths.values()), depths


async def test_message_with_the_tenant_key_is_acked(stack: Running, message: bytes) -> None:
    response = await _post(stack, sf_path("record-created"), message)
    assert response.status_code == 200, response.text
    await wait_until_idle(stack, settled=1)
    assert (await table_counts(stack))["inbox"] == 1


async def test_rotated_key_works_at_once_and_the_old_one_during_its_grace(
    stack: Running, message: bytes
) -> None:
    path: SfAction = "record-created"
    assert (await _post(stack, sf_path(path), message)).status_code == 200  # cached now
    async with stack.runtime.engine.begin() as conn:
        rotated = await rotate_endpoint_key(
            conn, "acme", grace=timedelta(hours=1), now=datetime.now(UTC)
        )
    new_key = rotated.salesforce_endpoint_key
    assert rotated.previous_endpoint_key_expires_at is not None
    assert (await _post(stack, sf_path(path, key=new_key), message)).status_code == 200
    assert (await _post(stack, sf_path(path, key=ACME_ENDPOINT_KEY), message)).status_code == 200


async def test_key_rotated_with_no_grace_refuses_the_old_key(
    stack: Running, message: bytes
) -> None:
    globex_key = await _globex(stack)
    async with stack.runtime.engine.begin() as conn:
        rotated = await rotate_endpoint_key(
            conn, "globex", grace=timedelta(0), now=datetime.now(UTC)
        )
    assert rotated.previous_endpoint_key_expires_at is None
    old = await _post(stack, sf_path("record-created", "globex", globex_key), message)
    assert old.status_code == 401
    new = sf_path("record-created", "globex", rotated.salesforce_endpoint_key)
    # The key is right, the org is not globex's: authenticated, then refused for the org.
    assert (await _post(stack, new, message)).status_code == 403


def _refused(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "ownersync_events_refused_total", {"source": "salesforce", "reason": reason}
    )
    return value or 0.0


async def test_system_modstamp_from_the_future_is_refused_and_counted(
    stack: Running, message: bytes
) -> None:
    ahead = (datetime.now(UTC) + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    future = re.sub(rb"<sf:SystemModstamp>[^<]+<", f"<sf:SystemModstamp>{ahead}<".encode(), message)
    assert future != message
    counted = _refused("from_the_future")
    response = await _post(stack, sf_path("record-created"), future)
    assert response.status_code == 400
    assert "ahead of this receiver's clock" in response.text
    assert _refused("from_the_future") == counted + 1
    assert (await table_counts(stack))["inbox"] == 0


async def test_modstamp_a_little_ahead_is_clock_skew_and_accepted(
    stack: Running, message: bytes
) -> None:
    ahead = (datetime.now(UTC) + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    skewed = re.sub(rb"<sf:SystemModstamp>[^<]+<", f"<sf:SystemModstamp>{ahead}<".encode(), message)
    assert (await _post(stack, sf_path("record-created"), skewed)).status_code == 200


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_endpoint_key_never_reaches_a_log_line(
    stack: Running, message: bytes, fmt: str, capfd: pytest.CaptureFixture[str]
) -> None:
    assert ACME_ENDPOINT_KEY
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("DEBUG", fmt)
    logging.getLogger("httpx").setLevel(logging.DEBUG)  # an operator debugging HTTP calls
    try:
        await _post(stack, sf_path("record-created"), message)
        await _post(stack, sf_path("record-created", key=ACME_ENDPOINT_KEY + "x"), message)
        await wait_until_idle(stack, settled=1)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        logging.getLogger("httpx").setLevel(logging.NOTSET)
    logged = capfd.readouterr().err
    assert "record-created?key=[redacted]" in logged, "the URL was logged, without its key"
    assert ACME_ENDPOINT_KEY not in logged

"""The SF and AE simulators served on loopback for a test, and an AE client to them."""

from __future__ import annotations

import contextlib

from services.common.ae_client import AeClient
from services.common.runtime import Runtime
from services.common.sf_auth import SfTokenSource
from services.sim.embedded import EmbeddedAe, start_ae, start_sf


async def ae_client_on_sims(
    runtime: Runtime, unit: str, stack: contextlib.AsyncExitStack
) -> tuple[EmbeddedAe, AeClient]:
    """SF and AE for `runtime`'s tenant (AE trusting SF's tokens) until `stack` closes, and an
    AE client for business unit `unit` making one try per call: what a test sees of retries is
    the relay's own, not the client's."""
    sf = await start_sf(runtime, stack)
    assert sf is not None and sf.state.client_secret is not None
    ae = await start_ae(runtime, stack, trusted=sf, business_unit_id=unit)
    tokens = await stack.enter_async_context(
        SfTokenSource(sf.url, sf.state.client_id, sf.state.client_secret)
    )
    client = await stack.enter_async_context(AeClient(ae.url, tokens, unit, max_attempts=1))
    return ae, client

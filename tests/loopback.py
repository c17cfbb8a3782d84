"""HTTP clients of the servers the tests start on loopback."""

from __future__ import annotations

import ssl

import httpx

# Building a TLS context loads the CA bundle: ~40 ms of CPU per client, for servers that speak
# plain HTTP. One context for every client.
_TLS = ssl.create_default_context()


def loopback_client(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, verify=_TLS)

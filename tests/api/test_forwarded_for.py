"""Client addresses behind a reverse proxy: `X-Forwarded-For` is believed only on a
listener marked `x_forwarded: true`, so per-address limits key on the client there and
nobody can pick their own address elsewhere."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from starling.api.http import make_web_app
from starling.app import build_listener_app
from starling.config import Listener, ListenerResource
from tests.support.harness import Harness


async def _remote(request: web.Request) -> web.Response:
    return web.json_response({"remote": request.remote})


@asynccontextmanager
async def _echo_client(x_forwarded: bool) -> AsyncIterator[TestClient]:
    app = make_web_app(1024, x_forwarded=x_forwarded)
    app.router.add_get("/remote", _remote)
    async with TestClient(TestServer(app)) as client:
        yield client


async def _remote_seen(client: TestClient, headers: dict[str, str]) -> str:
    r = await client.get("/remote", headers=headers)
    remote: str = (await r.json())["remote"]
    return remote


async def test_forwarded_for_is_read_only_where_configured() -> None:
    header = {"X-Forwarded-For": "203.0.113.7"}
    async with _echo_client(x_forwarded=False) as client:
        assert await _remote_seen(client, header) == "127.0.0.1"
    async with _echo_client(x_forwarded=True) as client:
        assert await _remote_seen(client, header) == "203.0.113.7"
        # The proxy appends the address it saw: earlier entries are the client's claim.
        spoofed = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}
        assert await _remote_seen(client, spoofed) == "203.0.113.7"
        assert await _remote_seen(client, {"X-Forwarded-For": "2001:db8::1"}) == "2001:db8::1"
        # Garbage or nothing: the peer's address.
        assert await _remote_seen(client, {"X-Forwarded-For": "not-an-ip"}) == "127.0.0.1"
        assert await _remote_seen(client, {}) == "127.0.0.1"


@pytest.fixture
def hs_config() -> dict[str, Any]:
    return {
        "allow_guest_access": True,
        "rc_registration": {"per_second": 0.0001, "burst_count": 1},
    }


async def _register_guest(client: TestClient, ip: str) -> int:
    r = await client.post(
        "/_matrix/client/v3/register?kind=guest", json={}, headers={"X-Forwarded-For": ip}
    )
    return r.status


@pytest.mark.parametrize("x_forwarded", [True, False])
async def test_per_address_limits_key_on_the_forwarded_address(
    hs: Harness, x_forwarded: bool
) -> None:
    listener = Listener(
        port=0, x_forwarded=x_forwarded, resources=[ListenerResource(names=["client"])]
    )
    app = build_listener_app(hs.services, listener)
    async with TestClient(TestServer(app)) as client:
        assert await _register_guest(client, "203.0.113.1") == 200
        assert await _register_guest(client, "203.0.113.1") == 429
        # Another client behind the same proxy has its own allowance - only when the
        # listener trusts the proxy.
        expected = 200 if x_forwarded else 429
        assert await _register_guest(client, "203.0.113.2") == expected

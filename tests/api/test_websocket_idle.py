"""1000 idle authenticated WebSockets are held at once (issue #16), and the server still
serves: a new socket and plain HTTP both answer while they are open."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from starling.api.client.websocket import WS_PATH
from tests.api.test_websocket import WAIT, frame
from tests.support.harness import UNLIMITED_ROOM_RATES, Harness

SOCKETS = 1000


@pytest.fixture
def hs_config() -> dict[str, Any]:
    # (The harness's runner has no per-address connection cap; `starling serve`'s does,
    # 1000 by default: http_limits.max_connections_per_ip.)
    return UNLIMITED_ROOM_RATES


async def test_thousand_idle_sockets(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    url = hs.client.make_url(WS_PATH)
    headers = {"Authorization": f"Bearer {tok}"}
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sockets: list[aiohttp.ClientWebSocketResponse] = []
        try:
            for batch in range(0, SOCKETS, 100):
                opened = await asyncio.gather(
                    *(session.ws_connect(url, headers=headers) for _ in range(100))
                )
                sockets += opened
                hellos = await asyncio.gather(*(frame(ws) for ws in opened))
                assert all(h["type"] == "authenticated" for h in hellos), batch
            assert len(sockets) == SOCKETS and not any(ws.closed for ws in sockets)
            # The server still answers, over HTTP and over one of the idle sockets.
            status, _ = await hs.request("GET", "/_matrix/client/v3/account/whoami", tok)
            assert status == 200
            probe = sockets[SOCKETS // 2]
            await probe.send_json(
                {
                    "type": "request",
                    "id": "p",
                    "method": "GET",
                    "path": "/_matrix/client/v3/account/whoami",
                }
            )
            answer = await frame(probe)
            assert answer["id"] == "p" and answer["status"] == 200
        finally:
            await asyncio.wait_for(
                asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True), WAIT * 3
            )
    assert time.monotonic() - started < 120

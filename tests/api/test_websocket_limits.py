"""The WebSocket transport's limits come from the `websocket:` configuration."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import WSMsgType

from tests.api.test_websocket import WAIT, connect, frame
from tests.support.harness import UNLIMITED_ROOM_RATES, Harness


@pytest.fixture
def hs_config() -> dict[str, Any]:
    return {**UNLIMITED_ROOM_RATES, "websocket": {"max_in_flight": 2, "max_message_size": "2K"}}


async def test_configured_limits(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    status, body = await hs.request("GET", "/_matrix/client/v3/sync", tok)
    assert status == 200
    ws = await connect(hs, tok)
    for i in range(3):
        await ws.send_json(
            {
                "type": "request",
                "id": f"s{i}",
                "method": "GET",
                "path": f"/_matrix/client/v3/sync?timeout=20000&since={body['next_batch']}",
            }
        )
    got = await frame(ws)
    assert got["type"] == "error" and got["errcode"] == "M_LIMIT_EXCEEDED" and got["id"] == "s2"
    await ws.send_str("x" * 2049)
    for _ in range(5):
        closing = await ws.receive(timeout=WAIT)
        if closing.type is WSMsgType.CLOSE:
            break
    assert ws.close_code == 1009

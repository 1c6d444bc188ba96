"""Ephemeral messages (MSC2228, `enable_ephemeral_messages`): a message with
org.matrix.self_destruct_after is readable until then and censored (content {}) after it;
other messages and state events are left alone. Both engines."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from tests.support.harness import Harness

V3 = "/_matrix/client/v3"


@pytest.fixture
def hs_config() -> dict[str, Any]:
    return {"enable_ephemeral_messages": True}


async def test_self_destructing_messages_are_censored_when_due(hs: Harness) -> None:
    ephemeral = hs.services.ephemeral_messages
    assert ephemeral is not None
    clock = [10_000]
    ephemeral._clock_ms = lambda: clock[0]  # the expiry job's clock, moved by hand
    _, token = await hs.register()
    room = await hs.create_room(token)

    async def send(txn: str, content: dict[str, Any]) -> str:
        status, body = await hs.request(
            "PUT", f"{V3}/rooms/{room}/send/m.room.message/{txn}", token, content
        )
        assert status == 200, body
        event_id: str = body["event_id"]
        return event_id

    async def content(event_id: str) -> dict[str, Any]:
        status, body = await hs.request("GET", f"{V3}/rooms/{room}/event/{quote(event_id)}", token)
        assert status == 200, body
        got: dict[str, Any] = body["content"]
        return got

    soon = await send("1", {"msgtype": "m.text", "body": "gone soon", SELF: 20_000})
    later = await send("2", {"msgtype": "m.text", "body": "gone later", SELF: 30_000})
    kept = await send("3", {"msgtype": "m.text", "body": "stays", SELF: "20000"})  # not a time
    await ephemeral.settle()
    assert await ephemeral.expire_due() == 0
    assert (await content(soon))["body"] == "gone soon"
    clock[0] = 20_000
    assert await ephemeral.expire_due() == 1
    assert await content(soon) == {}
    assert (await content(later))["body"] == "gone later"
    clock[0] = 40_000
    assert await ephemeral.expire_due() == 1
    assert await content(later) == {}
    assert (await content(kept))["body"] == "stays"
    status, page = await hs.request("GET", f"{V3}/rooms/{room}/messages?dir=b&limit=10", token)
    assert status == 200, page
    bodies = [e["content"].get("body") for e in page["chunk"] if e["type"] == "m.room.message"]
    assert bodies == ["stays", None, None]


SELF = "org.matrix.self_destruct_after"

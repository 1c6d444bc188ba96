"""Two real `starling serve` processes over TLS (both engines): to-device messages cross
servers both ways, exactly once and in order, even when the receiving server is down
when they are sent and restarts after receiving them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.federation.harness import FederatedServer, User, eventually, federation_servers

V3 = "/_matrix/client/v3"


async def send_to_device(
    server: FederatedServer, user: User, txn: str, target: User, content: dict[str, Any]
) -> None:
    status, body = await server.client_request(
        "PUT",
        f"{V3}/sendToDevice/m.room.encrypted/{txn}",
        user.token,
        {"messages": {target.user_id: {target.device_id: content}}},
    )
    assert status == 200, body


class Inbox:
    """A device's to-device events as its /sync sees them, following next_batch."""

    def __init__(self, server: FederatedServer, user: User) -> None:
        self.server = server
        self.user = user
        self.since: str | None = None
        self.events: list[dict[str, Any]] = []

    async def sync(self) -> None:
        params = {"timeout": "0"}
        if self.since is not None:
            params["since"] = self.since
        status, body = await self.server.client_request(
            "GET", f"{V3}/sync", self.user.token, params=params
        )
        assert status == 200, body
        self.since = body["next_batch"]
        self.events.extend(body.get("to_device", {}).get("events", []))

    async def has(self, count: int) -> bool:
        await self.sync()
        return len(self.events) >= count


async def test_to_device_crosses_exactly_once_across_restarts(engine: str, tmp_path: Path) -> None:
    async with federation_servers(tmp_path, 2, engine=engine) as (a, b):
        alice = await a.register("alice")
        bob = await b.register("bob")
        bob_inbox = Inbox(b, bob)
        alice_inbox = Inbox(a, alice)
        await bob_inbox.sync()
        await alice_inbox.sync()

        # b is down while alice sends: a keeps the messages and delivers them later.
        await asyncio.to_thread(b.stop)
        await send_to_device(a, alice, "t1", bob, {"n": 1})
        await send_to_device(a, alice, "t2", bob, {"n": 2})
        await asyncio.to_thread(b.start)
        await eventually(lambda: bob_inbox.has(2), timeout=60, what="to-device on b")
        assert [(e["sender"], e["type"], e["content"]) for e in bob_inbox.events] == [
            (alice.user_id, "m.room.encrypted", {"n": 1}),
            (alice.user_id, "m.room.encrypted", {"n": 2}),
        ]

        # The other way.
        await send_to_device(b, bob, "r1", alice, {"reply": 1})
        await eventually(lambda: alice_inbox.has(1), what="to-device on a")
        assert [e["content"] for e in alice_inbox.events] == [{"reply": 1}]

        # b restarts after receiving them; a restarts too. Nothing arrives twice, and
        # later messages still arrive, in order.
        await b.restart()
        await a.restart()
        await send_to_device(a, alice, "t3", bob, {"n": 3})
        await eventually(lambda: bob_inbox.has(3), timeout=60, what="the third message")
        await bob_inbox.sync()
        assert [e["content"] for e in bob_inbox.events] == [{"n": 1}, {"n": 2}, {"n": 3}]
        await alice_inbox.sync()
        assert [e["content"] for e in alice_inbox.events] == [{"reply": 1}]

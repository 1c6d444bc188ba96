"""Two real `starling serve` processes over TLS (both engines): typing notifications,
read receipts (threaded; private ones stay home) and presence cross servers both ways."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.federation.harness import FederatedServer, User, eventually, federation_servers

V3 = "/_matrix/client/v3"


async def ephemeral(server: FederatedServer, user: User, room_id: str) -> list[dict[str, Any]]:
    status, body = await server.client_request(
        "GET", f"{V3}/sync", user.token, params={"timeout": "0"}
    )
    assert status == 200, body
    room = body.get("rooms", {}).get("join", {}).get(room_id, {})
    events: list[dict[str, Any]] = room.get("ephemeral", {}).get("events", [])
    return events


async def typing_users(server: FederatedServer, user: User, room_id: str) -> list[str]:
    for event in await ephemeral(server, user, room_id):
        if event["type"] == "m.typing":
            users: list[str] = event["content"]["user_ids"]
            return users
    return []


async def receipts(server: FederatedServer, user: User, room_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for event in await ephemeral(server, user, room_id):
        if event["type"] == "m.receipt":
            found.update(event["content"])
    return found


async def set_typing(server: FederatedServer, user: User, room_id: str, typing: bool) -> None:
    status, body = await server.client_request(
        "PUT",
        f"{V3}/rooms/{quote(room_id)}/typing/{quote(user.user_id)}",
        user.token,
        {"typing": typing, "timeout": 20_000} if typing else {"typing": False},
    )
    assert status == 200, body


async def post_receipt(
    server: FederatedServer, user: User, room_id: str, kind: str, event_id: str
) -> None:
    status, body = await server.client_request(
        "POST",
        f"{V3}/rooms/{quote(room_id)}/receipt/{kind}/{quote(event_id)}",
        user.token,
        {"thread_id": "main"},
    )
    assert status == 200, body


async def test_typing_receipts_and_presence_cross_both_ways(engine: str, tmp_path: Path) -> None:
    async with federation_servers(tmp_path, 2, engine=engine) as (a, b):
        alice = await a.register("alice")
        bob = await b.register("bob")
        room_id = await a.create_room(alice, preset="public_chat")
        assert await b.join(bob, room_id, via=[a.server_name]) == room_id
        first = await a.send_message(alice, room_id, "one")
        second = await a.send_message(alice, room_id, "two")

        async def b_has(event_id: str) -> bool:
            return any(e["event_id"] == event_id for e in await b.messages(bob, room_id))

        await eventually(lambda: b_has(second), what="alice's messages on b")

        # Typing, a to b and b to a, then stopping.
        await set_typing(a, alice, room_id, True)

        async def bob_sees_alice_typing() -> bool:
            return alice.user_id in await typing_users(b, bob, room_id)

        await eventually(bob_sees_alice_typing, what="alice typing on b")
        await set_typing(b, bob, room_id, True)

        async def alice_sees_bob_typing() -> bool:
            return bob.user_id in await typing_users(a, alice, room_id)

        await eventually(alice_sees_bob_typing, what="bob typing on a")
        await set_typing(a, alice, room_id, False)

        async def alice_stopped() -> bool:
            return alice.user_id not in await typing_users(b, bob, room_id)

        await eventually(alice_stopped, what="alice stopped typing on b")

        # Receipts: bob's private one stays on b, his public one reaches a with its thread.
        await post_receipt(b, bob, room_id, "m.read.private", second)
        await post_receipt(b, bob, room_id, "m.read", first)

        async def alice_sees_bobs_receipt() -> bool:
            got = await receipts(a, alice, room_id)
            return bob.user_id in got.get(first, {}).get("m.read", {})

        await eventually(alice_sees_bobs_receipt, what="bob's receipt on a")
        got = await receipts(a, alice, room_id)
        assert got[first]["m.read"][bob.user_id]["thread_id"] == "main"
        assert bob.user_id not in got.get(second, {}).get("m.read.private", {})
        assert bob.user_id not in got.get(second, {}).get("m.read", {})

        await post_receipt(a, alice, room_id, "m.read", second)

        async def bob_sees_alices_receipt() -> bool:
            got = await receipts(b, bob, room_id)
            return alice.user_id in got.get(second, {}).get("m.read", {})

        await eventually(bob_sees_alices_receipt, what="alice's receipt on b")

        # Presence: alice's status reaches bob on b, bob's reaches alice on a.
        for server, user, text in ((a, alice, "lunch"), (b, bob, "busy")):
            status, body = await server.client_request(
                "PUT",
                f"{V3}/presence/{quote(user.user_id)}/status",
                user.token,
                {"presence": "unavailable", "status_msg": text},
            )
            assert status == 200, body

        def presence_of(
            server: FederatedServer, observer: User, user: User, text: str
        ) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                status, body = await server.client_request(
                    "GET", f"{V3}/presence/{quote(user.user_id)}/status", observer.token
                )
                assert status == 200, body
                return body.get("presence") == "unavailable" and body.get("status_msg") == text

            return check

        await eventually(presence_of(b, bob, alice, "lunch"), what="alice's presence on b")
        await eventually(presence_of(a, alice, bob, "busy"), what="bob's presence on a")

"""The room-extras streams through the real /sync: registration, tokens, long-polls."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.extras.helpers import V3, shared_room
from tests.support.harness import Harness
from tests.sync.helpers import sync


def room(response: dict[str, Any], room_id: str) -> dict[str, Any]:
    joined: dict[str, Any] = response["rooms"]["join"][room_id]
    return joined


def ephemeral_types(response: dict[str, Any], room_id: str) -> list[str]:
    return [e["type"] for e in room(response, room_id).get("ephemeral", {}).get("events", [])]


async def test_extensions_are_registered(hs: Harness) -> None:
    names = {e.stream_name for e in hs.services.sync.extensions}
    assert {"typing", "receipts", "account_data", "presence", "unread_counts"} <= names
    # Unread counts come after the extensions that add rooms.
    order = [e.stream_name for e in hs.services.sync.extensions]
    assert order.index("unread_counts") > max(
        order.index(n) for n in ("typing", "receipts", "account_data")
    )


async def test_typing_and_receipts_through_sync(hs: Harness) -> None:
    alice, alice_token, bob, bob_token, room_id = await shared_room(hs)
    # set_presence=offline: bob's own presence does not end the long-polls early.
    first = await sync(hs, bob_token, set_presence="offline")
    since = first["next_batch"]
    assert room(first, room_id)["unread_notifications"] == {
        "notification_count": 0,
        "highlight_count": 0,
    }

    # Let other streams settle (device lists move after joins), then long-poll: it
    # wakes up for alice's typing.
    since = (await sync(hs, bob_token, since, set_presence="offline"))["next_batch"]
    poll = asyncio.create_task(sync(hs, bob_token, since, timeout=10_000, set_presence="offline"))
    await asyncio.sleep(0.05)
    status, _ = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/typing/{alice}", alice_token, {"typing": True}
    )
    assert status == 200
    got = await asyncio.wait_for(poll, 5)
    # Another stream (e.g. device lists, written just after the joins) may end the first
    # poll before the typing notification: poll on, boundedly, until it arrives.
    for _ in range(5):
        if room_id in got["rooms"].get("join", {}):
            break
        got = await asyncio.wait_for(
            sync(hs, bob_token, got["next_batch"], timeout=2_000, set_presence="offline"), 5
        )
    typing = [e for e in room(got, room_id)["ephemeral"]["events"] if e["type"] == "m.typing"]
    assert typing == [{"type": "m.typing", "content": {"user_ids": [alice]}}]
    since = got["next_batch"]

    event_id = await hs.send_message(alice_token, room_id, "hi bob")
    got = await sync(hs, bob_token, since, set_presence="offline")
    assert room(got, room_id)["unread_notifications"]["notification_count"] == 1
    since = got["next_batch"]
    status, _ = await hs.request(
        "POST", f"{V3}/rooms/{room_id}/receipt/m.read/{event_id}", bob_token, {}
    )
    assert status == 200
    got = await sync(hs, bob_token, since, set_presence="offline")
    assert "m.receipt" in ephemeral_types(got, room_id)
    assert room(got, room_id)["unread_notifications"]["notification_count"] == 0
    # alice sees bob's receipt too.
    got = await sync(hs, alice_token)
    receipts = [e for e in room(got, room_id)["ephemeral"]["events"] if e["type"] == "m.receipt"]
    assert bob in receipts[0]["content"][event_id]["m.read"]


async def test_account_data_and_presence_through_sync(hs: Harness) -> None:
    alice, alice_token, bob, bob_token, room_id = await shared_room(hs)
    first = await sync(hs, bob_token, set_presence="offline")
    since = first["next_batch"]
    await hs.request("PUT", f"{V3}/user/{bob}/account_data/org.example.a", bob_token, {"a": 1})
    await hs.request(
        "PUT", f"{V3}/user/{bob}/rooms/{room_id}/tags/m.favourite", bob_token, {"order": 0.5}
    )
    got = await sync(hs, bob_token, since, set_presence="offline")
    assert {"type": "org.example.a", "content": {"a": 1}} in got["account_data"]["events"]
    assert room(got, room_id)["account_data"]["events"] == [
        {"type": "m.tag", "content": {"tags": {"m.favourite": {"order": 0.5}}}}
    ]
    since = got["next_batch"]
    # alice syncing makes her online; bob, sharing a room, sees it.
    await sync(hs, alice_token)
    got = await sync(hs, bob_token, since, set_presence="offline")
    presence = {e["sender"]: e["content"] for e in got["presence"]["events"]}
    assert presence[alice]["presence"] == "online"
    # A filter can leave presence out.
    got = await sync(
        hs, bob_token, since, set_presence="offline", filter={"presence": {"not_types": ["*"]}}
    )
    assert "presence" not in got or not got["presence"].get("events")

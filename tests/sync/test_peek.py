"""Peeking into world-readable rooms (MSC2753): POST /peek, rooms.peek in /sync."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import pytest

from tests.support.harness import Harness
from tests.sync.helpers import V3, join, leave, set_state, settled_token, sync, timeline_bodies


async def world_readable_room(hs: Harness, token: str, **body: Any) -> str:
    room_id = await hs.create_room(token, **body)
    await set_state(
        hs, token, room_id, "m.room.history_visibility", {"history_visibility": "world_readable"}
    )
    return room_id


async def peek(hs: Harness, token: str, target: str) -> tuple[int, Any]:
    return await hs.request("POST", f"{V3}/peek/{target}", token, {})


async def second_device(hs: Harness, user_id: str) -> str:
    store = hs.services.account_store
    await store.upsert_device(user_id, "DEV2", None)
    token = secrets.token_urlsafe(24)
    await store.add_access_token(token, user_id, "DEV2")
    return token


async def test_peek_sends_the_room_whole_then_what_changed(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    _, btok = await hs.register("bob")
    room_id = await world_readable_room(hs, atok)
    since = await settled_token(hs, btok)
    status, body = await peek(hs, btok, room_id)
    assert status == 200, body
    assert body == {"room_id": room_id}
    await hs.send_message(atok, room_id, "something to peek")

    first = await sync(hs, btok, since=since)
    assert first["rooms"]["join"] == {}
    room = first["rooms"]["peek"][room_id]
    events = room["timeline"]["events"]
    # The room's current state is anyone's to read in a world-readable room, so its
    # creation shows although history before world_readable was "shared".
    assert events[0]["type"] == "m.room.create"
    assert timeline_bodies(room) == ["something to peek"]
    assert room["timeline"]["limited"] is False
    assert room["state"]["events"] == []

    second = await sync(hs, btok, since=first["next_batch"])
    assert room_id not in second.get("rooms", {}).get("peek", {})

    await hs.send_message(atok, room_id, "something else")
    third = await sync(hs, btok, since=second["next_batch"])
    room = third["rooms"]["peek"][room_id]
    assert timeline_bodies(room) == ["something else"]
    assert [e["type"] for e in room["timeline"]["events"]] == ["m.room.message"]


async def test_initial_sync_of_a_peeking_device_has_the_room(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    _, btok = await hs.register("bob")
    room_id = await world_readable_room(hs, atok)
    await hs.send_message(atok, room_id, "hello")
    assert (await peek(hs, btok, room_id))[0] == 200
    body = await sync(hs, btok)
    assert timeline_bodies(body["rooms"]["peek"][room_id]) == ["hello"]


async def test_superseded_state_from_before_world_readable_stays_hidden(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    _, btok = await hs.register("bob")
    room_id = await hs.create_room(atok, preset="private_chat")
    await set_state(hs, atok, room_id, "m.room.topic", {"topic": "secret plans"})
    await hs.send_message(atok, room_id, "members only")
    await set_state(hs, atok, room_id, "m.room.topic", {"topic": "public"})
    await set_state(
        hs, atok, room_id, "m.room.history_visibility", {"history_visibility": "world_readable"}
    )
    await hs.send_message(atok, room_id, "for everyone")
    assert (await peek(hs, btok, room_id))[0] == 200
    room = (await sync(hs, btok))["rooms"]["peek"][room_id]
    topics = [
        e["content"]["topic"] for e in room["timeline"]["events"] if e["type"] == "m.room.topic"
    ]
    assert topics == ["public"]
    assert timeline_bodies(room) == ["for everyone"]


@pytest.mark.parametrize("visibility", ["shared", "invited", "joined"])
async def test_cannot_peek_into_a_room_that_is_not_world_readable(
    hs: Harness, visibility: str
) -> None:
    _, atok = await hs.register("alice")
    _, btok = await hs.register("bob")
    room_id = await hs.create_room(atok)
    await set_state(
        hs, atok, room_id, "m.room.history_visibility", {"history_visibility": visibility}
    )
    status, body = await peek(hs, btok, room_id)
    assert status == 403, body
    assert body["errcode"] == "M_FORBIDDEN"
    assert "peek" not in (await sync(hs, btok))["rooms"]


async def test_peek_into_an_unknown_room_or_alias_is_404(hs: Harness) -> None:
    _, btok = await hs.register("bob")
    status, body = await peek(hs, btok, f"!nowhere:{hs.server_name}")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND", body
    status, body = await peek(hs, btok, f"%23nowhere:{hs.server_name}")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND", body
    status, body = await peek(hs, btok, "not-a-room")
    assert status == 400, body


async def test_peek_by_alias(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    _, btok = await hs.register("bob")
    room_id = await world_readable_room(hs, atok, room_alias_name="peekable")
    status, body = await peek(hs, btok, f"%23peekable:{hs.server_name}")
    assert status == 200, body
    assert body["room_id"] == room_id
    await hs.send_message(atok, room_id, "via alias")
    room = (await sync(hs, btok))["rooms"]["peek"][room_id]
    assert timeline_bodies(room) == ["via alias"]


async def test_only_the_peeking_device_sees_the_room(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    btok2 = await second_device(hs, bob)
    room_id = await world_readable_room(hs, atok)
    since2 = await settled_token(hs, btok2)
    assert (await peek(hs, btok, room_id))[0] == 200
    await hs.send_message(atok, room_id, "hi")
    assert room_id in (await sync(hs, btok))["rooms"]["peek"]
    assert "peek" not in (await sync(hs, btok2))["rooms"]
    assert "peek" not in (await sync(hs, btok2, since=since2))["rooms"]


async def test_unpeek_and_device_deletion_end_the_peek(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    room_id = await world_readable_room(hs, atok)
    assert (await peek(hs, btok, room_id))[0] == 200
    since = (await sync(hs, btok))["next_batch"]
    status, body = await hs.request("POST", f"{V3}/rooms/{room_id}/unpeek", btok, {})
    assert status == 200, body
    await hs.send_message(atok, room_id, "after unpeek")
    body = await sync(hs, btok, since=since)
    assert "peek" not in body["rooms"]
    assert "peek" not in (await sync(hs, btok))["rooms"]

    btok2 = await second_device(hs, bob)
    assert (await peek(hs, btok2, room_id))[0] == 200
    assert await hs.services.peeks.peeked_rooms(bob, "DEV2")
    await hs.services.accounts.delete_devices(bob, ["DEV2"])
    assert await hs.services.peeks.peeked_rooms(bob, "DEV2") == {}


async def test_joining_moves_the_room_to_join_and_ends_the_peek(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    room_id = await world_readable_room(hs, atok, preset="public_chat")
    assert (await peek(hs, btok, room_id))[0] == 200
    since = (await sync(hs, btok))["next_batch"]
    await join(hs, btok, room_id)
    body = await sync(hs, btok, since=since)
    assert room_id in body["rooms"]["join"]
    assert room_id not in body["rooms"].get("peek", {})
    for _ in range(50):  # the peek ends after the join commits (a listener)
        if not await hs.services.peeks.peeked_rooms(bob, "DEV"):
            break
        await asyncio.sleep(0.02)
    assert await hs.services.peeks.peeked_rooms(bob, "DEV") == {}
    await leave(hs, btok, room_id)
    await hs.send_message(atok, room_id, "after leaving")
    assert "peek" not in (await sync(hs, btok))["rooms"]


async def test_room_no_longer_world_readable_ends_the_peek(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    room_id = await world_readable_room(hs, atok)
    assert (await peek(hs, btok, room_id))[0] == 200
    since = (await sync(hs, btok))["next_batch"]
    await set_state(
        hs, atok, room_id, "m.room.history_visibility", {"history_visibility": "shared"}
    )
    await hs.send_message(atok, room_id, "members only now")
    body = await sync(hs, btok, since=since)
    assert room_id not in body["rooms"].get("peek", {})
    for _ in range(50):
        if not await hs.services.peeks.peeked_rooms(bob, "DEV"):
            break
        await asyncio.sleep(0.02)
    assert await hs.services.peeks.peeked_rooms(bob, "DEV") == {}


async def test_long_poll_woken_by_a_message_in_a_peeked_room(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    _, btok = await hs.register("bob")
    room_id = await world_readable_room(hs, atok)
    assert (await peek(hs, btok, room_id))[0] == 200
    since = await settled_token(hs, btok)

    async def later() -> None:
        await asyncio.sleep(0.2)
        await hs.send_message(atok, room_id, "wake up")

    task = asyncio.create_task(later())
    start = time.monotonic()
    body = await sync(hs, btok, since=since, timeout=10000)
    await task
    assert time.monotonic() - start < 5
    assert timeline_bodies(body["rooms"]["peek"][room_id]) == ["wake up"]


async def test_long_poll_woken_by_the_peek(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    _, btok = await hs.register("bob")
    room_id = await world_readable_room(hs, atok)
    since = await settled_token(hs, btok)

    async def later() -> None:
        await asyncio.sleep(0.2)
        assert (await peek(hs, btok, room_id))[0] == 200

    task = asyncio.create_task(later())
    body = await sync(hs, btok, since=since, timeout=10000)
    await task
    assert room_id in body["rooms"]["peek"]

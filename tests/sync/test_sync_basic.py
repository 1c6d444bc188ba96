"""/sync: initial and incremental syncs, timelines, state, long-polling."""

from __future__ import annotations

import asyncio
import time

from tests.support.harness import Harness
from tests.sync.helpers import V3, invite, join, settled_token, sync, timeline_bodies


async def test_initial_sync_has_rooms_timeline_and_state(hs: Harness) -> None:
    _alice, tok = await hs.register("alice")
    room_id = await hs.create_room(tok, name="Room", preset="private_chat")
    await hs.send_message(tok, room_id, "hello")
    body = await sync(hs, tok)
    assert body["next_batch"].startswith("s")
    room = body["rooms"]["join"][room_id]
    assert timeline_bodies(room) == ["hello"]
    events = room["timeline"]["events"]
    assert all("room_id" not in e for e in events)
    types = [e["type"] for e in events] + [e["type"] for e in room["state"]["events"]]
    assert "m.room.create" in types and "m.room.name" in types
    # State and timeline don't overlap.
    state_ids = {e["event_id"] for e in room["state"]["events"]}
    assert not state_ids & {e["event_id"] for e in events}
    assert room["summary"]["m.joined_member_count"] == 1
    assert room["timeline"]["prev_batch"].startswith("t")


async def test_incremental_sync_only_new_events(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    first = await sync(hs, tok)
    await hs.send_message(tok, room_id, "one")
    second = await sync(hs, tok, since=first["next_batch"])
    room = second["rooms"]["join"][room_id]
    assert timeline_bodies(room) == ["one"]
    assert room["timeline"]["limited"] is False
    assert room["state"]["events"] == []
    third = await sync(hs, tok, since=second["next_batch"])
    assert room_id not in third["rooms"]["join"]


async def test_long_poll_woken_by_other_users_message(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    _bob, btok = await hs.register("bob")
    room_id = await hs.create_room(atok, preset="public_chat")
    await join(hs, btok, room_id)
    since = await settled_token(hs, atok)

    async def later() -> None:
        await asyncio.sleep(0.2)
        await hs.send_message(btok, room_id, "wake up")

    task = asyncio.create_task(later())
    start = time.monotonic()
    body = await sync(hs, atok, since=since, timeout=10000)
    elapsed = time.monotonic() - start
    await task
    assert elapsed < 2, elapsed
    assert timeline_bodies(body["rooms"]["join"][room_id]) == ["wake up"]


async def test_long_poll_times_out_empty(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    await hs.create_room(tok)
    since = await settled_token(hs, tok)
    start = time.monotonic()
    body = await sync(hs, tok, since=since, timeout=300)
    assert time.monotonic() - start >= 0.25
    assert body["rooms"]["join"] == {}
    assert body["next_batch"] == since


async def test_long_poll_woken_by_invite(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    room_id = await hs.create_room(atok)
    since = await settled_token(hs, btok)

    async def later() -> None:
        await asyncio.sleep(0.2)
        await invite(hs, atok, room_id, bob)

    task = asyncio.create_task(later())
    start = time.monotonic()
    body = await sync(hs, btok, since=since, timeout=10000)
    await task
    assert time.monotonic() - start < 2
    assert room_id in body["rooms"]["invite"]


async def test_malformed_params_are_400(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    for params in (
        {"since": "garbage"},
        {"since": "s12~typing"},
        {"since": "sabc"},
        {"timeout": "soon"},
        {"timeout": "-5"},
        {"full_state": "maybe"},
        {"set_presence": "dancing"},
        {"filter": "{not json"},
        {"filter": "12345"},
        {"filter": "abc"},
        {"filter": '{"room": {"timeline": {"limit": "ten"}}}'},
        {"filter": '{"room": {"rooms": ["not-a-room"]}}'},
        {"filter": '{"event_format": "xml"}'},
        {"filter": '{"room": {"timeline": {"limit": -1}}}'},
        {"filter": "[1, 2]"},
    ):
        status, body = await hs.request("GET", f"{V3}/sync", tok, params=params)
        assert status == 400, (params, body)
        assert body["errcode"].startswith("M_"), body
    status, body = await hs.request("GET", f"{V3}/sync", None)
    assert status == 401


async def test_timeline_limit_zero_gives_state_only(hs: Harness) -> None:
    # Clients ask for this to load rooms without history (Synapse serves it).
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    await hs.send_message(tok, room_id, "hi")
    status, body = await hs.request(
        "GET",
        f"{V3}/sync",
        tok,
        params={
            "filter": '{"room": {"timeline": {"limit": 0}, "state": {"types": ["m.room.member"]}}}'
        },
    )
    assert status == 200, body
    room = body["rooms"]["join"][room_id]
    assert room["timeline"]["events"] == [] and room["timeline"]["limited"] is True
    assert [e["type"] for e in room["state"]["events"]] == ["m.room.member"]

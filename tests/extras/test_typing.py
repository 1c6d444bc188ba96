"""Typing notifications: the endpoint, its errors, and m.typing through the extension."""

from __future__ import annotations

import asyncio
import time

from starling.typing.service import TypingService
from tests.extras.helpers import V3, contribute, ephemeral, join, shared_room
from tests.support.harness import Harness


def typing_path(room_id: str, user_id: str) -> str:
    return f"{V3}/rooms/{room_id}/typing/{user_id}"


async def test_typing_reaches_other_member_and_stops(hs: Harness) -> None:
    alice, alice_token, bob, bob_token, room_id = await shared_room(hs)
    typing = hs.services.typing
    _, _, since = await contribute(hs, typing, bob, None)

    status, _ = await hs.request(
        "PUT", typing_path(room_id, alice), alice_token, {"typing": True, "timeout": 20000}
    )
    assert status == 200
    response, added, since = await contribute(hs, typing, bob, since)
    assert added
    assert ephemeral(response, room_id, "m.typing") == [
        {"type": "m.typing", "content": {"user_ids": [alice]}}
    ]

    # Renewing does not move the stream: nothing new for bob.
    await hs.request(
        "PUT", typing_path(room_id, alice), alice_token, {"typing": True, "timeout": 20000}
    )
    response, added, since = await contribute(hs, typing, bob, since)
    assert not added and response == {}

    await hs.request("PUT", typing_path(room_id, alice), alice_token, {"typing": False})
    response, added, _ = await contribute(hs, typing, bob, since)
    assert ephemeral(response, room_id, "m.typing")[0]["content"] == {"user_ids": []}

    # An initial sync shows the rooms whose typing changed since the server started,
    # even when nobody types any more (as Synapse): a client starting over learns that
    # what it may have shown stopped (SyTest "Typing can be explicitly stopped").
    response, added, _ = await contribute(hs, typing, bob, None)
    assert added
    assert ephemeral(response, room_id, "m.typing") == [
        {"type": "m.typing", "content": {"user_ids": []}}
    ]
    # A room where nobody ever typed has no m.typing.
    other = await hs.create_room(alice_token, preset="public_chat")
    await join(hs, bob_token, other)
    response, _, _ = await contribute(hs, typing, bob, None)
    assert ephemeral(response, other, "m.typing") == []


async def test_typing_expires(hs: Harness) -> None:
    alice, alice_token, bob, _, room_id = await shared_room(hs)
    typing = hs.services.typing
    await hs.request(
        "PUT", typing_path(room_id, alice), alice_token, {"typing": True, "timeout": 50}
    )
    _, _, since = await contribute(hs, typing, bob, None)
    assert typing.typing_users(room_id) == [alice]
    await asyncio.sleep(0.2)
    assert typing.typing_users(room_id) == []
    response, added, _ = await contribute(hs, typing, bob, since)
    assert added
    assert ephemeral(response, room_id, "m.typing")[0]["content"] == {"user_ids": []}


async def test_typing_stops_on_leave(hs: Harness) -> None:
    _alice, _alice_token, bob, bob_token, room_id = await shared_room(hs)
    await hs.request("PUT", typing_path(room_id, bob), bob_token, {"typing": True})
    assert hs.services.typing.typing_users(room_id) == [bob]
    status, _ = await hs.request("POST", f"{V3}/rooms/{room_id}/leave", bob_token, {})
    assert status == 200
    assert hs.services.typing.typing_users(room_id) == []


async def test_typing_errors(hs: Harness) -> None:
    alice, alice_token, _bob, bob_token, room_id = await shared_room(hs)
    carol, carol_token = await hs.register()
    path = typing_path(room_id, alice)
    # Someone else's typing state.
    status, body = await hs.request("PUT", path, bob_token, {"typing": True})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    # Not in the room.
    status, body = await hs.request(
        "PUT", typing_path(room_id, carol), carol_token, {"typing": True}
    )
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    for bad in ({}, {"typing": "yes"}, {"typing": True, "timeout": "30"}):
        status, body = await hs.request("PUT", path, alice_token, bad)
        assert status == 400, bad
    status, body = await hs.request("PUT", path, alice_token, {"typing": True, "timeout": -1})
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
    status, _ = await hs.request("PUT", path, alice_token, raw=b"not json")
    assert status == 400
    status, body = await hs.request("PUT", path, None, {"typing": True})
    assert status == 401


async def test_typing_timeout_is_capped(hs: Harness) -> None:
    alice, alice_token, _, _, room_id = await shared_room(hs)
    status, _ = await hs.request(
        "PUT", typing_path(room_id, alice), alice_token, {"typing": True, "timeout": 10**9}
    )
    assert status == 200
    typing = hs.services.typing
    until = typing._typing[room_id][alice]
    assert until - typing._clock() <= 30.0


async def test_token_from_before_a_restart_misses_nothing(hs: Harness) -> None:
    """Typing lives in memory, so a restart starts the stream afresh; a token the previous
    process gave must not hide what changes after the restart (no stream may have a gap
    across a crash: see tests/crash)."""
    alice, alice_token, bob, bob_token, room_a = await shared_room(hs)
    room_b = await hs.create_room(alice_token, preset="public_chat")
    await join(hs, bob_token, room_b)
    old = hs.services.typing
    for _ in range(3):  # the old process: three changes in room A
        old.started(room_a, alice, 20000)
        old.stopped(room_a, alice)
    _, _, old_since = await contribute(hs, old, bob, None)

    # The new process starts (at least) a second later.
    restarted = TypingService(
        hs.services.membership_store, hs.services.notifier, wall_clock=lambda: time.time() + 1
    )
    try:
        # After the restart: alice types in room B, then room A changes a few times.
        restarted.started(room_b, alice, 20000)
        for _ in range(6):
            restarted.started(room_a, alice, 20000)
            restarted.stopped(room_a, alice)
        response, added, _ = await contribute(hs, restarted, bob, old_since)
    finally:
        restarted.close()
    assert added
    assert ephemeral(response, room_b, "m.typing") == [
        {"type": "m.typing", "content": {"user_ids": [alice]}}
    ]

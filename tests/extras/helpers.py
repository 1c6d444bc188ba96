"""Shared helpers for the room-extras tests."""

from __future__ import annotations

from typing import Any

from starling.sync.extension import SyncContext
from tests.support.harness import Harness

V3 = "/_matrix/client/v3"


async def contribute(
    hs: Harness,
    ext: Any,
    user_id: str,
    since: int | None,
    filter: dict[str, Any] | None = None,
    set_presence: str | None = "offline",
) -> tuple[dict[str, Any], bool, int]:
    """Run one SyncExtension for a user, as the sync service would (by default with
    set_presence=offline, which leaves presence alone); returns (response, ended the
    long-poll, the position to use as the next `since`)."""
    upto = ext.current_position()
    rooms = frozenset(await hs.services.membership_store.get_joined_rooms(user_id))
    ctx = SyncContext(
        user_id=user_id,
        device_id="DEV",
        since=since,
        upto=upto,
        joined_rooms=rooms,
        filter=filter or {},
        set_presence=set_presence,
    )
    response: dict[str, Any] = {}
    added = await ext.contribute(ctx, response)
    return response, added, upto


def ephemeral(response: dict[str, Any], room_id: str, event_type: str) -> list[dict[str, Any]]:
    room = response.get("rooms", {}).get("join", {}).get(room_id, {})
    return [e for e in room.get("ephemeral", {}).get("events", []) if e["type"] == event_type]


async def join(hs: Harness, token: str, room_id: str) -> None:
    status, body = await hs.request("POST", f"{V3}/join/{room_id}", token, {})
    assert status == 200, body


async def shared_room(hs: Harness) -> tuple[str, str, str, str, str]:
    """Two users in one public room: (alice, alice_token, bob, bob_token, room_id)."""
    alice, alice_token = await hs.register()
    bob, bob_token = await hs.register()
    room_id = await hs.create_room(alice_token, preset="public_chat")
    await join(hs, bob_token, room_id)
    return alice, alice_token, bob, bob_token, room_id

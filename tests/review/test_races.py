"""Concurrent requests that used to collide: each must succeed on its own, never a 500."""

from __future__ import annotations

import asyncio

from starling.rooms.builder import EventBuilder
from tests.support.harness import Harness

V3 = "/_matrix/client/v3"


async def test_concurrent_create_room_by_one_user_makes_distinct_rooms(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    # Freeze the clock: every create event gets the same origin_server_ts, the worst case
    # of several requests in one millisecond.
    builder = hs.services.room_events._builder
    assert isinstance(builder, EventBuilder)
    builder._clock = lambda: 1_700_000_000_000
    body = {"room_version": "12", "preset": "private_chat"}
    results = await asyncio.gather(
        *(hs.request("POST", f"{V3}/createRoom", tok, body) for _ in range(4))
    )
    assert [s for s, _ in results] == [200] * 4, results
    room_ids = {r["room_id"] for _, r in results}
    assert len(room_ids) == 4
    for room_id in room_ids:
        state = await hs.services.room_events.current_state_ids(room_id)
        assert ("m.room.create", "") in state and ("m.room.power_levels", "") in state

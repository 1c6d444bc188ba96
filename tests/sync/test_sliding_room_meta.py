"""Sliding sync's per-room facts (RoomMetaCache: room type, encrypted) are cached, and a
look-up that overlapped the room's encryption being turned on must not cache the older
answer: the room would read as unencrypted (to `is_encrypted` filters) until evicted."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

from starling.storage.memberships import Membership
from starling.sync.sliding.room_list import RoomMetaCache

ROOM = "!room:test.local"
CREATE = ("m.room.create", "")
ENCRYPTION = ("m.room.encryption", "")


class _State:
    """The room's current state; the first read is held after it has read."""

    def __init__(self) -> None:
        self.entries = {CREATE: "$create"}
        self.read, self.release = asyncio.Event(), asyncio.Event()
        self.calls = 0

    async def current_state_of_types(
        self, room_ids: Sequence[str], types: Sequence[str]
    ) -> dict[str, dict[tuple[str, str], str]]:
        self.calls += 1
        answer = {ROOM: dict(self.entries)}
        if self.calls == 1:
            self.read.set()
            await self.release.wait()
        return answer


class _Events:
    async def get_events(self, ids: Sequence[str]) -> dict[str, Any]:
        return {i: SimpleNamespace(content={}) for i in ids}


async def test_a_look_up_overlapping_encryption_is_not_cached() -> None:
    state = _State()
    meta = RoomMetaCache(cast(Any, state), cast(Any, _Events()))
    member = {ROOM: Membership(ROOM, "@a:test.local", "join", "$join", 1)}

    early = asyncio.ensure_future(meta.get(member))
    await asyncio.wait_for(state.read.wait(), 10)
    state.entries[ENCRYPTION] = "$encryption"
    meta.on_state_change(ROOM, {ENCRYPTION: "$encryption"}, 2)
    state.release.set()
    assert not (await asyncio.wait_for(early, 10))[ROOM].encrypted

    assert (await meta.get(member))[ROOM].encrypted
    assert (await meta.get(member))[ROOM].encrypted
    assert state.calls == 2  # the second answer was cached

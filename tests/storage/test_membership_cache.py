"""The rooms of a user (MembershipStore.get_rooms_for_user, what every /sync reads) are
cached; a read that began before the user's new membership committed must not cache its
older rows after the commit dropped them, or /sync leaves the new room out until the
next membership change. (SyTest's "Previously left rooms don't appear in the leave
section of sync" timed out on it: two createRooms of one user racing two /syncs.)"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.harness import Harness
from tests.support.holds import hold_first_call


async def test_a_rooms_read_from_before_a_join_is_not_cached(
    hs: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, tok = await hs.register("alice")
    store = hs.services.membership_store
    hold = hold_first_call(
        monkeypatch,
        hs.services.db,
        "fetch_all",
        lambda sql, *args: "FROM room_memberships WHERE user_id" in sql,
    )
    store.invalidate_here([], [user])  # the next read asks the database
    early = asyncio.ensure_future(store.get_rooms_for_user(user))
    await hold.wait_reached()
    room_id = await hs.create_room(tok)
    hold.release()
    assert room_id not in await asyncio.wait_for(early, 10)

    assert room_id in await store.get_rooms_for_user(user)
    assert room_id in await store.get_joined_rooms(user)

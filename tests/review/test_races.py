"""Concurrent requests that used to collide: each must succeed on its own, never a 500."""

from __future__ import annotations

import asyncio

from starling.rooms.builder import EventBuilder
from starling.rooms.event_service import MAX_CREATE_ATTEMPTS
from starling.storage import Database
from starling.storage.postgres import PostgresDatabase
from tests.support.harness import Harness

V3 = "/_matrix/client/v3"


async def test_concurrent_create_room_by_one_user_makes_distinct_rooms(
    hs: Harness, database: Database
) -> None:
    _, tok = await hs.register("alice")
    if isinstance(database, PostgresDatabase):
        # Each creation is one transaction: none may wait for a second pooled connection
        # (40 at once exhausted the pool and hung, #20).
        database.pool_in_transaction = "raise"
    # Freeze the clock: every create event would get the same origin_server_ts, the worst
    # case of several requests in one millisecond. More creations than the retry bound
    # (MAX_CREATE_ATTEMPTS), as a benchmark setting up 50 rooms at once.
    builder = hs.services.room_events._builder
    assert isinstance(builder, EventBuilder)
    builder._clock = lambda: 1_700_000_000_000
    body = {"room_version": "12", "preset": "private_chat"}
    n = MAX_CREATE_ATTEMPTS + 8
    results = await asyncio.gather(
        *(hs.request("POST", f"{V3}/createRoom", tok, body) for _ in range(n))
    )
    assert [s for s, _ in results] == [200] * n, results
    room_ids = {r["room_id"] for _, r in results}
    assert len(room_ids) == n
    for room_id in room_ids:
        state = await hs.services.room_events.current_state_ids(room_id)
        assert ("m.room.create", "") in state and ("m.room.power_levels", "") in state


async def test_key_upload_racing_a_new_backup_version_never_lands_in_the_old_one(
    hs: Harness,
) -> None:
    from tests.e2ee.support import new_device
    from tests.e2ee.test_key_backup import create, key, put

    d = await new_device(hs, "alice")
    old = await create(hs, d)
    service = hs.services.e2ee.key_backup
    store = service._store
    checked = service._writable
    new_version: list[str] = []

    async def check_then_new_version(user_id: str, raw: str | None) -> int:
        # The upload passed its version check; a new backup version is created right
        # then, before the upload writes.
        number = await checked(user_id, raw)
        new_version.append(str(await store.create_version(user_id, "alg", "{}")))
        return number

    service._writable = check_then_new_version  # type: ignore[method-assign]
    status, resp = await put(hs, d, old, "/!room:test.local/sess", key())
    assert (status, resp["errcode"]) == (403, "M_WRONG_ROOM_KEYS_VERSION"), resp
    assert resp["current_version"] == new_version[0]
    assert await store.count_keys(d.user_id, int(old)) == 0

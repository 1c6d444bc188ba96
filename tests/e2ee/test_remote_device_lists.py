"""The remote device-list cache (e2ee.remote_device_lists) on both engines, with a fake
/user/devices: tracking, the prev_id chain, gaps and deleted devices resynced, resyncs
deduplicated and retried, garbage refused, /keys/query answered from the cache only when
fresh, and users forgotten when they share no room with ours."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from starling.e2ee.remote_device_lists import (
    MAX_DEVICE_KEYS_BYTES,
    MAX_DEVICES,
    RemoteDeviceLists,
)
from starling.storage import Database
from starling.storage.remote_device_lists import RemoteDeviceListStore

BOB = "@bob:remote.test"
EVE = "@eve:remote.test"


def device_keys(user_id: str, device_id: str, key: str = "k") -> dict[str, Any]:
    return {
        "user_id": user_id,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {f"ed25519:{device_id}": key, f"curve25519:{device_id}": key},
        "signatures": {user_id: {f"ed25519:{device_id}": "sig"}},
    }


def master(user_id: str, key: str) -> dict[str, Any]:
    return {"user_id": user_id, "usage": ["master"], "keys": {f"ed25519:{key}": key}}


class FakeRemote:
    """Bob's server: its /user/devices answer, how often it was asked, failures."""

    def __init__(self) -> None:
        self.devices: dict[str, dict[str, Any]] = {"PHONE": device_keys(BOB, "PHONE")}
        self.stream_id = 10
        self.master: dict[str, Any] | None = master(BOB, "M1")
        self.calls = 0
        self.fail = 0  # fail this many calls
        self.garbage: Any = None
        self.gate: asyncio.Event | None = None
        self.sharing = {BOB: True, EVE: True}
        self.changed: list[str] = []

    async def user_devices(self, user_id: str, timeout: float) -> Any:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise ConnectionError("down")
        if self.garbage is not None:
            return self.garbage
        answer: dict[str, Any] = {
            "user_id": user_id,
            "stream_id": self.stream_id,
            "devices": [
                {"device_id": d, "keys": k, "device_display_name": f"{d} name"}
                for d, k in self.devices.items()
            ],
        }
        if user_id == BOB:
            # Synapse's shape: null for a key the user does not have.
            answer["master_key"] = self.master
            answer["self_signing_key"] = None
        return answer

    async def shares_room(self, user_id: str) -> bool:
        return self.sharing.get(user_id, False)

    async def on_changed(self, user_id: str) -> None:
        self.changed.append(user_id)


@pytest.fixture
def remote() -> FakeRemote:
    return FakeRemote()


@pytest.fixture
async def cache(database: Database, remote: FakeRemote) -> AsyncIterator[RemoteDeviceLists]:
    cache = RemoteDeviceLists(
        "here.test",
        RemoteDeviceListStore(database),
        remote,
        remote.shares_room,
        remote.on_changed,
        retry_delays=(0.01, 0.01),
    )
    yield cache
    await cache.close()


def update(
    device_id: str, stream_id: int, prev: list[int], *, deleted: bool = False, keys: Any = None
) -> dict[str, Any]:
    content: dict[str, Any] = {
        "user_id": BOB,
        "device_id": device_id,
        "stream_id": stream_id,
        "prev_id": prev,
        "deleted": deleted,
    }
    if keys is not None:
        content["keys"] = keys
    elif not deleted:
        content["keys"] = device_keys(BOB, device_id)
    return content


async def cached(cache: RemoteDeviceLists, user_id: str = BOB) -> dict[str, Any] | None:
    """The cache's answer for the user, None if it would ask their server."""
    answer, rest = await cache.cached_keys({user_id: []})
    await cache.settle()
    if user_id in rest:
        return None
    return {
        "devices": answer["device_keys"][user_id],
        "master": answer["master_keys"].get(user_id),
    }


async def test_first_update_tracks_and_resyncs_then_the_chain_applies(
    cache: RemoteDeviceLists, remote: FakeRemote
) -> None:
    # Not tracked yet: whatever the update says, the whole list is fetched.
    await cache.device_list_update(update("PHONE", 10, [9]))
    await cache.settle()
    assert remote.calls == 1 and cache.resyncs == 1
    got = await cached(cache)
    assert got is not None
    assert set(got["devices"]) == {"PHONE"}
    assert got["devices"]["PHONE"]["unsigned"] == {"device_display_name": "PHONE name"}
    assert got["devices"]["PHONE"]["keys"] == device_keys(BOB, "PHONE")["keys"]
    assert got["master"] == master(BOB, "M1")
    assert remote.changed == [BOB]
    # The next update follows on from the snapshot: applied without asking.
    await cache.device_list_update(update("TABLET", 11, [10]))
    await cache.device_list_update(update("LAPTOP", 12, [11]))
    # A repeat, and one older than what we have: nothing happens.
    await cache.device_list_update(update("TABLET", 11, [10], keys=device_keys(BOB, "TABLET", "x")))
    await cache.device_list_update(update("OLD", 7, [6]))
    await cache.settle()
    assert remote.calls == 1
    got = await cached(cache)
    assert got is not None and set(got["devices"]) == {"PHONE", "TABLET", "LAPTOP"}
    assert got["devices"]["TABLET"]["keys"] == device_keys(BOB, "TABLET")["keys"]
    # Several prev_ids (a clustered sender): fine when all were applied.
    await cache.device_list_update(update("WATCH", 13, [11, 12]))
    await cache.settle()
    assert remote.calls == 1
    # Only some devices asked for.
    answer, rest = await cache.cached_keys({BOB: ["WATCH", "NOPE"]})
    assert rest == {} and set(answer["device_keys"][BOB]) == {"WATCH"}


async def test_a_gap_or_a_deleted_device_resyncs(
    cache: RemoteDeviceLists, remote: FakeRemote
) -> None:
    await cache.device_list_update(update("PHONE", 10, []))
    await cache.settle()
    assert remote.calls == 1
    # A prev_id we never saw: stale at once (asked remotely), then resynced from the
    # server's list, which does not have the device the update named.
    remote.stream_id = 20
    remote.gate = asyncio.Event()
    await cache.device_list_update(update("GHOST", 20, [15]))
    assert await cached_without_waiting(cache) is None
    remote.gate.set()
    await cache.settle()
    assert remote.calls == 2
    got = await cached(cache)
    assert got is not None and set(got["devices"]) == {"PHONE"}
    # No prev_id at all, or keys naming someone else: resync too.
    for content in (
        update("X", 21, []),
        update("Y", 22, [20], keys=device_keys(EVE, "Y")),
    ):
        calls = remote.calls
        await cache.device_list_update(content)
        await cache.settle()
        assert remote.calls == calls + 1, content
        remote.stream_id += 1
    # A deleted device: resynced (the server no longer lists it).
    remote.devices["TABLET"] = device_keys(BOB, "TABLET")
    await cache.device_list_update(update("TABLET", remote.stream_id, [remote.stream_id - 1]))
    await cache.settle()
    state = await cache._store.state(BOB)
    assert state is not None
    del remote.devices["TABLET"]
    remote.stream_id = state.stream_id + 1
    calls = remote.calls
    await cache.device_list_update(
        update("TABLET", state.stream_id + 1, [state.stream_id], deleted=True)
    )
    await cache.settle()
    assert remote.calls == calls + 1
    got = await cached(cache)
    assert got is not None and set(got["devices"]) == {"PHONE"}


async def cached_without_waiting(cache: RemoteDeviceLists) -> Any:
    _, rest = await cache.cached_keys({BOB: []})
    return None if BOB in rest else True


async def test_resyncs_are_deduplicated_retried_and_updates_replayed(
    cache: RemoteDeviceLists, remote: FakeRemote
) -> None:
    remote.gate = asyncio.Event()
    # Many updates while the first resync is in flight: one request.
    await cache.device_list_update(update("PHONE", 10, [9]))
    for i in range(5):
        await cache.device_list_update(update("TABLET", 11 + i, [10 + i]))
    await asyncio.sleep(0)
    assert remote.calls == 1
    remote.gate.set()
    await cache.settle()
    # The snapshot (stream 10) came back, then the updates that followed it applied.
    assert remote.calls == 1
    got = await cached(cache)
    assert got is not None and set(got["devices"]) == {"PHONE", "TABLET"}
    state = await cache._store.state(BOB)
    assert state is not None and state.stream_id == 15 and not state.stale

    # Failures are retried with backoff; meanwhile queries go to the server.
    remote.gate = None
    remote.fail = 2
    remote.stream_id = 30
    await cache.device_list_update(update("PHONE", 30, [29]))
    await cache.settle()
    assert remote.calls == 4  # two failures, then the success
    assert await cached(cache) is not None
    # Failing every time: the cache stays stale (never used) after the last retry.
    remote.fail = 100
    calls = remote.calls
    await cache.device_list_update(update("PHONE", 40, [39]))
    await cache.settle()
    assert remote.calls == calls + 3
    assert await cached_without_waiting(cache) is None


@pytest.mark.parametrize(
    "garbage",
    [
        "nope",
        {"user_id": EVE, "stream_id": 1, "devices": []},
        {"user_id": BOB, "stream_id": "1", "devices": []},
        {"user_id": BOB, "stream_id": 1, "devices": {}},
        {"user_id": BOB, "stream_id": 1, "devices": [{"device_id": 5}]},
        {"user_id": BOB, "stream_id": 1, "devices": [], "master_key": master(EVE, "M")},
        {
            "user_id": BOB,
            "stream_id": 1,
            "devices": [{"device_id": f"D{i}"} for i in range(MAX_DEVICES + 1)],
        },
    ],
)
async def test_garbage_snapshots_leave_the_user_stale(
    cache: RemoteDeviceLists, remote: FakeRemote, garbage: Any
) -> None:
    remote.garbage = garbage
    await cache.device_list_update(update("PHONE", 10, [9]))
    await cache.settle()
    assert await cached_without_waiting(cache) is None


async def test_keys_under_other_names_are_not_cached(
    cache: RemoteDeviceLists, remote: FakeRemote
) -> None:
    remote.devices = {"PHONE": device_keys(BOB, "PHONE"), "FAKE": device_keys(EVE, "FAKE")}
    await cache.device_list_update(update("PHONE", 10, [9]))
    await cache.settle()
    got = await cached(cache)
    assert got is not None and set(got["devices"]) == {"PHONE"}


async def test_device_keys_are_passed_on_as_given(
    cache: RemoteDeviceLists, remote: FakeRemote
) -> None:
    """As Synapse: a device's keys are cached and served as the owner's server gave them
    (SyTest's servers give `{"device_keys": {}}`), unless they name another user or
    device, or are too large; clients verify the keys they download."""
    placeholder = {"device_keys": {}}
    remote.devices = {
        "PHONE": placeholder,
        "OTHER": {**device_keys(BOB, "PHONE"), "device_id": "PHONE"},
        "HUGE": {"device_keys": {"x": "a" * (MAX_DEVICE_KEYS_BYTES + 1)}},
    }
    await cache.device_list_update(update("PHONE", 10, [9], keys=placeholder))
    await cache.settle()
    got = await cached(cache)
    assert got is not None
    assert set(got["devices"]) == {"PHONE"}
    assert got["devices"]["PHONE"] == {
        "device_keys": {},
        "unsigned": {"device_display_name": "PHONE name"},
    }
    # The chain goes on with placeholders too; a display name comes with it.
    await cache.device_list_update(
        {**update("PHONE", 11, [10], keys=placeholder), "device_display_name": "renamed"}
    )
    got = await cached(cache)
    assert got is not None
    assert got["devices"]["PHONE"]["unsigned"] == {"device_display_name": "renamed"}
    assert remote.calls == 1


async def test_a_query_for_all_devices_waits_for_the_resync_it_starts(
    cache: RemoteDeviceLists, remote: FakeRemote
) -> None:
    """A query for the devices (all, or some) of a user sharing a room with ours that is
    not cached yet resyncs them and is answered from the cache; one whose resync fails
    within the wait is left to their server."""
    answer, rest = await cache.cached_keys({BOB: ["PHONE", "NOPE"]}, wait_s=5.0)
    assert rest == {} and set(answer["device_keys"][BOB]) == {"PHONE"}
    assert remote.calls == 1
    await cache.settle()
    await cache.forget([BOB])
    calls = remote.calls
    answer, rest = await cache.cached_keys({BOB: []}, wait_s=5.0)
    assert rest == {}
    assert set(answer["device_keys"][BOB]) == {"PHONE"}
    assert remote.calls == calls + 1
    # A stale user whose resync is under way: the query waits for it.
    remote.gate = asyncio.Event()
    await cache.device_list_update(update("PHONE", 50, [49]))  # a gap: stale, resyncing
    query = asyncio.ensure_future(cache.cached_keys({BOB: []}, wait_s=5.0))
    await asyncio.sleep(0.05)
    assert not query.done()
    remote.gate.set()
    answer, rest = await query
    assert rest == {} and set(answer["device_keys"][BOB]) == {"PHONE"}
    remote.gate = None
    # Someone sharing no room is not tracked, so not waited for.
    answer, rest = await cache.cached_keys({"@nobody:there.test": []}, wait_s=5.0)
    assert rest == {"@nobody:there.test": []}
    # Their server failing: asked over federation after the resync gave up.
    await cache.forget([BOB])
    remote.fail = 100
    answer, rest = await cache.cached_keys({BOB: []}, wait_s=5.0)
    assert rest == {BOB: []}


async def test_signing_key_updates(cache: RemoteDeviceLists, remote: FakeRemote) -> None:
    # Untracked: starts tracking (a resync).
    await cache.signing_key_update({"user_id": BOB, "master_key": master(BOB, "M2")})
    await cache.settle()
    assert remote.calls == 1
    got = await cached(cache)
    assert got is not None and got["master"] == master(BOB, "M1")
    # Tracked: the new key replaces the old one; one naming someone else is ignored.
    await cache.signing_key_update({"user_id": BOB, "master_key": master(BOB, "M2")})
    await cache.signing_key_update({"user_id": BOB, "master_key": master(EVE, "M3")})
    await cache.signing_key_update({"user_id": BOB, "master_key": "garbage"})
    got = await cached(cache)
    assert got is not None and got["master"] == master(BOB, "M2")
    assert remote.calls == 1


async def test_queries_track_users_sharing_a_room_and_forget_them_after(
    cache: RemoteDeviceLists, remote: FakeRemote
) -> None:
    # A query for an untracked user sharing a room: asked remotely, and tracked.
    answer, rest = await cache.cached_keys({BOB: [], EVE: []})
    assert rest == {BOB: [], EVE: []} and answer["device_keys"] == {}
    await cache.settle()
    assert remote.calls == 2
    assert await cached(cache, BOB) is not None
    # Someone sharing no room with ours is never cached.
    remote.sharing["@carol:remote.test"] = False
    assert await cached(cache, "@carol:remote.test") is None
    assert remote.calls == 2
    # Bob stops sharing a room: forgotten (Eve still shares one).
    remote.sharing[BOB] = False
    await cache.maybe_forget({BOB, EVE, "@alice:here.test"})
    assert await cache._store.state(BOB) is None
    assert await cache._store.state(EVE) is not None
    assert await cache._store.devices([BOB]) == []
    assert await cached(cache, BOB) is None
    # An update for him now (the federation layer drops those for users sharing no
    # room, but a resync that finds him gone forgets him too).
    await cache.device_list_update(update("PHONE", 50, [49]))
    await cache.settle()
    assert await cache._store.state(BOB) is None


async def test_outbound_chain_heads_are_stored(database: Database) -> None:
    store = RemoteDeviceListStore(database)
    assert await store.outbound_head("@alice:here.test") is None
    await store.set_outbound_head("@alice:here.test", 5)
    await store.set_outbound_head("@alice:here.test", 9)
    # Another store over the same database (a restart) reads it back.
    assert await RemoteDeviceListStore(database).outbound_head("@alice:here.test") == 9


async def test_stale_users_are_resynced_at_start(
    database: Database, cache: RemoteDeviceLists, remote: FakeRemote
) -> None:
    remote.fail = 100
    await cache.device_list_update(update("PHONE", 10, [9]))
    await cache.settle()
    assert await cached_without_waiting(cache) is None
    await cache.close()
    # The next run (a new cache over the same database) resyncs them when it starts.
    remote.fail = 0
    again = RemoteDeviceLists(
        "here.test",
        RemoteDeviceListStore(database),
        remote,
        remote.shares_room,
        remote.on_changed,
        retry_delays=(0.01,),
    )
    await again.start()
    await again.settle()
    assert await cached(again) is not None


async def test_a_change_is_announced_once_the_cache_holds_it(
    cache: RemoteDeviceLists, remote: FakeRemote
) -> None:
    """`changed` (sync, /keys/changes) tells clients to /keys/query now: it is announced
    when the update is applied or the resync that replaces it is stored, never while the
    cache still holds the old list (a client querying then would get the old devices, or
    an answer from the remote server in place of the cache)."""
    remote.gate = asyncio.Event()
    # Untracked: a resync; nothing is announced until it is stored.
    await cache.device_list_update(update("PHONE", 10, [9]))
    await asyncio.sleep(0.01)
    assert remote.changed == []
    remote.gate.set()
    await cache.settle()
    assert remote.changed == [BOB]
    # Applied from the chain: announced at once.
    await cache.device_list_update(update("TABLET", 11, [10]))
    assert remote.changed == [BOB, BOB]
    # A repeat: nothing.
    await cache.device_list_update(update("TABLET", 11, [10]))
    assert remote.changed == [BOB, BOB]
    # A deleted device: announced when the resync without it is stored.
    remote.devices["TABLET"] = device_keys(BOB, "TABLET")
    remote.stream_id = 12
    remote.gate = asyncio.Event()
    await cache.device_list_update(update("PHONE", 12, [11], deleted=True))
    await asyncio.sleep(0.01)
    assert remote.changed == [BOB, BOB]
    del remote.devices["PHONE"]
    remote.gate.set()
    await cache.settle()
    assert remote.changed == [BOB] * 3
    got = await cached(cache)
    assert got is not None and set(got["devices"]) == {"TABLET"}
    # A gap whose resync finds the list as it was: nothing to fetch, nothing announced.
    remote.stream_id = 20
    await cache.device_list_update(update("GHOST", 20, [15]))
    await cache.settle()
    assert remote.changed == [BOB] * 3
    # A resync that cannot reach the server: announced anyway after the first failed
    # attempt (the client's query then goes to the server, as for any stale user).
    remote.fail = 100
    await cache.device_list_update(update("PHONE", 30, [29]))
    await cache.settle()
    assert remote.changed == [BOB] * 4
    # A cross-signing key update for a tracked user is stored and announced at once.
    remote.fail = 0
    await cache.device_list_update(update("PHONE", 31, [30]))
    await cache.settle()
    announced = len(remote.changed)
    await cache.signing_key_update({"user_id": BOB, "master_key": master(BOB, "M9")})
    assert len(remote.changed) == announced + 1

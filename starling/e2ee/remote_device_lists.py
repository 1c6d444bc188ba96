"""The cache of other servers' users' device lists (Server-Server API > Device Management),
as Synapse keeps it.

Who is cached: the remote users who share a room with one of our users. A user becomes
tracked when an `m.device_list_update` or `m.signing_key_update` arrives for them, or when
one of our clients queries their keys; tracking starts stale and a resync through
`GET /user/devices/{userId}` fills it. They are forgotten (the cache dropped) once they
share no room with any of our users.

Per tracked user we keep the `stream_id` of the last update applied. An inbound
`m.device_list_update` is applied when every one of its `prev_id`s is an update we have
applied (usually exactly the last one); one with an older `stream_id` was already seen.
Anything else - a `prev_id` we do not know (a gap), no `prev_id`, a deleted device, keys
that name another user or device - marks the user stale and schedules a resync. Device
keys are otherwise kept as the owner's server sent them (Synapse does the same; clients
verify the keys they download). A
resync runs in the background (never inside the /send transaction that brought the
update), at most one per user at a time and `MAX_CONCURRENT_RESYNCS` at once, retried
with backoff while it fails; updates that arrive meanwhile are replayed after it.

`/keys/query` answers a tracked, fresh user from the cache; anyone else (not tracked,
stale) is asked over federation as before, which also starts their resync when they
share a room with one of ours — a query waits a few seconds for a resync attempt under
way and is then answered from the cache (as Synapse resyncs inline for a query of all
devices); a resync waiting to retry is not waited for.

Only one process writes the cache (the per-user locks are in memory); a second writer
process would need the chain position checked in the database, which `apply_update`
does, and the locks moved there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import orjson

from starling.locks import KeyedLock
from starling.protocol.canonical_json import CanonicalJsonError, encode_canonical_json
from starling.storage.remote_device_lists import RemoteDevice, RemoteDeviceListStore

logger = logging.getLogger(__name__)

# Synapse ignores snapshots of users with more devices than this.
MAX_DEVICES = 1000
MAX_DISPLAY_NAME = 100
MAX_DEVICE_KEYS_BYTES = 64 * 1024
MAX_CONCURRENT_RESYNCS = 5
RESYNC_TIMEOUT_S = 30.0
# Seconds between failed resync attempts; after the last one the user stays stale (and
# is asked over federation on every query) until the next update or query retries.
RETRY_DELAYS_S = (2.0, 5.0, 15.0, 60.0, 300.0)
# Updates kept per user while a resync runs; past this, one more resync follows.
MAX_PENDING = 50
# Recently applied stream_ids remembered per user (for updates with several prev_ids).
RECENT_IDS = 10


class DeviceFetcher(Protocol):
    async def user_devices(self, user_id: str, timeout: float) -> Any:
        """The body of the user's server's `GET /user/devices/{userId}`; raises on
        failure."""
        ...


SharesRoom = Callable[[str], Awaitable[bool]]
"""remote user_id -> whether they share a room with one of our users."""
Changed = Callable[[str], Awaitable[None]]
"""A tracked user's devices or keys changed (found by a resync)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _key_of(obj: Any, user_id: str, device_id: str | None = None) -> str | None:
    """A key object as canonical JSON, if it is an object naming this user (and
    device)."""
    if not isinstance(obj, dict) or obj.get("user_id") != user_id:
        return None
    if device_id is not None and obj.get("device_id") != device_id:
        return None
    if not isinstance(obj.get("keys"), dict):
        return None
    try:
        return encode_canonical_json(obj).decode()
    except CanonicalJsonError:
        return None


def _device_keys_of(obj: Any, user_id: str, device_id: str) -> str | None:
    """A device's keys as canonical JSON, cached and served as the owner's server gave
    them (as Synapse does: SyTest's servers give placeholders such as
    `{"device_keys": {}}`), unless they name another user or device, or are too large.
    Clients check device keys themselves (signatures, user and device IDs); we only pass
    them on."""
    if not isinstance(obj, dict):
        return None
    if obj.get("user_id", user_id) != user_id or obj.get("device_id", device_id) != device_id:
        return None
    try:
        encoded = encode_canonical_json(obj).decode()
    except CanonicalJsonError:
        return None
    return encoded if len(encoded) <= MAX_DEVICE_KEYS_BYTES else None


def _display_name(value: Any) -> str | None:
    return value[:MAX_DISPLAY_NAME] if isinstance(value, str) else None


class RemoteDeviceLists:
    def __init__(
        self,
        server_name: str,
        store: RemoteDeviceListStore,
        fetcher: DeviceFetcher,
        shares_room: SharesRoom,
        changed: Changed,
        *,
        retry_delays: Sequence[float] = RETRY_DELAYS_S,
        max_concurrent: int = MAX_CONCURRENT_RESYNCS,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self._server_name = server_name
        self._store = store
        self.fetcher = fetcher
        self._shares_room = shares_room
        self._changed = changed
        self._retry_delays = tuple(retry_delays)
        self._slots = asyncio.Semaphore(max_concurrent)
        self._clock_ms = clock_ms
        self._lock: KeyedLock[str] = KeyedLock()
        self._recent: dict[str, deque[int]] = {}
        self._resyncing: dict[str, asyncio.Task[None]] = {}
        # Set when the resync attempt running for a user ends (none while it waits to
        # retry): what a /keys/query waits for.
        self._attempts: dict[str, asyncio.Event] = {}
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._overflowed: set[str] = set()
        self.resyncs = 0  # successful resyncs (tests, metrics)

    # -- inbound EDUs (the user is the origin's and shares a room with one of ours)

    async def device_list_update(self, content: Mapping[str, Any]) -> None:
        user_id = content.get("user_id")
        device_id = content.get("device_id")
        stream_id = content.get("stream_id")
        if not isinstance(user_id, str) or not isinstance(device_id, str) or not device_id:
            return
        if not _is_int(stream_id):
            logger.info("device list update of %s without a usable stream_id", user_id)
            return
        assert isinstance(stream_id, int)
        async with self._lock(user_id):
            applied = await self._device_list_update(user_id, device_id, stream_id, content)
        if applied:
            await self._changed(user_id)

    async def _device_list_update(
        self, user_id: str, device_id: str, stream_id: int, content: Mapping[str, Any]
    ) -> bool:
        """Whether the update was applied to the cache (otherwise it was a repeat, or a
        resync is on its way, which announces the change once the list is stored)."""
        state = await self._store.state(user_id)
        if state is None:
            await self._store.track(user_id, self._clock_ms())
            self._keep_pending(user_id, dict(content))
            self._schedule(user_id)
            return False
        if state.stale or user_id in self._resyncing:
            self._keep_pending(user_id, dict(content))
            self._schedule(user_id)
            return False
        if stream_id <= state.stream_id:
            return False  # already applied, or older than the snapshot we have
        prev_ids = content.get("prev_id", [])
        known = {state.stream_id, *self._recent.get(user_id, ())}
        deleted = content.get("deleted", False) is True
        keys = content.get("keys")
        key_json = None if keys is None else _device_keys_of(keys, user_id, device_id)
        follows = (
            isinstance(prev_ids, list)
            and bool(prev_ids)
            and all(_is_int(p) and p in known for p in prev_ids)
        )
        if not follows or deleted or (keys is not None and key_json is None):
            # A gap, or a deleted device (Synapse resyncs for those too), or keys we cannot
            # take: the whole list is fetched again.
            logger.info(
                "device list of %s is stale (stream_id %s, prev_id %r, deleted %s)",
                user_id,
                stream_id,
                prev_ids,
                deleted,
            )
            await self._store.mark_stale(user_id, self._clock_ms())
            self._schedule(user_id)
            return False
        applied = await self._store.apply_update(
            user_id,
            state.stream_id,
            stream_id,
            device_id,
            False,
            _display_name(content.get("device_display_name")),
            key_json,
            self._clock_ms(),
        )
        if applied:
            self._remember(user_id, stream_id)
        else:
            await self._store.mark_stale(user_id, self._clock_ms())
            self._schedule(user_id)
        return applied

    async def signing_key_update(self, content: Mapping[str, Any]) -> None:
        user_id = content.get("user_id")
        if not isinstance(user_id, str):
            return
        keys: dict[str, str] = {}
        for field, key_type in (("master_key", "master"), ("self_signing_key", "self_signing")):
            if content.get(field) is not None:
                key_json = _key_of(content[field], user_id)
                if key_json is None:
                    logger.info("unusable %s in a signing key update of %s", field, user_id)
                    return
                keys[key_type] = key_json
        if not keys:
            return
        async with self._lock(user_id):
            stored = await self._store.set_cross_signing(user_id, keys)
            if not stored:
                await self._store.track(user_id, self._clock_ms())
                self._schedule(user_id)
            elif user_id in self._resyncing:
                # The running resync may bring back older keys: one more follows it.
                self._overflowed.add(user_id)
        if stored:
            await self._changed(user_id)

    def _remember(self, user_id: str, stream_id: int) -> None:
        recent = self._recent.get(user_id)
        if recent is None:
            recent = self._recent[user_id] = deque(maxlen=RECENT_IDS)
        recent.append(stream_id)

    def _keep_pending(self, user_id: str, content: dict[str, Any]) -> None:
        pending = self._pending.setdefault(user_id, [])
        if len(pending) < MAX_PENDING:
            pending.append(content)
        else:
            self._overflowed.add(user_id)

    # -- resyncs

    async def start(self, limit: int = 1000) -> None:
        """Resync (in the background) the users a previous run left stale."""
        for user_id in await self._store.stale_users(limit):
            self._schedule(user_id)

    def _schedule(self, user_id: str) -> None:
        if user_id in self._resyncing:
            return
        self._attempts[user_id] = asyncio.Event()  # the first attempt is on its way
        task = asyncio.get_running_loop().create_task(self._resync_loop(user_id))
        self._resyncing[user_id] = task

    async def settle(self) -> None:
        """Wait for every running resync (tests)."""
        while self._resyncing:
            await asyncio.gather(*self._resyncing.values(), return_exceptions=True)

    async def close(self) -> None:
        tasks = list(self._resyncing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _resync_loop(self, user_id: str) -> None:
        done = False
        announced = False
        try:
            for delay in (*self._retry_delays, None):
                attempt = self._attempts.setdefault(user_id, asyncio.Event())
                try:
                    async with self._slots:
                        try:
                            done = await self.resync(user_id)
                        except Exception:
                            logger.exception("resyncing the device list of %s failed", user_id)
                finally:
                    self._attempts.pop(user_id, None)
                    attempt.set()
                if done:
                    break
                if not announced:
                    # The change cannot be fetched for now: announce it anyway, so that
                    # clients ask again (a stale user's keys are asked of their server).
                    announced = True
                    await self._changed(user_id)
                if delay is None:
                    logger.warning("giving up resyncing the device list of %s for now", user_id)
                    break
                await asyncio.sleep(delay)
        finally:
            self._resyncing.pop(user_id, None)
        pending = self._pending.pop(user_id, [])
        overflowed = user_id in self._overflowed
        self._overflowed.discard(user_id)
        if not done:
            return  # still stale: the next update or query tries again
        if overflowed:
            # Updates were dropped while the resync ran: another one covers them.
            if await self._store.state(user_id) is not None:
                await self._store.mark_stale(user_id, self._clock_ms())
                self._schedule(user_id)
            return
        for content in pending:
            await self.device_list_update(content)

    async def resync(self, user_id: str) -> bool:
        """Fetch the user's whole list from their server and replace the cache. True when
        done (or no longer needed); False to retry later."""
        if not await self._shares_room(user_id):
            await self.forget([user_id])
            return True
        server = user_id.split(":", 1)[1]
        try:
            answer = await self.fetcher.user_devices(user_id, RESYNC_TIMEOUT_S)
        except Exception as e:
            logger.info("resync of %s: %s did not answer: %s", user_id, server, e)
            await self._store.mark_stale(user_id, self._clock_ms())
            return False
        snapshot = self._parse(user_id, answer)
        if snapshot is None:
            logger.warning("resync of %s: %s answered /user/devices with garbage", user_id, server)
            await self._store.mark_stale(user_id, self._clock_ms())
            return False
        stream_id, devices, cross_signing = snapshot
        async with self._lock(user_id):
            before = await self._snapshot(user_id)
            if not await self._store.replace(
                user_id, stream_id, devices, cross_signing, self._clock_ms()
            ):
                return True  # forgotten meanwhile
            self._recent[user_id] = deque([stream_id], maxlen=RECENT_IDS)
        self.resyncs += 1
        if before != (sorted(devices, key=lambda d: d.device_id), cross_signing):
            await self._changed(user_id)
        return True

    async def _snapshot(self, user_id: str) -> tuple[list[RemoteDevice], dict[str, str]]:
        devices = await self._store.devices([user_id])
        cross = (await self._store.cross_signing([user_id])).get(user_id, {})
        return sorted(devices, key=lambda d: d.device_id), cross

    @staticmethod
    def _parse(user_id: str, answer: Any) -> tuple[int, list[RemoteDevice], dict[str, str]] | None:
        if not isinstance(answer, dict) or answer.get("user_id") != user_id:
            return None
        stream_id = answer.get("stream_id")
        devices = answer.get("devices")
        if not _is_int(stream_id) or not isinstance(devices, list):
            return None
        assert isinstance(stream_id, int)
        if len(devices) > MAX_DEVICES:
            return None
        out: dict[str, RemoteDevice] = {}
        for device in devices:
            if not isinstance(device, dict):
                return None
            device_id = device.get("device_id")
            if not isinstance(device_id, str) or not device_id or len(device_id) > 255:
                return None
            keys = device.get("keys")
            key_json = None if keys is None else _device_keys_of(keys, user_id, device_id)
            out[device_id] = RemoteDevice(
                user_id, device_id, _display_name(device.get("device_display_name")), key_json
            )
        cross: dict[str, str] = {}
        for field, key_type in (("master_key", "master"), ("self_signing_key", "self_signing")):
            # Synapse sends null for a key the user does not have.
            if answer.get(field) is not None:
                key_json = _key_of(answer[field], user_id)
                if key_json is None:
                    return None
                cross[key_type] = key_json
        return stream_id, list(out.values()), cross

    # -- membership: users we no longer share a room with

    async def maybe_forget(self, user_ids: Iterable[str]) -> None:
        """Some of these users may share no room with ours any more: forget those."""
        remote = [u for u in user_ids if u.split(":", 1)[-1] != self._server_name]
        tracked = await self._store.states(remote)
        gone = [u for u in sorted(tracked) if not await self._shares_room(u)]
        await self.forget(gone)

    async def forget(self, user_ids: Sequence[str]) -> None:
        if not user_ids:
            return
        await self._store.forget(user_ids)
        for user_id in user_ids:
            self._recent.pop(user_id, None)
            self._pending.pop(user_id, None)
        logger.debug("forgot the device lists of %s", ", ".join(user_ids))

    # -- /keys/query

    async def cached_keys(
        self, users: Mapping[str, list[str]], wait_s: float = 0.0
    ) -> tuple[dict[str, Any], dict[str, list[str]]]:
        """The cached keys of the tracked, fresh users among ``users`` (a /keys/query
        answer: device_keys, master_keys, self_signing_keys), and the users left to ask
        their server. Users sharing a room with ours that are not cached yet start
        tracking (a resync). A query for a user whose resync attempt is running (just
        started, or already under way) waits for it (at most ``wait_s`` seconds) and is
        answered from the cache if it succeeded - for all their devices as Synapse does,
        and for some of them too (Synapse asks their server again then, racing the
        resync it already has in flight); one waiting to retry is not waited for."""
        states = await self._store.states(users)
        fresh = [u for u, s in states.items() if not s.stale and u not in self._resyncing]
        rest = {u: d for u, d in users.items() if u not in fresh}
        waiting: list[str] = []
        for user_id in rest:
            state = states.get(user_id)
            if state is not None:
                self._schedule(user_id)
            elif await self._shares_room(user_id):
                await self._store.track(user_id, self._clock_ms())
                self._schedule(user_id)
            else:
                continue
            if user_id in self._attempts:
                waiting.append(user_id)
        if waiting and wait_s > 0:
            waits = [asyncio.ensure_future(self._attempts[u].wait()) for u in waiting]
            try:
                await asyncio.wait(waits, timeout=wait_s)
            finally:
                for w in waits:
                    w.cancel()
            now = await self._store.states(waiting)
            for user_id in waiting:
                state = now.get(user_id)
                if state is not None and not state.stale and user_id not in self._resyncing:
                    fresh.append(user_id)
                    del rest[user_id]
        answer: dict[str, Any] = {"device_keys": {}, "master_keys": {}, "self_signing_keys": {}}
        if not fresh:
            return answer, rest
        for user_id in fresh:
            answer["device_keys"][user_id] = {}
        for device in await self._store.devices(fresh):
            only = users[device.user_id]
            if device.key_json is None or (only and device.device_id not in only):
                continue
            keys = orjson.loads(device.key_json)
            if device.display_name is not None:
                keys["unsigned"] = {"device_display_name": device.display_name}
            answer["device_keys"][device.user_id][device.device_id] = keys
        for user_id, by_type in (await self._store.cross_signing(fresh)).items():
            for key_type, key_json in by_type.items():
                answer[f"{key_type}_keys"][user_id] = orjson.loads(key_json)
        return answer, rest

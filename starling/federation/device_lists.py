"""Device lists and cross-signing keys across servers (Server-Server API > Device
Management, Cross-signing): the `m.device_list_update` and `m.signing_key_update` EDUs,
both ways.

Outbound: after each committed change to a local user's devices (a new device's keys,
a deleted device) an `m.device_list_update` per device goes to every other server
sharing a room with the user (through a stored outbox the federation sender carries,
deleted once delivered, so no update is lost to a restart or an outage), numbered by the device-list stream (each device its own
position) and chained to the previous update sent for that user (`prev_id`). The head
of each user's chain is stored, so the chain goes on after a restart, and
`/user/devices` answers with it as its `stream_id`. A change to the user's public
cross-signing keys sends `m.signing_key_update` with the current keys.

Inbound: the update goes to the remote device-list cache (e2ee.remote_device_lists:
applied, or a resync scheduled), and marks the user changed for the local users sharing
a room with them, which is what their `/keys/changes` and sync `device_lists.changed`
report. An update for a user nobody here shares a room with is ignored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import orjson

from starling.protocol.power_levels import server_of
from starling.storage.remote_device_lists import DeviceListOutboxStore

logger = logging.getLogger(__name__)


class EduSender(Protocol):
    def send_edu(self, destination: str, edu_type: str, content: dict[str, Any]) -> None: ...


UsersSharing = Callable[[str], Awaitable[set[str]]]
"""user_id -> the users sharing a room with them."""
KeysOf = Callable[[str, Mapping[str, list[str]]], Awaitable[dict[str, Any]]]
"""(requester, {user: [device IDs]}) -> a /keys/query answer (local users)."""
MarkChanged = Callable[[str], Awaitable[None]]


class ChainHeads(Protocol):
    """The stored head of each local user's update chain."""

    async def outbound_head(self, user_id: str) -> int | None: ...

    async def set_outbound_head(self, user_id: str, stream_id: int) -> None: ...


class RemoteCache(Protocol):
    async def device_list_update(self, content: Mapping[str, Any]) -> None: ...

    async def signing_key_update(self, content: Mapping[str, Any]) -> None: ...


class DeviceListFederation:
    def __init__(
        self,
        server_name: str,
        sender: EduSender,
        users_sharing: UsersSharing,
        keys_of: KeysOf,
        mark_remote_changed: MarkChanged,
        heads: ChainHeads,
        cache: RemoteCache | None = None,
        outbox: DeviceListOutboxStore | None = None,
        wake: Callable[[str], None] | None = None,
        new_position: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self._server_name = server_name
        self._sender = sender
        self._users_sharing = users_sharing
        self._keys_of = keys_of
        self._mark_remote_changed = mark_remote_changed
        self._heads = heads
        self._cache = cache
        # Without an outbox (tests), EDUs go to the sender's memory queue.
        self._outbox = outbox
        self._wake = wake
        self._new_position = new_position
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    # --- outbound -------------------------------------------------------------------------

    def on_change(
        self, user_id: str, device_ids: Sequence[str], deleted: bool, stream_id: int
    ) -> None:
        """DeviceListTracker listener (after the commit)."""
        if server_of(user_id) != self._server_name:
            return
        task = asyncio.get_running_loop().create_task(
            self._send(user_id, list(device_ids), deleted, stream_id)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _servers_sharing(self, user_id: str) -> list[str]:
        servers = {server_of(u) for u in await self._users_sharing(user_id)}
        servers.discard(self._server_name)
        return sorted(servers)

    async def _send(
        self, user_id: str, device_ids: list[str], deleted: bool, stream_id: int
    ) -> None:
        try:
            # One at a time, so that each update's prev_id is the one sent before it.
            async with self._lock:
                servers = await self._servers_sharing(user_id)
                if not servers:
                    return
                answer = await self._keys_of("", {user_id: device_ids})
                if not device_ids:
                    await self._send_signing_keys(user_id, servers, answer, stream_id)
                    return
                devices = answer.get("device_keys", {}).get(user_id, {})
                for device_id in device_ids:
                    prev = await self._heads.outbound_head(user_id)
                    if prev is not None and prev >= stream_id:
                        # Overtaken: on PostgreSQL a later position can commit first (or
                        # the listener told twice). Receivers ignore stream_ids they have
                        # passed, so the update goes out under a fresh position.
                        if self._new_position is None:
                            continue
                        stream_id = await self._new_position()
                    await self._heads.set_outbound_head(user_id, stream_id)
                    content: dict[str, Any] = {
                        "user_id": user_id,
                        "device_id": device_id,
                        "stream_id": stream_id,
                        "prev_id": [prev] if prev is not None else [],
                        "deleted": deleted,
                    }
                    keys = devices.get(device_id)
                    if not deleted and keys is not None:
                        keys = dict(keys)
                        unsigned = keys.pop("unsigned", None)
                        content["keys"] = keys
                        if isinstance(unsigned, dict) and "device_display_name" in unsigned:
                            content["device_display_name"] = unsigned["device_display_name"]
                    await self._emit(servers, "m.device_list_update", content, stream_id)
        except Exception:
            logger.exception("sending the device list update of %s failed", user_id)

    async def _send_signing_keys(
        self, user_id: str, servers: list[str], answer: dict[str, Any], stream_id: int
    ) -> None:
        content: dict[str, Any] = {"user_id": user_id}
        master = answer.get("master_keys", {}).get(user_id)
        self_signing = answer.get("self_signing_keys", {}).get(user_id)
        if master is not None:
            content["master_key"] = master
        if self_signing is not None:
            content["self_signing_key"] = self_signing
        if len(content) == 1:
            return
        await self._emit(servers, "m.signing_key_update", content, stream_id)

    async def _emit(
        self, servers: list[str], edu_type: str, content: dict[str, Any], stream_id: int
    ) -> None:
        if self._outbox is None:
            for server in servers:
                self._sender.send_edu(server, edu_type, content)
            return
        body = orjson.dumps(content).decode()
        await self._outbox.add([(server, stream_id, edu_type, body) for server in servers])
        if self._wake is not None:
            for server in servers:
                self._wake(server)

    # --- the outbox, for the federation sender (StoredEdus) ------------------------------

    async def destinations_pending(self) -> list[str]:
        return [] if self._outbox is None else await self._outbox.destinations_pending()

    async def pending(self, destination: str, limit: int) -> tuple[list[dict[str, Any]], int]:
        if self._outbox is None:
            return [], 0
        rows = await self._outbox.pending(destination, limit)
        edus = [{"edu_type": t, "content": orjson.loads(body)} for _, t, body in rows]
        return edus, (rows[-1][0] if rows else 0)

    async def delivered(self, destination: str, upto: int) -> None:
        if self._outbox is not None:
            await self._outbox.delete_delivered(destination, upto)

    async def close(self, timeout: float = 10.0) -> None:
        """Let the updates being written to the outbox finish (a change committed just
        before shutdown is still sent after the restart), then stop."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        for task in list(self._tasks):
            task.cancel()

    # --- inbound --------------------------------------------------------------------------

    async def on_device_list_update(self, origin: str, content: dict[str, Any]) -> None:
        """`m.device_list_update` from `origin` (the registry has checked that the user
        is the origin's)."""
        if await self._shared(content):
            if self._cache is not None:
                # The cache announces the change (sync `device_lists.changed`,
                # /keys/changes) once it holds it: applied now, or after a resync.
                await self._cache.device_list_update(content)
            else:
                await self._mark_remote_changed(content["user_id"])

    async def on_signing_key_update(self, origin: str, content: dict[str, Any]) -> None:
        """`m.signing_key_update` from `origin`."""
        if await self._shared(content):
            if self._cache is not None:
                await self._cache.signing_key_update(content)
            else:
                await self._mark_remote_changed(content["user_id"])

    async def _shared(self, content: dict[str, Any]) -> bool:
        user_id = content.get("user_id")
        if not isinstance(user_id, str) or server_of(user_id) == self._server_name:
            return False
        sharing = await self._users_sharing(user_id)
        if not any(server_of(u) == self._server_name for u in sharing):
            logger.debug("device list update of %s: nobody here shares a room", user_id)
            return False
        return True

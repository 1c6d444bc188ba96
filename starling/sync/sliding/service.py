"""One sliding sync request, and its long-poll (MSC4186).

A response covers the streams up to `now`, read once at the start. With a `pos` and a
`timeout`, a response with nothing new (no room, no extension data, no list count
changed) is not sent: the request waits on the notifier for the user and their joined
rooms, then builds again from the same snapshot, until something is new or the timeout
passes. The check "has anything moved since the build" and the waiter's registration
happen with no await between them, so nothing committed in between is missed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from types import MappingProxyType
from typing import Any

from starling.notifier import Notifier
from starling.storage.memberships import MembershipStore
from starling.sync.service import MAX_TIMEOUT_MS, SyncService
from starling.sync.sliding.connections import EMPTY, ConnectionStore, Snapshot
from starling.sync.sliding.extensions import ExtensionRooms, SlidingExtensions
from starling.sync.sliding.request import ScopedExtension, SlidingRequest
from starling.sync.sliding.room_list import RoomActivity, RoomList, RoomLister
from starling.sync.sliding.rooms import RoomResultBuilder, RoomWork
from starling.sync.sliding.threads import ThreadUpdates
from starling.sync.tokens import SyncToken

# The most timeline events one response carries, over all its rooms.
MAX_TIMELINE_EVENTS = 20_000

IgnoredLookup = Callable[[str], Awaitable[frozenset[str]]]
# Presence's "this user is syncing" hook: (user_id, set_presence or None for online).
PresenceHook = Callable[[str, str | None], Awaitable[None]]


class SlidingSyncService:
    def __init__(
        self,
        sync: SyncService,
        notifier: Notifier,
        memberships: MembershipStore,
        lister: RoomLister,
        builder: RoomResultBuilder,
        extensions: SlidingExtensions,
        activity: RoomActivity,
        ignored_users: IgnoredLookup,
        connections: ConnectionStore,
        threads: ThreadUpdates,
    ) -> None:
        self._threads = threads
        self._sync = sync
        self._notifier = notifier
        self._memberships = memberships
        self._lister = lister
        self._builder = builder
        self._extensions = extensions
        self._activity = activity
        self._ignored = ignored_users
        self.connections = connections
        self._presence: PresenceHook | None = None

    async def devices_changed(self, user_id: str, device_ids: Sequence[str], deleted: bool) -> None:
        """A device deleted (or logged out) takes its connections with it."""
        if deleted:
            for device_id in device_ids:
                await self.connections.forget_device(user_id, device_id)

    def use_presence(self, hook: PresenceHook) -> None:
        """Polling marks the user online (MSC4186 `set_presence`, as /sync does)."""
        self._presence = hook

    async def sync(self, req: SlidingRequest) -> dict[str, Any]:
        device = req.device_id or ""
        if req.pos is None:
            conn = await self.connections.start(req.user_id, device, req.conn_id)
            base_seq: int | None = None
            snapshot = EMPTY
        else:
            conn, base_seq, snapshot = await self.connections.resume(
                req.user_id, device, req.conn_id, req.pos
            )
        first = req.pos is None
        if self._presence is not None:
            await self._presence(req.user_id, req.set_presence)
        timeout = 0.0 if first else min(max(req.timeout_ms, 0), MAX_TIMEOUT_MS) / 1000
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            now = self._sync.current_token()
            response, has_data, new_snapshot = await self._build(req, snapshot, now, first)
            if has_data or first or timeout <= 0:
                break
            woken = await self._wait(req.user_id, now, deadline - loop.time())
            if not woken:
                break
        response["pos"] = await self.connections.record(conn, base_seq, new_snapshot)
        return response

    async def _wait(self, user_id: str, built_at: SyncToken, remaining: float) -> bool:
        """Until a stream moves past `built_at`; False when the time is up."""
        if remaining <= 0:
            return False
        rooms = await self._memberships.get_joined_rooms(user_id)
        # No await from this check to the waiter's registration inside wait().
        if not self._sync.current_token().same_positions(built_at):
            return True
        return await self._notifier.wait(user_id, rooms, remaining)

    async def _build(
        self, req: SlidingRequest, snapshot: Snapshot, now: SyncToken, first: bool
    ) -> tuple[dict[str, Any], bool, Snapshot]:
        ignored = await self._ignored(req.user_id)
        listed = await self._lister.build(req, snapshot, ignored)
        works = await self._works(listed, snapshot)
        prev_token = None if first else snapshot.token
        scopes = (
            _scope(req.extensions.account_data, listed),
            _scope(req.extensions.receipts, listed),
            _scope(req.extensions.typing, listed),
        )
        in_scope = scopes[0] | scopes[1] | scopes[2]
        # Rooms sent whole in this response (new to the connection, or newly joined) and
        # rooms coming back into an extension's scope get current data, not changes.
        whole = frozenset(w.room_id for w in works if w.prev is None or w.prev.membership != "join")
        fresh = whole | (in_scope - snapshot.extension_rooms)
        streams = dict(now.streams)
        # The rooms and the extensions read different things: both at once.
        built, (extensions, ext_data) = await asyncio.gather(
            self._builder.build(
                req.user_id,
                req.device_id,
                works,
                now.events,
                None if first else snapshot.token.events,
                ignored,
            ),
            self._extensions.build(
                req.user_id,
                req.device_id,
                req.extensions,
                prev_token,
                now,
                ExtensionRooms(
                    account_data=scopes[0], receipts=scopes[1], typing=scopes[2], fresh=fresh
                ),
                streams,
            ),
        )
        threads = req.extensions.threads
        if threads is not None:
            # After the rooms: a thread whose latest reply is in a timeline here is left
            # out unless the client asked for roots.
            in_timelines = {
                e.get("event_id") for room in built.rooms.values() for e in room.get("timeline", [])
            }
            updates, prev_batch = await self._threads.updates(
                req.user_id,
                req.device_id,
                None if first else snapshot.token.events,
                now.events,
                threads.limit,
                threads.include_roots,
                {e for e in in_timelines if isinstance(e, str)},
            )
            if updates or prev_batch is not None:
                # Omitted when there is nothing (as Synapse does).
                extensions[threads.name] = {"updates": updates}
                if prev_batch is not None:
                    extensions[threads.name]["prev_batch"] = prev_batch
                ext_data = True
        rooms_sent = dict(snapshot.rooms)
        rooms_sent.update(built.sent)
        counts = {name: result.count for name, result in listed.lists.items()}
        response: dict[str, Any] = {
            "lists": {
                name: {"count": result.count, "ops": result.ops}
                for name, result in listed.lists.items()
            },
            "rooms": built.rooms,
            "extensions": extensions,
        }
        has_data = bool(built.rooms) or ext_data or counts != dict(snapshot.list_counts)
        new_snapshot = Snapshot(
            SyncToken(now.events, MappingProxyType(streams)),
            MappingProxyType(rooms_sent),
            MappingProxyType(counts),
            in_scope,
        )
        return response, has_data, new_snapshot

    async def thread_updates(
        self,
        user_id: str,
        device_id: str | None,
        from_token: str | None,
        to_token: str | None,
        limit: int,
    ) -> dict[str, Any]:
        """GET /thread_updates (MSC4360's companion endpoint)."""
        return await self._threads.page(
            user_id, device_id, from_token, to_token, limit, self._sync.current_token().events
        )

    async def _works(self, listed: RoomList, snapshot: Snapshot) -> list[RoomWork]:
        """The rooms to look at: matched, and new to the connection or changed since."""
        joined = [r for r in listed.configs if listed.memberships[r].membership == "join"]
        bumps = await self._activity.bump(joined)
        works: list[RoomWork] = []
        for room_id, config in listed.configs.items():
            m = listed.memberships[room_id]
            prev = snapshot.rooms.get(room_id)
            # A room new to the connection, or whose membership changed, is sent whole.
            if prev is None or prev.membership_event != m.event_id:
                expand = False
            elif m.membership == "join" and listed.stamps.get(room_id, 0) > prev.position:
                expand = config.timeline_limit > max(prev.timeline_depth, 0) and (
                    config.timeline_limit > prev.config.timeline_limit
                )
            elif config != prev.config:
                expand = (
                    m.membership == "join"
                    and config.timeline_limit > prev.config.timeline_limit
                    and config.timeline_limit > prev.timeline_depth
                )
            else:
                continue
            if m.membership == "join":
                bump = bumps.get(room_id) or listed.stamps.get(room_id, 0)
            else:
                bump = m.stream_ordering or 0
            works.append(
                RoomWork(
                    room_id=room_id,
                    membership=m,
                    config=config,
                    prev=prev,
                    lists=listed.room_lists.get(room_id, []),
                    bump_stamp=bump,
                    is_dm=room_id in listed.dm_rooms,
                    expand_timeline=expand,
                )
            )
        total = sum(w.config.timeline_limit for w in works)
        if total > MAX_TIMELINE_EVENTS:
            # A request asking for more than the budget (many rooms, high limits) gets
            # fewer events per room, marked limited; the client paginates for more.
            cap = max(1, MAX_TIMELINE_EVENTS // len(works))
            for w in works:
                w.limit_cap = cap
        return works


def _scope(ext: ScopedExtension | None, listed: RoomList) -> frozenset[str]:
    """The joined rooms an account_data/receipts/typing extension covers."""
    if ext is None:
        return frozenset()
    out: set[str] = set()
    for room_id, names in listed.room_lists.items():
        if ext.lists is None or any(n in ext.lists for n in names):
            out.add(room_id)
    for room_id in listed.subscribed:
        if ext.rooms is None or room_id in ext.rooms:
            out.add(room_id)
    return frozenset(r for r in out if listed.memberships[r].membership == "join")

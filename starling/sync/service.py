"""The /sync service: tokens, long-polling, and assembling the response (DESIGN §5, §6).

A response covers a fixed window of every stream: (since, now] where `now` is read once
at the start (the events position and each registered extension's position). The rooms
part comes from `RoomSyncBuilder`; every other section from a `SyncExtension`.

Long-polling: an incremental sync whose token equals the current positions waits
without building anything. Otherwise the response is built, and if it is empty the
request waits on the notifier for the user and their joined rooms, then builds again
from the same `since`. The check "has anything moved since the response was built" and
the registration of the waiter happen with no await between them, so an event committed
in between is never missed. Waiting costs one future; a new event in one of the rooms
wakes it within one loop iteration (the event service's listener notifies after commit).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from starling.errors import MatrixError
from starling.notifier import Notifier
from starling.protocol.event import Event, StateKey
from starling.rooms.event_service import RoomEventService
from starling.storage.memberships import MembershipStore
from starling.sync.extension import SyncContext, SyncExtension
from starling.sync.filtering import SyncFilter
from starling.sync.room_sync import RoomsRequest, RoomSyncBuilder
from starling.sync.tokens import STREAM_NAME, SyncToken, pagination_token

logger = logging.getLogger(__name__)

# A long-poll waits at most this long, whatever the client asks (clients use 30 s).
MAX_TIMEOUT_MS = 5 * 60 * 1000


@dataclass
class SyncRequest:
    user_id: str
    device_id: str | None
    filter: SyncFilter
    since: SyncToken | None = None
    timeout_ms: int = 0
    full_state: bool = False
    set_presence: str | None = None
    use_state_after: bool = False
    # MSC4222 before it became stable: a client that asked with the unstable parameter
    # (`org.matrix.msc4222.use_state_after`, matrix-js-sdk) reads the unstable key.
    unstable_state_after: bool = False
    # False: `since` does not acknowledge what its response carried (SyncContext).
    acknowledge: bool = True

    @property
    def state_key(self) -> str:
        """The name of each room's state section in the response."""
        if not self.use_state_after:
            return "state"
        return "org.matrix.msc4222.state_after" if self.unstable_state_after else "state_after"


IgnoredUsersLookup = Callable[[str], Awaitable[frozenset[str]]]


class PeekSource(Protocol):
    """The rooms each device peeks into (rooms/peeks.py), on a stream of its own."""

    stream_name: str

    def current_position(self) -> int: ...

    async def peeked_rooms(self, user_id: str, device_id: str | None) -> dict[str, int]:
        """Room ID -> the stream position of the device's peek."""
        ...


class SyncService:
    def __init__(
        self,
        room_events: RoomEventService,
        memberships: MembershipStore,
        notifier: Notifier,
        rooms: RoomSyncBuilder,
    ) -> None:
        self._room_events = room_events
        self._memberships = memberships
        self._notifier = notifier
        self._rooms = rooms
        self._extensions: list[SyncExtension] = []
        self._ignored_users: IgnoredUsersLookup | None = None
        self._peeks: PeekSource | None = None
        # First: a woken /sync (no database trip for one new event) answers before the
        # senders and the push evaluator woken by the same event start reading.
        room_events.add_listener(self._on_new_event, first=True)
        room_events.add_state_listener(self._on_state_change)

    def use_ignored_users(self, lookup: IgnoredUsersLookup) -> None:
        """Where to read a user's m.ignored_user_list: their events (other than state)
        and their invites are left out of that user's syncs (spec: "Ignoring Users")."""
        self._ignored_users = lookup

    def use_peeks(self, peeks: PeekSource) -> None:
        """Where to read the rooms a device peeks into (MSC2753): they appear under
        `rooms.peek`, and their position is part of every sync token from now on."""
        if not STREAM_NAME.fullmatch(peeks.stream_name) or any(
            e.stream_name == peeks.stream_name for e in self._extensions
        ):
            raise ValueError(f"invalid peek stream name {peeks.stream_name!r}")
        self._peeks = peeks

    def _on_new_event(self, event: Event, position: int) -> None:
        users = [event.state_key] if event.type == "m.room.member" and event.state_key else []
        self._notifier.notify(users=users, rooms=[event.room_id])

    def _on_state_change(
        self, room_id: str, changed: Mapping[StateKey, str | None], position: int
    ) -> None:
        # A membership changed by state resolution (no member event of that user is new).
        users = [key for (etype, key), _ in changed.items() if etype == "m.room.member"]
        if users:
            self._notifier.notify(users=users, rooms=[room_id])

    # --- extensions ----------------------------------------------------------------------

    def add_extension(self, extension: SyncExtension) -> None:
        """Register a stream that contributes to /sync (typing, receipts, to-device...).
        Its position is part of every sync token from now on."""
        name = extension.stream_name
        if not STREAM_NAME.fullmatch(name):
            raise ValueError(f"invalid sync stream name {name!r}")
        if any(e.stream_name == name for e in self._extensions) or (
            self._peeks is not None and self._peeks.stream_name == name
        ):
            raise ValueError(f"sync stream {name!r} is already registered")
        self._extensions.append(extension)

    @property
    def extensions(self) -> tuple[SyncExtension, ...]:
        return tuple(self._extensions)

    def current_token(self) -> SyncToken:
        """Where every stream is now."""
        streams = {e.stream_name: e.current_position() for e in self._extensions}
        if self._peeks is not None:
            streams[self._peeks.stream_name] = self._peeks.current_position()
        return SyncToken(self._room_events.current_position, MappingProxyType(streams))

    def has_moved(self, since: SyncToken) -> bool:
        """Whether any stream is past `since` (or `since` lacks a stream's position)."""
        return not since.same_positions(self.current_token())

    # --- sync ----------------------------------------------------------------------------

    async def sync(self, req: SyncRequest) -> dict[str, Any]:
        timeout = min(max(req.timeout_ms, 0), MAX_TIMEOUT_MS) / 1000
        if req.since is None or req.full_state or timeout <= 0:
            response, _ = await self._build(req, self.current_token())
            return response
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        built: dict[str, Any] | None = None
        built_at = req.since  # the positions the last look covered
        while True:
            now = self.current_token()
            if not now.same_positions(built_at):
                built, has_data = await self._build(req, now)
                if has_data:
                    return built
                built_at = now
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            rooms = await self._memberships.get_joined_rooms(req.user_id)
            if self._peeks is not None:
                peeked = await self._peeks.peeked_rooms(req.user_id, req.device_id)
                if peeked:
                    rooms = [*rooms, *peeked]
            # No await from this check to the waiter's registration inside wait().
            if not self.current_token().same_positions(built_at):
                continue
            if not await self._notifier.wait(req.user_id, rooms, remaining):
                break  # timed out, or shutting down
        if built is None:
            built = self._empty_response(self._clamped(req.since))
        return built

    def _clamped(self, since: SyncToken) -> SyncToken:
        now = self.current_token()
        streams = {
            name: min(since.streams[name], pos)
            for name, pos in now.streams.items()
            if name in since.streams
        }
        return SyncToken(min(since.events, now.events), MappingProxyType(streams))

    @staticmethod
    def _empty_response(token: SyncToken) -> dict[str, Any]:
        return {
            "next_batch": token.encode(),
            "rooms": {"join": {}, "invite": {}, "leave": {}, "knock": {}},
        }

    async def _build(self, req: SyncRequest, now: SyncToken) -> tuple[dict[str, Any], bool]:
        since = req.since
        since_events = min(since.events, now.events) if since is not None else None
        streams = dict(now.streams)
        response: dict[str, Any] = {"next_batch": "", "rooms": {}}
        peeks: dict[str, bool] = {}
        if self._peeks is not None:
            name = self._peeks.stream_name
            peek_upto = now.streams[name]
            peek_since = None
            if since is not None and not req.full_state:
                peek_since = since.streams.get(name)
            for room_id, position in (
                await self._peeks.peeked_rooms(req.user_id, req.device_id)
            ).items():
                if position <= peek_upto:  # a later peek is the next response's
                    peeks[room_id] = peek_since is None or position > peek_since
        rooms = await self._rooms.build(
            RoomsRequest(
                user_id=req.user_id,
                device_id=req.device_id,
                filter=req.filter,
                since=since_events,
                upto=now.events,
                full_state=req.full_state,
                use_state_after=req.use_state_after,
                state_key=req.state_key,
                since_token=since.encode() if since is not None else None,
                next_token=now.encode(),
                ignored=(
                    await self._ignored_users(req.user_id)
                    if self._ignored_users is not None
                    else frozenset()
                ),
                peeks=peeks,
            )
        )
        response["rooms"] = rooms.rooms
        has_data = rooms.has_data
        for ext in self._extensions:
            name = ext.stream_name
            upto = now.streams[name]
            ext_since: int | None = None
            if since is not None and not req.full_state and name in since.streams:
                ext_since = min(since.streams[name], upto)
            ctx = SyncContext(
                user_id=req.user_id,
                device_id=req.device_id,
                since=ext_since,
                upto=upto,
                joined_rooms=rooms.joined_rooms,
                full_state=req.full_state,
                filter=dict(req.filter.raw),
                set_presence=req.set_presence,
                sync_filter=req.filter,
                acknowledge=req.acknowledge,
                newly_joined_users=rooms.newly_joined_users,
            )
            try:
                if await ext.contribute(ctx, response):
                    has_data = True
            except MatrixError:
                raise
            except Exception:
                # Keep the stream's old position so the next sync retries this range
                # instead of skipping it.
                logger.exception("sync extension %r failed for %s", name, req.user_id)
                if ext_since is None:
                    streams.pop(name, None)
                else:
                    streams[name] = ext_since
        self._complete_rooms(response, req, now.events)
        next_token = SyncToken(now.events, MappingProxyType(streams))
        response["next_batch"] = next_token.encode()
        return response, has_data

    @staticmethod
    def _complete_rooms(response: dict[str, Any], req: SyncRequest, upto: int) -> None:
        """Every room gets the sections clients expect to find, empty when nothing is
        new (as Synapse sends them): a room an extension added (ephemeral or account
        data only) an empty timeline and state, a joined room its `ephemeral` and
        `account_data`, a left room its `account_data`."""
        state_key = req.state_key
        for section in ("join", "leave"):
            rooms: Mapping[str, dict[str, Any]] = response["rooms"].get(section, {})
            for entry in rooms.values():
                if "timeline" not in entry:
                    entry["timeline"] = {
                        "events": [],
                        "limited": False,
                        "prev_batch": pagination_token(upto),
                    }
                    entry.setdefault(state_key, {"events": []})
                    if section == "join":
                        entry.setdefault("summary", {})
                entry.setdefault("account_data", {"events": []})
                if section == "join":
                    entry.setdefault("ephemeral", {"events": []})

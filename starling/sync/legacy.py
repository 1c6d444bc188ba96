"""The deprecated r0 reads clients used before /sync: GET /events (the event stream, with
`room_id` for peeking), GET /initialSync and GET /rooms/{roomId}/initialSync.

Spec: client-server-api "Syncing" (old_sync.yaml: /events, /initialSync) and "Peeking"
(room_initial_sync.yaml, /events?room_id=). Deprecated since r0, still served by Synapse
and used by older clients and SyTest. Everything here is built from the same streams and
reads as /sync: a token is a sync token (`s...`, sync.tokens) so `end` of one call is the
`from` of the next, and `messages.end` of an initialSync works as a /events `from` too.

/events returns, in (from, now]:
- the events of the rooms the user is joined to, oldest first, at most `limit` (then
  `end` stops after the last one returned, so the next call continues there), each passing
  history visibility; plus the user's own membership event in rooms they are invited to
  or have left in that window;
- with `room_id`: that room's events only, also for a non-member when the room is
  world-readable (peeking; 403 otherwise). Guests may only read this way;
- m.typing and m.receipt of those rooms (with `room_id`), account data (room account
  data with `room_id`), and m.presence of the users sharing a room with the user (or of
  the peeked room's members).
An empty answer waits up to `timeout` ms for something new, as /sync does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from types import MappingProxyType
from typing import Any, Protocol

from starling.errors import MatrixError
from starling.notifier import Notifier
from starling.rooms.client_format import EventFormatter, FormatOptions, JsonDict
from starling.rooms.visibility import HistoryVisibility
from starling.storage.events import EventStore
from starling.storage.memberships import MembershipStore
from starling.sync.extension import SyncContext
from starling.sync.history import RoomHistory
from starling.sync.service import MAX_TIMEOUT_MS, SyncService
from starling.sync.tokens import HistoryPosition, SyncToken

DEFAULT_EVENTS_LIMIT = 100
MAX_EVENTS_LIMIT = 1000
DEFAULT_INITIAL_SYNC_LIMIT = 10
# The streams whose sections /events and initialSync carry (to-device messages, device
# lists and unread counts are /sync-only).
EPHEMERAL_STREAMS = ("typing", "receipts")
ACCOUNT_DATA_STREAM = "account_data"
PRESENCE_STREAM = "presence"


# m.presence events for these users changed in (since, upto] (since None: everyone not
# offline, or everyone with include_offline), as /sync shapes them.
class PresenceEvents(Protocol):
    def __call__(
        self, users: set[str], since: int | None, upto: int, *, include_offline: bool = False
    ) -> Awaitable[list[dict[str, Any]]]: ...


# Wraps a long-poll of the user: keeps them online while it runs (presence).
UserSyncing = Callable[[str, str | None], AbstractAsyncContextManager[None]]
# Whether a room is published in the room directory.
IsPublic = Callable[[str], Awaitable[bool]]


class LegacySync:
    def __init__(
        self,
        sync: SyncService,
        events: EventStore,
        memberships: MembershipStore,
        visibility: HistoryVisibility,
        formatter: EventFormatter,
        history: RoomHistory,
        notifier: Notifier,
        presence_events: PresenceEvents,
        is_public: IsPublic,
        user_syncing: UserSyncing,
    ) -> None:
        self._sync = sync
        self._events = events
        self._memberships = memberships
        self._visibility = visibility
        self._formatter = formatter
        self._history = history
        self._notifier = notifier
        self._presence_events = presence_events
        self._is_public = is_public
        self._user_syncing = user_syncing

    # --- GET /events ---------------------------------------------------------------------

    async def events(
        self,
        user_id: str,
        device_id: str | None,
        *,
        is_guest: bool,
        from_token: SyncToken | None,
        timeout_ms: int,
        limit: int | None,
        room_id: str | None,
    ) -> JsonDict:
        if room_id is None and is_guest:
            raise MatrixError(
                403, "M_GUEST_ACCESS_FORBIDDEN", "Guests must give a room_id to /events"
            )
        if room_id is not None:
            await self._history.access(user_id, room_id)  # 403 unless they may read it
        # Like /sync (and Synapse's /events), a reader of the stream is online.
        async with self._user_syncing(user_id, None):
            return await self._stream(user_id, device_id, from_token, timeout_ms, limit, room_id)

    async def _stream(
        self,
        user_id: str,
        device_id: str | None,
        from_token: SyncToken | None,
        timeout_ms: int,
        limit: int | None,
        room_id: str | None,
    ) -> JsonDict:
        limit = DEFAULT_EVENTS_LIMIT if limit is None else max(1, min(limit, MAX_EVENTS_LIMIT))
        now = self._sync.current_token()
        since = from_token if from_token is not None else now
        start = since.encode()
        timeout = min(max(timeout_ms, 0), MAX_TIMEOUT_MS) / 1000
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            chunk, end = await self._events_between(user_id, device_id, room_id, since, now, limit)
            if chunk:
                return {"start": start, "end": end.encode(), "chunk": chunk}
            remaining = deadline - loop.time()
            if remaining <= 0:
                return {"start": start, "end": end.encode(), "chunk": []}
            rooms = set(await self._memberships.get_joined_rooms(user_id))
            if room_id is not None:
                rooms.add(room_id)
            # No await between this check and the waiter's registration inside wait().
            latest = self._sync.current_token()
            if latest.same_positions(now):
                if not await self._notifier.wait(user_id, rooms, remaining):
                    return {"start": start, "end": end.encode(), "chunk": []}
                latest = self._sync.current_token()
            since, now = end, latest

    async def _events_between(
        self,
        user_id: str,
        device_id: str | None,
        room_id: str | None,
        since: SyncToken,
        now: SyncToken,
        limit: int,
    ) -> tuple[list[JsonDict], SyncToken]:
        """The chunk for (since, now] and the token after it."""
        lower = min(since.events, now.events)
        memberships = await self._memberships.get_rooms_for_user(user_id)
        if room_id is not None:
            joined = {room_id}
            peeking = memberships.get(room_id) is None or (
                memberships[room_id].membership != "join"
            )
            own_changes: list[str] = []
        else:
            joined = {r for r, m in memberships.items() if m.membership == "join"}
            peeking = False
            own_changes = [
                m.event_id
                for m in memberships.values()
                if m.membership != "join"
                and m.stream_ordering is not None
                and lower < m.stream_ordering <= now.events
            ]
        fetched = await self._events.get_events_for_rooms_between(
            sorted(joined), lower, now.events, limit
        )
        end_position = now.events
        if len(fetched) >= limit:
            end_position = fetched[-1].meta.stream_ordering or now.events
        if own_changes:
            extra = await self._events.get_events_with_meta(own_changes)
            fetched.extend(
                pair
                for pair in extra.values()
                if pair.meta.stream_ordering is not None
                and pair.meta.stream_ordering <= end_position
            )
            fetched.sort(key=lambda p: p.meta.stream_ordering or 0)
        visible = await self._visibility.filter_events(
            user_id,
            fetched,
            # Members read their rooms; only a room_id reader who is not joined peeks.
            joined_rooms=set() if peeking else {p.event.room_id for p in fetched},
        )
        chunk = _v1(await self._formatter.format(visible, FormatOptions(user_id, device_id)))
        streams = dict(now.streams)
        sections = await self._stream_sections(
            user_id, device_id, since, now, joined, include_presence=False
        )
        chunk.extend(_flatten_ephemeral(sections))
        chunk.extend(_flatten_account_data(sections, joined))
        presence_since = since.streams.get(PRESENCE_STREAM)
        presence_upto = now.streams.get(PRESENCE_STREAM)
        if presence_upto is not None and presence_since is not None:
            users = await self._presence_audience(user_id, room_id, peeking)
            chunk.extend(
                _legacy_presence(
                    await self._presence_events(
                        users, min(presence_since, presence_upto), presence_upto
                    )
                )
            )
        end = SyncToken(end_position, MappingProxyType(streams))
        return chunk, end

    async def _presence_audience(
        self, user_id: str, room_id: str | None, peeking: bool
    ) -> set[str]:
        users = await self._memberships.users_sharing_a_room(user_id)
        users.add(user_id)
        if room_id is not None:
            room_users = set(await self._memberships.get_joined_users(room_id))
            users = room_users if peeking else users & (room_users | {user_id})
        return users

    async def _stream_sections(
        self,
        user_id: str,
        device_id: str | None,
        since: SyncToken | None,
        now: SyncToken,
        joined: Iterable[str],
        *,
        include_presence: bool,
    ) -> dict[str, Any]:
        """A /sync-shaped response holding the typing, receipts, account data (and
        presence) sections of (since, now] for these rooms."""
        names = {*EPHEMERAL_STREAMS, ACCOUNT_DATA_STREAM}
        if include_presence:
            names.add(PRESENCE_STREAM)
        response: dict[str, Any] = {"rooms": {"join": {}}}
        rooms = frozenset(joined)
        for ext in self._sync.extensions:
            name = ext.stream_name
            if name not in names or name not in now.streams:
                continue
            upto = now.streams[name]
            ext_since = None
            if since is not None:
                if name not in since.streams:
                    continue  # a token from before this stream existed: nothing to say
                ext_since = min(since.streams[name], upto)
            await ext.contribute(
                SyncContext(
                    user_id=user_id,
                    device_id=device_id,
                    since=ext_since,
                    upto=upto,
                    joined_rooms=rooms,
                    set_presence="offline",
                ),
                response,
            )
        return response

    # --- GET /initialSync ----------------------------------------------------------------

    async def initial_sync(
        self, user_id: str, device_id: str | None, *, limit: int | None, archived: bool
    ) -> JsonDict:
        # A client starting up is online (Synapse's initialSync shows the user so).
        async with self._user_syncing(user_id, None):
            return await self._initial_sync(user_id, device_id, limit, archived)

    async def _initial_sync(
        self, user_id: str, device_id: str | None, limit: int | None, archived: bool
    ) -> JsonDict:
        limit = DEFAULT_INITIAL_SYNC_LIMIT if limit is None else max(0, min(limit, 100))
        now = self._sync.current_token()
        memberships = await self._memberships.get_rooms_for_user(user_id)
        wanted = ("join", "invite", "leave", "ban") if archived else ("join", "invite")
        forgotten = await self._memberships.forgotten_rooms(user_id)
        joined = sorted(r for r, m in memberships.items() if m.membership == "join")
        sections = await self._stream_sections(
            user_id, device_id, None, now, joined, include_presence=True
        )
        rooms: list[JsonDict] = []
        for room_id, m in sorted(memberships.items()):
            if m.membership not in wanted or room_id in forgotten:
                continue
            if m.membership == "invite":
                found = await self._events.get_events_with_meta([m.event_id])
                entry: JsonDict = {"room_id": room_id, "membership": "invite"}
                if m.event_id in found:
                    entry["invite"] = _v1(
                        [
                            await self._formatter.format_one(
                                found[m.event_id], FormatOptions(user_id, device_id)
                            )
                        ]
                    )[0]
                rooms.append(entry)
                continue
            try:
                entry = await self._room_snapshot(user_id, device_id, room_id, limit, now)
            except MatrixError:
                continue  # a room they can no longer read (never joined it)
            entry["membership"] = m.membership
            entry["account_data"] = _room_section(sections, room_id, "account_data")
            rooms.append(entry)
        receipts: list[JsonDict] = []
        for room_id in joined:
            for event in _room_section(sections, room_id, "ephemeral"):
                if event.get("type") == "m.receipt":
                    receipts.append({**event, "room_id": room_id})
        return {
            "end": now.encode(),
            "rooms": rooms,
            "presence": _legacy_presence(sections.get("presence", {}).get("events", [])),
            "account_data": list(sections.get("account_data", {}).get("events", [])),
            "receipts": receipts,
        }

    async def _room_snapshot(
        self, user_id: str, device_id: str | None, room_id: str, limit: int, now: SyncToken
    ) -> JsonDict:
        """room_id, messages, state and visibility of a room as the user may read it (403
        when they may not)."""
        state = _v1(await self._history.state_events(user_id, room_id))
        page = await self._history.messages(
            user_id,
            device_id,
            room_id,
            from_pos=None,
            from_token=None,
            to_pos=None,
            backwards=True,
            limit=limit,
        )
        chunk = _v1(list(reversed(page["chunk"])))
        start = page.get("end") or HistoryPosition(0).encode()
        return {
            "room_id": room_id,
            "messages": {"chunk": chunk, "start": start, "end": now.encode()},
            "state": state,
            "visibility": "public" if await self._is_public(room_id) else "private",
        }

    # --- GET /rooms/{roomId}/initialSync -------------------------------------------------

    async def room_initial_sync(
        self, user_id: str, device_id: str | None, room_id: str, *, limit: int | None
    ) -> JsonDict:
        async with self._user_syncing(user_id, None):
            return await self._room_initial_sync(user_id, device_id, room_id, limit)

    async def _room_initial_sync(
        self, user_id: str, device_id: str | None, room_id: str, limit: int | None
    ) -> JsonDict:
        limit = DEFAULT_INITIAL_SYNC_LIMIT if limit is None else max(0, min(limit, 100))
        access = await self._history.access(user_id, room_id)
        now = self._sync.current_token()
        entry = await self._room_snapshot(user_id, device_id, room_id, limit, now)
        membership = access.membership
        entry["membership"] = membership if membership is not None else "leave"
        if not access.joined and access.departure_event is not None:
            # A departed member sees the room as it was: nothing current.
            entry.update(presence=[], receipts=[], account_data=[])
            return entry
        sections = await self._stream_sections(
            user_id, device_id, None, now, [room_id], include_presence=False
        )
        members = set(await self._memberships.get_joined_users(room_id))
        presence_upto = now.streams.get(PRESENCE_STREAM)
        presence: list[JsonDict] = []
        if presence_upto is not None and members:
            presence = _legacy_presence(
                await self._presence_events(members, None, presence_upto, include_offline=True)
            )
        entry["presence"] = presence
        entry["receipts"] = [
            {**event, "room_id": room_id}
            for event in _room_section(sections, room_id, "ephemeral")
            if event.get("type") == "m.receipt"
        ]
        entry["account_data"] = (
            _room_section(sections, room_id, "account_data") if access.joined else []
        )
        return entry


def _room_section(sections: Mapping[str, Any], room_id: str, name: str) -> list[JsonDict]:
    room = sections.get("rooms", {}).get("join", {}).get(room_id, {})
    return list(room.get(name, {}).get("events", []))


def _flatten_ephemeral(sections: Mapping[str, Any]) -> list[JsonDict]:
    out: list[JsonDict] = []
    for room_id, room in sections.get("rooms", {}).get("join", {}).items():
        for event in room.get("ephemeral", {}).get("events", []):
            out.append({**event, "room_id": room_id})
    return out


def _flatten_account_data(sections: Mapping[str, Any], rooms: set[str]) -> list[JsonDict]:
    out: list[JsonDict] = list(sections.get("account_data", {}).get("events", []))
    for room_id, room in sections.get("rooms", {}).get("join", {}).items():
        if room_id in rooms:
            for event in room.get("account_data", {}).get("events", []):
                out.append({**event, "room_id": room_id})
    return out


def _legacy_presence(events: Iterable[Mapping[str, Any]]) -> list[JsonDict]:
    """m.presence as the r0 APIs gave it: the user also in `content.user_id`."""
    out: list[JsonDict] = []
    for event in events:
        content = dict(event.get("content", {}))
        content["user_id"] = event.get("sender")
        out.append({**event, "content": content})
    return out


def _v1(events: list[JsonDict]) -> list[JsonDict]:
    """Room events as the r0 APIs gave them: the sender also as `user_id`, and `age`
    beside `unsigned` (Synapse's client v1 format)."""
    for event in events:
        if "sender" in event:
            event.setdefault("user_id", event["sender"])
        unsigned = event.get("unsigned")
        if isinstance(unsigned, dict) and "age" in unsigned:
            event.setdefault("age", unsigned["age"])
    return events

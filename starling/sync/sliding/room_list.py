"""The user's room list for sliding sync: which rooms, in which order, and what each list
and subscription matches (MSC4186 "Lists and subscriptions").

The list holds the rooms the user is joined to, invited to or knocked on, was kicked or
banned from (after having been in), and rooms they left themselves only if this
connection was sent them before. Forgotten rooms and invites from ignored users never
appear. Rooms are ordered by last activity: the newest event of a joined room, the
membership event otherwise (MSC "Activity ordering"), newest first, then by room ID.

`RoomActivity` keeps each room's newest event position and newest "bump" event position
in memory, updated by the new-event listener and loaded for unknown rooms in one batch,
so ordering 500 rooms costs no query once warm. (One process: a second one would hear
events through the notifier's successor, see DESIGN "More than one process".)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starling.protocol.event import Event
from starling.storage.account_data import GLOBAL, AccountDataStore
from starling.storage.events import EventStore, LruCache
from starling.storage.memberships import Membership, MembershipStore
from starling.storage.sliding_sync import SlidingSyncStore
from starling.sync.sliding.connections import Snapshot
from starling.sync.sliding.request import CombinedConfig, ListFilters, RoomConfig, SlidingRequest

# MSC4186 bump_stamp: "proper" activity.
BUMP_TYPES = (
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
)
_BUMP = frozenset(BUMP_TYPES)
SPACE_TYPE = "m.space"
MAX_OP_ROOM_IDS = 10_000


class RoomActivity:
    """Each room's newest served event position, and newest bump-type event position."""

    def __init__(
        self, store: SlidingSyncStore, start_position: int, cache_size: int = 200_000
    ) -> None:
        self._store = store
        self._last: LruCache[str, int] = LruCache(cache_size)
        self._bump: LruCache[str, int] = LruCache(cache_size)
        # Where each room's current state last changed, for every change since
        # `start_position` (listeners run in the commit's callbacks, before any reader can
        # see its position): a room absent here has not changed since then.
        self._start = start_position
        self._state_at: dict[str, int] = {}

    def on_state_change(self, room_id: str, changed: Mapping[Any, Any], position: int) -> None:
        if position > self._state_at.get(room_id, 0):
            self._state_at[room_id] = position

    def state_changed_after(self, room_id: str, position: int) -> bool:
        """Whether the room's current state may have changed after `position`."""
        if position < self._start:
            return True
        return self._state_at.get(room_id, 0) > position

    def on_new_event(self, event: Event, position: int) -> None:
        self._raise(self._last, event.room_id, position)
        if event.type in _BUMP:
            self._raise(self._bump, event.room_id, position)

    @staticmethod
    def _raise(cache: LruCache[str, int], room_id: str, position: int) -> None:
        # Only ever forward: a load that began before this event cannot move it back.
        old = cache.get(room_id)
        if old is None or old < position:
            cache.put(room_id, position)

    async def _read(
        self, cache: LruCache[str, int], room_ids: Iterable[str], types: Sequence[str] | None
    ) -> dict[str, int]:
        out: dict[str, int] = {}
        missing: list[str] = []
        for room_id in room_ids:
            hit = cache.get(room_id)
            if hit is None:
                missing.append(room_id)
            else:
                out[room_id] = hit
        if missing:
            loaded = await self._store.last_positions(missing, types)
            for room_id in missing:
                position = loaded.get(room_id, 0)
                self._raise(cache, room_id, position)
                out[room_id] = cache.get(room_id) or position
        return out

    async def last(self, room_ids: Iterable[str]) -> dict[str, int]:
        return await self._read(self._last, room_ids, None)

    async def bump(self, room_ids: Iterable[str]) -> dict[str, int]:
        return await self._read(self._bump, room_ids, BUMP_TYPES)


@dataclass(frozen=True, slots=True)
class RoomMeta:
    room_type: str | None
    encrypted: bool


class RoomMetaCache:
    """Room type (never changes) and whether a room is encrypted (never undone), from
    the current state; rooms with no local state (remote invites) from the stripped
    state their invite carried."""

    def __init__(self, store: SlidingSyncStore, events: EventStore) -> None:
        self._store = store
        self._events = events
        self._cache: LruCache[str, RoomMeta] = LruCache(200_000)

    def on_state_change(self, room_id: str, changed: Mapping[Any, Any], position: int) -> None:
        if ("m.room.encryption", "") in changed or ("m.room.create", "") in changed:
            self._cache.pop(room_id)

    async def get(self, memberships: Mapping[str, Membership]) -> dict[str, RoomMeta]:
        out: dict[str, RoomMeta] = {}
        missing = []
        for room_id in memberships:
            hit = self._cache.get(room_id)
            if hit is None:
                missing.append(room_id)
            else:
                out[room_id] = hit
        if not missing:
            return out
        # An encryption event committed while this reads pops the room first: the
        # older answer is then not cached (`fill`), or the room read as unencrypted
        # until evicted.
        generation = self._cache.generation
        state = await self._store.current_state_of_types(
            missing, ("m.room.create", "m.room.encryption")
        )
        ids = [eid for entries in state.values() for eid in entries.values()]
        no_state = [r for r in missing if ("m.room.create", "") not in state.get(r, {})]
        ids.extend(memberships[r].event_id for r in no_state)
        events = await self._events.get_events(ids)
        for room_id in missing:
            entries = state.get(room_id, {})
            create = events.get(entries.get(("m.room.create", ""), ""))
            if create is not None:
                room_type = create.content.get("type")
                meta = RoomMeta(
                    room_type if isinstance(room_type, str) else None,
                    ("m.room.encryption", "") in entries,
                )
                self._cache.fill(room_id, meta, generation)
            else:
                # A remote invite or knock: what the stripped state says (not cached, it
                # changes once the user joins).
                member = events.get(memberships[room_id].event_id)
                meta = _meta_from_stripped(member.unsigned if member is not None else {})
            out[room_id] = meta
        return out


def _meta_from_stripped(unsigned: Mapping[str, Any]) -> RoomMeta:
    room_type: str | None = None
    encrypted = False
    for key in ("invite_room_state", "knock_room_state"):
        stripped = unsigned.get(key)
        if not isinstance(stripped, list):
            continue
        for ev in stripped:
            if not isinstance(ev, dict):
                continue
            if ev.get("type") == "m.room.create" and isinstance(ev.get("content"), dict):
                value = ev["content"].get("type")
                room_type = value if isinstance(value, str) else None
            elif ev.get("type") == "m.room.encryption":
                encrypted = True
    return RoomMeta(room_type, encrypted)


@dataclass
class ListResult:
    count: int
    ops: list[dict[str, Any]]


@dataclass
class RoomList:
    """What the request's lists and subscriptions match."""

    memberships: dict[str, Membership]
    lists: dict[str, ListResult]
    # Every matched room: the names of the lists it matched, and its combined config.
    room_lists: dict[str, list[str]] = field(default_factory=dict)
    configs: dict[str, CombinedConfig] = field(default_factory=dict)
    subscribed: set[str] = field(default_factory=set)
    stamps: dict[str, int] = field(default_factory=dict)
    dm_rooms: frozenset[str] = frozenset()


IgnoredLookup = Callable[[str], Awaitable[frozenset[str]]]


class RoomLister:
    def __init__(
        self,
        memberships: MembershipStore,
        events: EventStore,
        store: SlidingSyncStore,
        account_data: AccountDataStore,
        activity: RoomActivity,
        meta: RoomMetaCache,
    ) -> None:
        self._memberships = memberships
        self._events = events
        self._store = store
        self._account_data = account_data
        self._activity = activity
        self._meta = meta

    async def candidates(
        self, user_id: str, snapshot: Snapshot, ignored: frozenset[str]
    ) -> dict[str, Membership]:
        """The rooms that may appear in the user's lists, with their memberships."""
        all_rooms = await self._memberships.get_rooms_for_user(user_id)
        forgotten = await self._memberships.forgotten_rooms(user_id)
        rooms = {r: m for r, m in all_rooms.items() if r not in forgotten}
        check = [m for m in rooms.values() if m.membership in ("invite", "leave", "ban")]
        events = await self._events.get_events(m.event_id for m in check)
        departed = [m.room_id for m in check if m.membership in ("leave", "ban")]
        ever_joined = (
            await self._memberships.rooms_ever_joined(user_id, departed) if departed else set()
        )
        out: dict[str, Membership] = {}
        for room_id, m in rooms.items():
            if m.membership in ("join", "knock"):
                out[room_id] = m
                continue
            ev = events.get(m.event_id)
            sender = ev.sender if ev is not None else user_id
            if m.membership == "invite":
                if sender not in ignored:
                    out[room_id] = m
            elif room_id in snapshot.rooms:
                # Sent on this connection before: the client hears it is gone.
                out[room_id] = m
            elif sender != user_id and room_id in ever_joined:
                # Kicked or banned after having been in.
                out[room_id] = m
        return out

    async def build(
        self, req: SlidingRequest, snapshot: Snapshot, ignored: frozenset[str]
    ) -> RoomList:
        rooms = await self.candidates(req.user_id, snapshot, ignored)
        joined = [r for r, m in rooms.items() if m.membership == "join"]
        last = await self._activity.last(joined)
        stamps = {
            r: (last.get(r, 0) if m.membership == "join" else (m.stream_ordering or 0))
            for r, m in rooms.items()
        }
        order = sorted(rooms, key=lambda r: (-stamps[r], r))
        result = RoomList(rooms, {}, stamps=stamps)
        filters = [lst.filters for lst in req.lists.values()]
        needs_meta = any(
            f.is_encrypted is not None or f.room_types is not None or f.not_room_types
            for f in filters
        )
        meta = await self._meta.get(rooms) if needs_meta else {}
        needs_dm = any(f.is_dm is not None for f in filters) or bool(req.lists or req.subscriptions)
        if needs_dm:
            result.dm_rooms = await self._dm_rooms(req.user_id)
        tags = await self._tags(req.user_id) if any(f.tags or f.not_tags for f in filters) else {}
        children = await self._space_children(
            req.user_id, rooms, {s for f in filters if f.spaces for s in f.spaces}
        )
        configs: dict[str, list[RoomConfig]] = {}
        op_ids = 0
        for name, lst in req.lists.items():
            f = lst.filters
            matched = [
                r
                for r in order
                if _passes(f, r, rooms[r], meta.get(r), result.dm_rooms, tags, children)
            ]
            ops: list[dict[str, Any]] = []
            if lst.ranges is None:
                windows = [(0, len(matched) - 1)] if matched else []
                in_range = matched
            else:
                windows = list(lst.ranges)
                seen: set[str] = set()
                in_range = []
                for start, end in windows:
                    for r in matched[start : end + 1]:
                        if r not in seen:
                            seen.add(r)
                            in_range.append(r)
            for start, end in windows:
                ids = matched[start : end + 1]
                # `ops` (Synapse's, which current clients ignore) is bounded per response:
                # many lists of wide ranges must not multiply the user's room IDs.
                if op_ids + len(ids) > MAX_OP_ROOM_IDS:
                    continue
                op_ids += len(ids)
                ops.append({"op": "SYNC", "range": [start, end], "room_ids": ids})
            result.lists[name] = ListResult(len(matched), ops)
            for r in in_range:
                result.room_lists.setdefault(r, []).append(name)
                configs.setdefault(r, []).append(lst.config)
        subs = [r for r in req.subscriptions if r not in rooms]
        if subs:
            # Not in the list (left themselves, or a ban): the room is theirs to see if
            # they were ever in it. Otherwise (never a member, or forgotten) it is
            # ignored, as the MSC says.
            everything = await self._memberships.get_rooms_for_user(req.user_id)
            forgotten = await self._memberships.forgotten_rooms(req.user_id)
            others = {r: everything[r] for r in subs if r in everything and r not in forgotten}
            ever = await self._memberships.rooms_ever_joined(req.user_id, others)
            for room_id, m in others.items():
                if room_id in ever:
                    result.memberships[room_id] = m
                    result.stamps[room_id] = m.stream_ordering or 0
        for room_id, config in req.subscriptions.items():
            if room_id in result.memberships:
                result.subscribed.add(room_id)
                configs.setdefault(room_id, []).append(config)
        result.configs = {r: CombinedConfig.of(c) for r, c in configs.items()}
        return result

    async def _dm_rooms(self, user_id: str) -> frozenset[str]:
        content = await self._account_data.get(user_id, GLOBAL, "m.direct")
        out: set[str] = set()
        if isinstance(content, dict):
            for rooms in content.values():
                if isinstance(rooms, list):
                    out.update(r for r in rooms if isinstance(r, str))
        return frozenset(out)

    async def _tags(self, user_id: str) -> dict[str, frozenset[str]]:
        # Every account data entry of the user in one read; only m.tag ones are kept.
        changes = await self._account_data.get_changes(user_id, None, 2**62)
        out: dict[str, frozenset[str]] = {}
        for change in changes:
            if change.room_id != GLOBAL and change.data_type == "m.tag":
                tags = change.content.get("tags")
                if isinstance(tags, dict):
                    out[change.room_id] = frozenset(t for t in tags if isinstance(t, str))
        return out

    async def _space_children(
        self, user_id: str, rooms: Mapping[str, Membership], spaces: set[str]
    ) -> frozenset[str]:
        """The rooms named by m.space.child events (with a `via`) of the given spaces the
        user is joined to; subspaces are not walked (MSC)."""
        joined = [s for s in spaces if s in rooms and rooms[s].membership == "join"]
        if not joined:
            return frozenset()
        state = await self._store.current_state_of_types(joined, ("m.space.child",))
        ids = [eid for entries in state.values() for eid in entries.values()]
        events = await self._events.get_events(ids)
        out: set[str] = set()
        for entries in state.values():
            for (_, child), eid in entries.items():
                ev = events.get(eid)
                if ev is not None and isinstance(ev.content.get("via"), list) and ev.content["via"]:
                    out.add(child)
        return frozenset(out)


def _passes(
    f: ListFilters,
    room_id: str,
    m: Membership,
    meta: RoomMeta | None,
    dm_rooms: frozenset[str],
    tags: Mapping[str, frozenset[str]],
    children: frozenset[str],
) -> bool:
    if f.is_invite is not None and (m.membership == "invite") != f.is_invite:
        return False
    if f.is_dm is not None and (room_id in dm_rooms) != f.is_dm:
        return False
    if f.spaces is not None and room_id not in children:
        return False
    if meta is not None:
        if f.is_encrypted is not None and meta.encrypted != f.is_encrypted:
            return False
        if meta.room_type in f.not_room_types:
            return False
        if f.room_types is not None and meta.room_type not in f.room_types:
            return False
    if f.tags is not None or f.not_tags:
        room_tags = tags.get(room_id, frozenset())
        if room_tags & f.not_tags:
            return False
        if f.tags is not None and not room_tags & f.tags:
            return False
    return True

"""Each room's result in a sliding sync response (MSC4186 "Room results").

A room is sent whole (`initial: true`) the first time a connection gets it, or when the
user's membership moved it into a new life (an invite accepted, a rejoin); otherwise only
what changed since the connection last had it: new timeline events, state entries that
changed and that the room's `required_state` asks for (a removed entry as a
`{type, state_key}` stub), and the fields that changed (name, avatar, counts, heroes).
A raised `timeline_limit` re-sends the newest events (`expanded_timeline`); a widened
`required_state` sends the newly matched state.

Everything is read in batches for all rooms of the response: timelines (statements of 10
rooms at once, per distinct limit), visibility (per distinct state group), current state
(cached), each room's state at its own last position (one read of the state-delta
stream, skipped for rooms whose state did not change), summaries, unread counts, bump
stamps, and one formatting pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from starling.protocol.event import StateKey
from starling.rooms.client_format import EventFormatter, FormatOptions, JsonDict
from starling.rooms.visibility import HistoryVisibility
from starling.storage.events import EventStore, StoredEvent
from starling.storage.memberships import Membership, MembershipStore
from starling.storage.sliding_sync import SlidingSyncStore
from starling.storage.state import StateStore
from starling.sync.room_sync import MAX_HEROES, RoomSyncBuilder
from starling.sync.sliding.connections import RoomSent
from starling.sync.sliding.request import CombinedConfig
from starling.sync.tokens import pagination_token

# A client that had a room's whole timeline (it was never limited) has "every" event.
ALL_EVENTS = 2**31
MAX_FETCH = 1001
TIMELINE_CHUNK = 10

UnreadLookup = Callable[[str, Iterable[str]], Awaitable[Mapping[str, Mapping[str, list[int]]]]]


@dataclass
class RoomWork:
    room_id: str
    membership: Membership
    config: CombinedConfig
    prev: RoomSent | None  # what the connection has; None: send the room whole
    lists: list[str]
    bump_stamp: int
    is_dm: bool
    expand_timeline: bool = False
    # The response's event budget may lower the limit (the timeline is then `limited`).
    limit_cap: int | None = None
    # filled while building
    upper: int = 0
    lower: int | None = None
    events: list[StoredEvent] = field(default_factory=list)  # oldest first
    limited: bool = False


@dataclass
class BuiltRooms:
    rooms: dict[str, JsonDict]
    sent: dict[str, RoomSent]


class RoomResultBuilder:
    def __init__(
        self,
        events: EventStore,
        state: StateStore,
        memberships: MembershipStore,
        visibility: HistoryVisibility,
        formatter: EventFormatter,
        rooms_v2: RoomSyncBuilder,
        state_changed_after: Callable[[str, int], bool],
        store: SlidingSyncStore,
    ) -> None:
        self._events = events
        self._state = state
        self._memberships = memberships
        self._visibility = visibility
        self._formatter = formatter
        self._rooms_v2 = rooms_v2
        self._state_changed_after = state_changed_after
        self._store = store
        self._unread: UnreadLookup | None = None

    def use_unread_counts(self, lookup: UnreadLookup) -> None:
        """Where notification and highlight counts come from (receipts' unread counts)."""
        self._unread = lookup

    async def build(
        self,
        user_id: str,
        device_id: str | None,
        works: Sequence[RoomWork],
        upto: int,
        live_after: int | None,
        ignored: frozenset[str],
    ) -> BuiltRooms:
        """`live_after`: the events position of the connection's previous response
        (events after it are "live"); None on a connection's first response."""
        out = BuiltRooms({}, {})
        stripped = [w for w in works if w.membership.membership in ("invite", "knock")]
        full = [w for w in works if w.membership.membership not in ("invite", "knock")]
        if stripped:
            await self._stripped(user_id, device_id, stripped, ignored, out)
        if full:
            await self._full(user_id, device_id, full, upto, live_after, ignored, out)
        return out

    async def _stripped(
        self,
        user_id: str,
        device_id: str | None,
        works: Sequence[RoomWork],
        ignored: frozenset[str],
        out: BuiltRooms,
    ) -> None:
        by_key: dict[str, list[Membership]] = {}
        for w in works:
            key = "invite_state" if w.membership.membership == "invite" else "knock_state"
            by_key.setdefault(key, []).append(w.membership)
        states: dict[str, list[JsonDict]] = {}
        for key, ms in by_key.items():
            states.update(await self._rooms_v2.stripped_state(user_id, device_id, ms, key, ignored))
        for w in works:
            m = w.membership
            out.sent[w.room_id] = RoomSent(
                m.stream_ordering or 0, m.membership, m.event_id, w.config
            )
            if w.prev is not None and w.prev.membership_event == m.event_id:
                continue  # nothing new about an invite the client has
            events = states.get(w.room_id)
            if events is None:
                continue
            entry: JsonDict = {
                "initial": True,
                "membership": m.membership,
                # Synapse's name (what Element X reads) and the MSC's newer one.
                "invite_state": events,
                "stripped_state": events,
                "bump_stamp": w.bump_stamp,
            }
            for ev in events:
                if ev.get("type") == "m.room.name" and isinstance(ev.get("content"), dict):
                    name = ev["content"].get("name")
                    if isinstance(name, str) and name:
                        entry["name"] = name
            if w.lists:
                entry["lists"] = w.lists
            if w.is_dm:
                entry["is_dm"] = True
            out.rooms[w.room_id] = entry

    # --- joined and departed rooms -------------------------------------------------------

    async def _full(
        self,
        user_id: str,
        device_id: str | None,
        works: Sequence[RoomWork],
        upto: int,
        live_after: int | None,
        ignored: frozenset[str],
        out: BuiltRooms,
    ) -> None:
        joined = frozenset(w.room_id for w in works if w.membership.membership == "join")
        for w in works:
            m = w.membership
            w.upper = upto if m.membership == "join" else min(m.stream_ordering or upto, upto)
            w.lower = None if w.prev is None or w.expand_timeline else w.prev.position
            if w.lower is not None and w.lower > w.upper:
                w.lower = w.upper
        await self._timelines(user_id, works, joined, ignored)

        # State: the room's (current) state at its upper bound, and for rooms the client
        # has, the state at what it has.
        current = await self._state.get_current_state_for_rooms(joined)
        targets: dict[str, Mapping[StateKey, str]] = dict(current)
        targets.update(
            await self._states_at({w.room_id: w.upper for w in works if w.room_id not in joined})
        )
        before: dict[str, Mapping[StateKey, str]] = {}
        known: dict[str, int] = {}
        for w in works:
            if w.prev is None or w.prev.membership != "join":
                continue
            if w.room_id in joined and not self._state_changed_after(w.room_id, w.prev.position):
                before[w.room_id] = targets.get(w.room_id, {})  # unchanged: no read
            else:
                known[w.room_id] = w.prev.position
        before.update(await self._states_at(known))

        empty: Mapping[StateKey, str] = {}
        chosen: dict[str, dict[StateKey, str]] = {}
        removed: dict[str, list[StateKey]] = {}
        lazy_sent: dict[str, dict[str, str]] = {}
        member_changed: set[str] = set()
        for w in works:
            target = targets.get(w.room_id, empty)
            picked: dict[StateKey, str] = {}
            gone: list[StateKey] = []
            prev = w.prev
            whole = prev is None or prev.membership != "join"
            if whole:
                picked = {k: v for k, v in target.items() if w.config.matches(k)}
                member_changed.add(w.room_id)
            else:
                old = before.get(w.room_id, empty)
                for k in set(old) | set(target) if old is not target else ():
                    if old.get(k) == target.get(k):
                        continue
                    if k[0] == "m.room.member":
                        member_changed.add(w.room_id)
                    if not w.config.matches(k):
                        continue
                    if k in target:
                        picked[k] = target[k]
                    else:
                        gone.append(k)
                if prev is not None and prev.config != w.config:
                    for k, v in target.items():
                        if w.config.matches(k) and not prev.config.matches(k):
                            picked[k] = v
            lazy = dict(prev.lazy_members) if prev is not None and not whole else {}
            if w.config.lazy_members:
                wanted = {e.sender for e, _ in w.events}
                wanted |= {
                    e.state_key
                    for e, _ in w.events
                    if e.type == "m.room.member" and e.state_key is not None
                }
                for member in wanted:
                    key = ("m.room.member", member)
                    eid = target.get(key)
                    if eid is None:
                        continue
                    if lazy.get(member) != eid and key not in picked:
                        picked[key] = eid
                    lazy[member] = eid
            if any(e.type == "m.room.member" for e, _ in w.events):
                member_changed.add(w.room_id)
            chosen[w.room_id] = picked
            removed[w.room_id] = gone
            lazy_sent[w.room_id] = lazy

        summary_rooms = [w.room_id for w in works if w.room_id in member_changed]
        summaries = await self._memberships.get_room_summaries(summary_rooms, MAX_HEROES + 1)
        # Name, avatar and heroes' member events come with the chosen state in one read.
        extra: set[str] = set()
        for w in works:
            target = targets.get(w.room_id, empty)
            for key in (("m.room.name", ""), ("m.room.avatar", "")):
                if key in target:
                    extra.add(target[key])
            if w.room_id in summaries:
                for member, _ in summaries[w.room_id].members[: MAX_HEROES + 1]:
                    eid = target.get(("m.room.member", member))
                    if eid is not None:
                        extra.add(eid)
        wanted_ids = {eid for picked in chosen.values() for eid in picked.values()} | extra
        state_events = await self._events.get_events_with_meta(wanted_ids)
        unread: Mapping[str, Mapping[str, list[int]]] = {}
        if self._unread is not None and joined:
            unread = await self._unread(user_id, sorted(joined))

        batch: list[StoredEvent] = []
        spans: list[tuple[RoomWork, int, int, int]] = []
        for w in works:
            start = len(batch)
            batch.extend(w.events)
            mid = len(batch)
            for eid in chosen[w.room_id].values():
                pair = state_events.get(eid)
                if pair is not None:
                    batch.append(pair)
            spans.append((w, start, mid, len(batch)))
        opts = FormatOptions(user_id, device_id, include_room_id=False)
        formatted = await self._formatter.format(batch, opts)

        for w, start, mid, end in spans:
            m = w.membership
            target = targets.get(w.room_id, empty)
            prev = w.prev
            whole = prev is None or prev.membership != "join"
            timeline = formatted[start:mid]
            required = formatted[mid:end]
            required.extend({"type": t, "state_key": k} for t, k in removed[w.room_id])
            depth = _timeline_depth(w, prev, whole)
            out.sent[w.room_id] = RoomSent(
                w.upper, m.membership, m.event_id, w.config, lazy_sent[w.room_id], depth
            )
            membership_moved = prev is not None and prev.membership_event != m.event_id
            if not whole and not (
                timeline or required or membership_moved or w.room_id in member_changed
            ):
                continue
            entry: JsonDict = {"membership": m.membership, "bump_stamp": w.bump_stamp}
            if whole:
                entry["initial"] = True
            if w.lists:
                entry["lists"] = w.lists
            if w.is_dm:
                entry["is_dm"] = True
            if timeline:
                entry["timeline"] = timeline
            if required:
                entry["required_state"] = required
            entry["limited"] = w.limited
            if w.expand_timeline and prev is not None:
                entry["expanded_timeline"] = True
                entry["unstable_expanded_timeline"] = True
            oldest = w.events[0].meta.stream_ordering if w.events else None
            entry["prev_batch"] = pagination_token(
                (oldest or 1) - 1 if oldest is not None else w.upper
            )
            live_from = prev.position if prev is not None and not w.expand_timeline else live_after
            entry["num_live"] = (
                sum(1 for e in w.events if (e.meta.stream_ordering or 0) > live_from)
                if live_from is not None
                else 0
            )
            _naming(
                entry,
                target,
                state_events,
                changed=None if whole else chosen_keys(w, before, target),
            )
            summary = summaries.get(w.room_id)
            if summary is not None:
                entry["joined_count"] = summary.joined
                entry["invited_count"] = summary.invited
                if ("m.room.name", "") not in target or not entry.get("name", True):
                    heroes = []
                    others = [
                        u for u, ms in summary.members if u != user_id and ms in ("join", "invite")
                    ]
                    if not others:
                        others = [u for u, _ in summary.members if u != user_id]
                    for hero in others[:MAX_HEROES]:
                        h: JsonDict = {"user_id": hero}
                        pair = state_events.get(target.get(("m.room.member", hero), ""))
                        if pair is not None:
                            name = pair.event.content.get("displayname")
                            avatar = pair.event.content.get("avatar_url")
                            if isinstance(name, str):
                                h["displayname"] = name
                            if isinstance(avatar, str):
                                h["avatar_url"] = avatar
                        heroes.append(h)
                    if heroes:
                        entry["heroes"] = heroes
            if m.membership == "join":
                counts = unread.get(w.room_id, {})
                entry["notification_count"] = sum(c[0] for c in counts.values())
                entry["highlight_count"] = sum(c[1] for c in counts.values())
            out.rooms[w.room_id] = entry

    async def _states_at(self, positions: Mapping[str, int]) -> dict[str, Mapping[StateKey, str]]:
        """Each room's current state as it was at its own events position: the current
        state with every later change undone. Two reads for any number of rooms and
        positions (current state first, then the changes, so a change committed in
        between is undone to what the first read saw)."""
        if not positions:
            return {}
        current = await self._state.get_current_state_for_rooms(positions)
        rows = await self._store.state_deltas_after(list(positions), min(positions.values()))
        out: dict[str, Mapping[StateKey, str]] = {r: current.get(r, {}) for r in positions}
        undone: dict[str, dict[StateKey, str]] = {}
        for room_id, stream_id, etype, state_key, prev_event_id in rows:  # newest first
            if stream_id <= positions[room_id]:
                continue
            state = undone.get(room_id)
            if state is None:
                state = undone[room_id] = dict(current.get(room_id, {}))
            if prev_event_id is None:
                state.pop((etype, state_key), None)
            else:
                state[(etype, state_key)] = prev_event_id
        out.update(undone)
        return out

    async def _timelines(
        self,
        user_id: str,
        works: Sequence[RoomWork],
        joined: frozenset[str],
        ignored: frozenset[str],
    ) -> None:
        wanted = [w for w in works if _limit(w) > 0 and (w.lower or 0) < w.upper]
        by_limit: dict[int, list[RoomWork]] = {}
        for w in wanted:
            by_limit.setdefault(_limit(w), []).append(w)
        candidates: list[StoredEvent] = []
        fetched: dict[str, list[StoredEvent]] = {}
        for limit, group in by_limit.items():
            fetch = min(limit + 1, MAX_FETCH)
            # Several small statements at once, not one UNION of every room: on
            # PostgreSQL a 50-room UNION plans and runs ~4x slower than five 10-room
            # ones on five pool connections (measured; on SQLite it is a wash).
            parts = await asyncio.gather(
                *(
                    self._events.get_recent_events_for_ranges(
                        [(w.room_id, w.lower, w.upper) for w in group[i : i + TIMELINE_CHUNK]],
                        fetch,
                    )
                    for i in range(0, len(group), TIMELINE_CHUNK)
                )
            )
            found_by_room = {k: v for part in parts for k, v in part.items()}
            for w in group:
                found = found_by_room.get(w.room_id, [])
                fetched[w.room_id] = found
                candidates.extend(
                    p
                    for p in found
                    if p.event.state_key is not None or p.event.sender not in ignored
                )
        visible = await self._visibility.filter_events(user_id, candidates, joined_rooms=joined)
        by_room: dict[str, list[StoredEvent]] = {}
        for pair in visible:
            by_room.setdefault(pair.event.room_id, []).append(pair)
        for w in wanted:
            limit = _limit(w)
            rows = fetched.get(w.room_id, [])
            shown = by_room.get(w.room_id, [])  # newest first
            w.limited = len(rows) > limit or (
                len(shown) < len(rows) and len(rows) == min(limit + 1, MAX_FETCH)
            )
            w.events = list(reversed(shown[:limit]))


def chosen_keys(
    w: RoomWork, before: Mapping[str, Mapping[StateKey, str]], target: Mapping[StateKey, str]
) -> set[StateKey]:
    """The naming keys whose entry changed since the connection had the room."""
    old = before.get(w.room_id, {})
    return {k for k in (("m.room.name", ""), ("m.room.avatar", "")) if old.get(k) != target.get(k)}


def _naming(
    entry: JsonDict,
    target: Mapping[StateKey, str],
    events: Mapping[str, StoredEvent],
    changed: set[StateKey] | None,
) -> None:
    """name and avatar: on a whole room when set; on a delta when changed (null when
    removed)."""
    for key, field_name, content_key in (
        (("m.room.name", ""), "name", "name"),
        (("m.room.avatar", ""), "avatar", "url"),
    ):
        if changed is not None and key not in changed:
            continue
        pair = events.get(target.get(key, ""))
        value = pair.event.content.get(content_key) if pair is not None else None
        if isinstance(value, str) and value:
            entry[field_name] = value
        elif changed is not None:
            entry[field_name] = None


def _timeline_depth(w: RoomWork, prev: RoomSent | None, whole: bool) -> int:
    """How many of the room's newest events the client now has, as far as we know."""
    if whole or w.expand_timeline or prev is None:
        if w.config.timeline_limit == 0:
            return 0
        return len(w.events) if w.limited else ALL_EVENTS
    if w.config.timeline_limit == 0:
        return prev.timeline_depth if w.upper <= prev.position else 0
    if w.limited:
        return len(w.events)
    return min(ALL_EVENTS, prev.timeline_depth + len(w.events))


def _limit(w: RoomWork) -> int:
    limit = w.config.timeline_limit
    return limit if w.limit_cap is None else min(limit, w.limit_cap)

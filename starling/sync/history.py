"""Reading a room: single events, state, members, /messages and /context.

Spec: client-server-api "Getting events for a room", "Room participation" (event,
state, members, joined_members), "Pagination" (/messages), "Retrieving events around
an event" (/context). Every read first asks `access`: a joined user reads the room as it
is now, a user who left or was banned after having joined reads it as it was when they
left (and no later events) until they forget it, anyone may read a world-readable room;
everyone else gets 403. Then each event passes history visibility.

Paging walks the events stream of one room by position. A page that filters or history
visibility thin out is refilled from further back, a bounded number of times, so a
client is not sent a run of empty pages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starling.errors import MatrixError, forbidden, invalid_param, not_found
from starling.protocol.event import Event, StateKey
from starling.rooms.client_format import EventFormatter, FormatOptions, JsonDict
from starling.rooms.visibility import HistoryVisibility
from starling.storage.events import EventMeta, EventStore
from starling.storage.memberships import MembershipStore
from starling.storage.state import StateStore
from starling.sync.filtering import NO_FILTER, EventFilter
from starling.sync.tokens import pagination_token

EventPair = tuple[Event, EventMeta]

MAX_MESSAGES_LIMIT = 1000
DEFAULT_LIMIT = 10
MAX_PAGE_ROUNDS = 4
MEMBERSHIPS = ("join", "invite", "knock", "leave", "ban")
BEGINNING = -(2**62)


@dataclass(frozen=True)
class RoomAccess:
    room_id: str
    membership: str | None
    # The last position the user may read (their departure); None: up to now.
    upper: int | None
    # The member event that ended their view of the room (None if they are joined).
    departure_event: str | None
    joined: bool


class RoomHistory:
    def __init__(
        self,
        events: EventStore,
        state: StateStore,
        memberships: MembershipStore,
        visibility: HistoryVisibility,
        formatter: EventFormatter,
        current_position: Any,
    ) -> None:
        self._events = events
        self._state = state
        self._memberships = memberships
        self._visibility = visibility
        self._formatter = formatter
        # A callable giving the events stream's current position.
        self._current_position = current_position

    async def access(self, user_id: str, room_id: str) -> RoomAccess:
        """What of the room the user may read, or 403 M_FORBIDDEN."""
        m = await self._memberships.get_membership(room_id, user_id)
        if m is not None and m.membership == "join":
            return RoomAccess(room_id, "join", None, None, True)
        if (
            m is not None
            and m.membership in ("leave", "ban")
            # Once forgotten, a room's history is no longer theirs to read (spec: /forget).
            and room_id not in await self._memberships.forgotten_rooms(user_id)
            # A rejected invite, a rescinded knock or a ban from outside gives no view
            # of a room they were never in.
            and await self._memberships.rooms_ever_joined(user_id, [room_id])
        ):
            found = await self._events.get_event(m.event_id)
            upper = found[1].stream_ordering if found is not None else None
            return RoomAccess(room_id, m.membership, upper, m.event_id, False)
        if await self._visibility.current_visibility(room_id) == "world_readable" and (
            await self._state.get_current_state_ids(room_id)
        ):
            return RoomAccess(room_id, m.membership if m else None, None, None, False)
        raise forbidden(f"You are not in room {room_id} and it is not world-readable")

    async def _state_at_access(self, access: RoomAccess) -> Mapping[StateKey, str]:
        """The room's state as the user may see it: now, or when they left."""
        if access.departure_event is not None:
            found = await self._events.get_event(access.departure_event)
            if found is not None and found[1].state_after is not None:
                return await self._state.get_state_ids(found[1].state_after)
        return await self._state.get_current_state_ids(access.room_id)

    async def _visible(self, user_id: str, pairs: Sequence[EventPair]) -> list[EventPair]:
        return await self._visibility.filter_events(user_id, pairs)

    # --- single events and state ---------------------------------------------------------

    async def get_event(
        self, user_id: str, device_id: str | None, room_id: str, event_id: str
    ) -> JsonDict:
        found = await self._events.get_event(event_id)
        if found is None or found[0].room_id != room_id or found[1].rejected_reason:
            raise not_found("Event not found")
        m = await self._memberships.get_membership(room_id, user_id)
        if m is not None and m.membership in ("leave", "ban"):
            await self.access(user_id, room_id)  # 403 once they have forgotten the room
        if not await self._visibility.is_visible(user_id, found):
            raise forbidden("You don't have permission to see this event")
        return await self._formatter.format_one(found, FormatOptions(user_id, device_id))

    async def state_events(self, user_id: str, room_id: str) -> list[JsonDict]:
        access = await self.access(user_id, room_id)
        state = await self._state_at_access(access)
        pairs = await self._events.get_events_with_meta(state.values())
        ordered = [pairs[eid] for eid in state.values() if eid in pairs]
        return await self._formatter.format(ordered, FormatOptions(user_id))

    async def state_event(
        self, user_id: str, room_id: str, event_type: str, state_key: str
    ) -> tuple[Event, JsonDict]:
        access = await self.access(user_id, room_id)
        state = await self._state_at_access(access)
        eid = state.get((event_type, state_key))
        found = await self._events.get_event(eid) if eid is not None else None
        if found is None:
            raise not_found("Event not found")
        return found[0], await self._formatter.format_one(found, FormatOptions(user_id))

    async def members(
        self,
        user_id: str,
        room_id: str,
        at: int | None,
        membership: str | None,
        not_membership: str | None,
    ) -> list[JsonDict]:
        for value in (membership, not_membership):
            if value is not None and value not in MEMBERSHIPS:
                raise invalid_param(f"Unknown membership {value!r}")
        access = await self.access(user_id, room_id)
        if at is not None and access.upper is not None:
            at = min(at, access.upper)
        if at is not None:
            # The member list at a point the user could not see (before they joined a
            # `joined` room, say) is refused, as Synapse does: the room's last event at
            # that point must be visible to them.
            last = await self._events.get_room_events_between(room_id, None, at, 1)
            if last and not await self._visibility.is_visible(user_id, last[0]):
                raise forbidden("You may not see the room's members at that point")
        state: Mapping[StateKey, str]
        if at is None:
            state = await self._state_at_access(access)
        else:
            groups = await self._events.get_state_groups_at([room_id], at)
            group = groups.get(room_id)
            state = await self._state.get_state_ids(group) if group is not None else {}
        ids = [eid for (etype, _), eid in state.items() if etype == "m.room.member"]
        pairs = await self._events.get_events_with_meta(ids)

        def wanted(event: Event) -> bool:
            m = event.membership
            if membership is not None and not_membership is not None:
                return m == membership or m != not_membership
            if membership is not None:
                return m == membership
            if not_membership is not None:
                return m != not_membership
            return True

        chosen = [pairs[eid] for eid in ids if eid in pairs and wanted(pairs[eid][0])]
        return await self._formatter.format(chosen, FormatOptions(user_id))

    async def joined_members(self, user_id: str, room_id: str) -> dict[str, JsonDict]:
        access = await self.access(user_id, room_id)
        if not access.joined:
            raise forbidden("You aren't a member of the room")
        state = await self._state.get_current_state_ids(room_id)
        users = await self._memberships.get_joined_users(room_id)
        events = await self._events.get_events(
            state[("m.room.member", u)] for u in users if ("m.room.member", u) in state
        )
        out: dict[str, JsonDict] = {}
        for event in events.values():
            if event.membership != "join" or event.state_key is None:
                continue
            info: JsonDict = {}
            for src, dst in (("displayname", "display_name"), ("avatar_url", "avatar_url")):
                value = event.content.get(src)
                if isinstance(value, str):
                    info[dst] = value
            out[event.state_key] = info
        return out

    # --- paging --------------------------------------------------------------------------

    async def _page(
        self,
        user_id: str,
        room_id: str,
        cursor: int,
        bound: int | None,
        backwards: bool,
        limit: int,
        efilter: EventFilter,
    ) -> tuple[list[EventPair], int, bool]:
        """Up to `limit` visible events matching the filter, walking from `cursor`
        (exclusive going forwards, inclusive going backwards) towards `bound`.
        Returns the events, the cursor after the last one, and whether the walk
        reached `bound` (or the room's edge)."""
        out: list[EventPair] = []
        fetch = limit if efilter.is_noop else min(limit * 3, MAX_MESSAGES_LIMIT)
        exhausted = False
        for _ in range(MAX_PAGE_ROUNDS):
            if backwards:
                rows = await self._events.get_room_events_between(
                    room_id, bound, cursor, fetch, backwards=True
                )
            else:
                upper = bound if bound is not None else self._current_position()
                rows = await self._events.get_room_events_between(
                    room_id, cursor, upper, fetch, backwards=False
                )
            exhausted = len(rows) < fetch
            matching = [
                (ev, meta)
                for ev, meta in rows
                if efilter.matches(ev.type, ev.sender, ev.room_id, ev.content)
            ]
            visible = await self._visible(user_id, matching)
            for pair in visible:
                out.append(pair)
                if len(out) == limit:
                    pos = pair[1].stream_ordering or 0
                    last_row = rows[-1][1].stream_ordering or 0
                    cursor = pos - 1 if backwards else pos
                    # Rows after this one were read but not returned: not exhausted.
                    return out, cursor, exhausted and pos == last_row
            if rows:
                pos = rows[-1][1].stream_ordering or 0
                cursor = pos - 1 if backwards else pos
            if exhausted:
                break
            fetch = min(fetch * 2, MAX_MESSAGES_LIMIT)
        return out, cursor, exhausted

    async def messages(
        self,
        user_id: str,
        device_id: str | None,
        room_id: str,
        *,
        from_pos: int | None,
        from_token: str | None,
        to_pos: int | None,
        backwards: bool,
        limit: int,
        efilter: EventFilter = NO_FILTER,
    ) -> JsonDict:
        access = await self.access(user_id, room_id)
        now = self._current_position()
        if backwards:
            cursor = from_pos if from_pos is not None else now
            if access.upper is not None:
                cursor = min(cursor, access.upper)
            bound = to_pos
        else:
            cursor = from_pos if from_pos is not None else BEGINNING
            bound = to_pos if to_pos is not None else now
            if access.upper is not None:
                bound = min(bound, access.upper)
        start = from_token if from_token is not None else pagination_token(cursor)
        response: JsonDict = {"start": start, "chunk": []}
        if limit == 0:
            response["end"] = start
            return response
        if (not backwards and bound is not None and cursor >= bound) or (
            backwards and bound is not None and cursor <= bound
        ):
            return response
        events, end, exhausted = await self._page(
            user_id, room_id, cursor, bound, backwards, limit, efilter
        )
        opts = FormatOptions(user_id, device_id)
        response["chunk"] = await self._formatter.format(events, opts)
        if not exhausted or (not backwards and events):
            response["end"] = pagination_token(end)
        if efilter.lazy_load_members and events:
            response["state"] = await self._member_state(
                user_id, device_id, events, {e.sender for e, _ in events}
            )
        return response

    async def _member_state(
        self,
        user_id: str,
        device_id: str | None,
        events: Sequence[EventPair],
        senders: set[str],
    ) -> list[JsonDict]:
        """The member events of `senders` in the state at the first of `events`."""
        group = events[0][1].state_after
        if group is None:
            return []
        keys = [("m.room.member", s) for s in sorted(senders)]
        entries = await self._state.get_state_entries_for_groups([group], keys)
        ids = list(entries.get(group, {}).values())
        pairs = await self._events.get_events_with_meta(ids)
        ordered = [pairs[eid] for eid in ids if eid in pairs]
        return await self._formatter.format(ordered, FormatOptions(user_id, device_id))

    async def context(
        self,
        user_id: str,
        device_id: str | None,
        room_id: str,
        event_id: str,
        limit: int,
        efilter: EventFilter = NO_FILTER,
    ) -> JsonDict:
        access = await self.access(user_id, room_id)
        found = await self._events.get_event(event_id)
        if found is None or found[0].room_id != room_id or found[1].rejected_reason:
            raise not_found("Event not found")
        if not await self._visibility.is_visible(user_id, found):
            raise forbidden("You don't have permission to see this event")
        position = found[1].stream_ordering
        if position is None:
            raise MatrixError(404, "M_NOT_FOUND", "Event is not part of the room's timeline")
        before_limit = limit // 2
        after_limit = limit - before_limit
        before: list[EventPair] = []
        after: list[EventPair] = []
        start_pos, end_pos = position - 1, position
        if before_limit:
            before, start_pos, _ = await self._page(
                user_id, room_id, position - 1, None, True, before_limit, efilter
            )
        upper = access.upper if access.upper is not None else self._current_position()
        if after_limit and position < upper:
            after, end_pos, _ = await self._page(
                user_id, room_id, position, upper, False, after_limit, efilter
            )
        opts = FormatOptions(user_id, device_id)
        formatted = await self._formatter.format([*before, found, *after], opts)
        last = after[-1] if after else found
        state_group = last[1].state_after
        state: Mapping[StateKey, str] = (
            await self._state.get_state_ids(state_group) if state_group is not None else {}
        )
        if efilter.lazy_load_members:
            senders = {e.sender for e, _ in [*before, found, *after]}
            state = {k: v for k, v in state.items() if k[0] != "m.room.member" or k[1] in senders}
        state_pairs = await self._events.get_events_with_meta(state.values())
        state_list = [state_pairs[eid] for eid in state.values() if eid in state_pairs]
        return {
            "start": pagination_token(start_pos),
            "end": pagination_token(end_pos),
            "events_before": formatted[: len(before)],
            "event": formatted[len(before)],
            "events_after": formatted[len(before) + 1 :],
            "state": await self._formatter.format(state_list, opts),
        }

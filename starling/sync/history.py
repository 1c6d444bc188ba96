"""Reading a room: single events, state, members, /messages and /context.

Spec: client-server-api "Getting events for a room", "Room participation" (event,
state, members, joined_members), "Pagination" (/messages), "Retrieving events around
an event" (/context). Every read first asks `access`: a joined user reads the room as it
is now, a user who left or was banned after having joined reads it as it was when they
left (and no later events) until they forget it, anyone may read a world-readable room;
everyone else gets 403. Then each event passes history visibility.

Paging walks one room's history in topological order — depth, then stream position —
with tokens that carry both (sync.tokens), so an event backfilled or fetched into a gap
later sits where the graph puts it, not as the newest message. A page that filters or
history visibility thin out is refilled from further on, a bounded number of times, so a
client is not sent a run of empty pages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starling.errors import MatrixError, forbidden, invalid_param, not_found
from starling.protocol.event import Event, StateKey
from starling.rooms import refill
from starling.rooms.client_format import EventFormatter, FormatOptions, JsonDict
from starling.rooms.visibility import HistoryVisibility
from starling.storage.events import EventStore, StoredEvent
from starling.storage.memberships import MembershipStore
from starling.storage.state import StateStore
from starling.sync.filtering import NO_FILTER, EventFilter
from starling.sync.tokens import HistoryPosition

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


def _event_id(pair: StoredEvent) -> str:
    return pair.event.event_id


class _HistorySource:
    """One room's history in topological order, from `cursor` (None: the room's edge)
    towards `bound` (None: the other edge), events after `max_stream` left out."""

    def __init__(
        self,
        events: EventStore,
        room_id: str,
        cursor: HistoryPosition | None,
        bound: HistoryPosition | None,
        *,
        backwards: bool,
        max_stream: int,
    ) -> None:
        self._events = events
        self._room_id = room_id
        self.cursor = cursor
        self._bound = bound
        self._backwards = backwards
        self._max_stream = max_stream

    async def read(self, n: int) -> Sequence[StoredEvent]:
        lower, upper = (self._bound, self.cursor) if self._backwards else (self.cursor, self._bound)
        rows = await self._events.get_room_history(
            self._room_id,
            after=_point(lower),
            not_after=_point(upper),
            max_stream=self._max_stream,
            limit=n,
            backwards=self._backwards,
        )
        if rows:
            self.stop_after(rows[-1])
        return rows

    def stop_after(self, row: StoredEvent) -> None:
        stream = row.meta.stream_ordering or 0
        self.cursor = HistoryPosition(stream - 1 if self._backwards else stream, row.event.depth)


def _point(p: HistoryPosition | None) -> tuple[int | None, int] | None:
    return None if p is None else (p.depth, p.stream)


class RoomHistory:
    def __init__(
        self,
        events: EventStore,
        state: StateStore,
        memberships: MembershipStore,
        visibility: HistoryVisibility,
        formatter: EventFormatter,
        current_position: Any,
        backfill: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self._events = events
        # Fetches history from other servers in the room (True if events were added).
        self._backfill = backfill
        self._state = state
        self._memberships = memberships
        self._visibility = visibility
        self._formatter = formatter
        # A callable giving the events stream's current position.
        self._current_position = current_position

    async def access(self, user_id: str, room_id: str) -> RoomAccess:
        """What of the room the user may read, or 403 M_FORBIDDEN.

        Members read the room now; a user who left reads it as of their departure (spec:
        "If the user has left the room then the state is taken from the state of the room
        when they left"), until they forget it. A banned user reads nothing more than
        anyone may (spec: "A banned user will not be treated as a joined user, and so will
        not be able to send or receive events in the room"; Synapse's
        check_user_in_room_or_world_readable): every read path through here (state,
        members, /messages, /context, /event, relations, room initialSync) refuses them
        unless the room is world-readable."""
        m = await self._memberships.get_membership(room_id, user_id)
        if m is not None and m.membership == "join":
            return RoomAccess(room_id, "join", None, None, True)
        if (
            m is not None
            and m.membership == "leave"
            # Once forgotten, a room's history is no longer theirs to read (spec: /forget).
            and room_id not in await self._memberships.forgotten_rooms(user_id)
            # A rejected invite or a rescinded knock gives no view of a room they were
            # never in.
            and await self._memberships.rooms_ever_joined(user_id, [room_id])
        ):
            found = await self._events.get_event(m.event_id)
            upper = found.meta.stream_ordering if found is not None else None
            return RoomAccess(room_id, m.membership, upper, m.event_id, False)
        if await self._visibility.current_visibility(room_id) == "world_readable" and (
            await self._state.get_current_state_ids(room_id)
        ):
            return RoomAccess(room_id, m.membership if m else None, None, None, False)
        if m is not None and m.membership == "ban":
            raise forbidden(f"You are banned from room {room_id}")
        raise forbidden(f"You are not in room {room_id} and it is not world-readable")

    async def _state_at_access(self, access: RoomAccess) -> Mapping[StateKey, str]:
        """The room's state as the user may see it: now, or when they left."""
        if access.departure_event is not None:
            found = await self._events.get_event(access.departure_event)
            if found is not None and found.meta.state_after is not None:
                return await self._state.get_state_ids(found.meta.state_after)
        return await self._state.get_current_state_ids(access.room_id)

    async def _visible(self, user_id: str, pairs: Sequence[StoredEvent]) -> list[StoredEvent]:
        return await self._visibility.filter_events(user_id, pairs)

    # --- single events and state ---------------------------------------------------------

    async def get_event(
        self, user_id: str, device_id: str | None, room_id: str, event_id: str
    ) -> JsonDict:
        found = await self._events.get_event(event_id)
        if found is None or found.event.room_id != room_id or found.meta.rejected_reason:
            raise not_found("Event not found")
        # The spec's only error here is 404 "not found or you do not have permission to
        # read this event": an event the user may not see is answered like a missing one,
        # which also keeps its existence from outsiders.
        m = await self._memberships.get_membership(room_id, user_id)
        if m is not None and m.membership in ("leave", "ban"):
            try:
                # Refused once they forgot the room, and to the banned (see access).
                await self.access(user_id, room_id)
            except MatrixError as e:
                if e.status == 403:
                    raise not_found("Event not found") from None
                raise
        seen = await self._visibility.visible_form(user_id, found)
        if seen is None:
            raise not_found("Event not found")
        return await self._formatter.format_one(seen, FormatOptions(user_id, device_id))

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
        return found.event, await self._formatter.format_one(found, FormatOptions(user_id))

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
            # The room's current state at that position (state resolution included).
            states = await self._state.get_current_state_at([room_id], at)
            state = states.get(room_id, {})
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

        chosen = [pairs[eid] for eid in ids if eid in pairs and wanted(pairs[eid].event)]
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
            # Both keys always, null when unset (as Synapse; clients test for them).
            info: JsonDict = {}
            for src, dst in (("displayname", "display_name"), ("avatar_url", "avatar_url")):
                value = event.content.get(src)
                info[dst] = value if isinstance(value, str) else None
            out[event.state_key] = info
        return out

    # --- paging --------------------------------------------------------------------------

    async def _page(
        self,
        user_id: str,
        room_id: str,
        cursor: HistoryPosition | None,
        bound: HistoryPosition | None,
        backwards: bool,
        limit: int,
        efilter: EventFilter,
        max_stream: int,
    ) -> tuple[list[StoredEvent], HistoryPosition | None, bool]:
        """Up to `limit` visible events matching the filter, walking history from
        `cursor` (None: the room's edge) towards `bound` (None: the other edge), events
        that arrived after `max_stream` left out. Returns the events, the position after
        the last one read, and whether the walk reached `bound` (or the room's edge)."""
        source = _HistorySource(
            self._events, room_id, cursor, bound, backwards=backwards, max_stream=max_stream
        )

        async def keep(rows: Sequence[StoredEvent]) -> Sequence[StoredEvent]:
            matching = [
                pair
                for pair in rows
                if efilter.matches(
                    pair.event.type, pair.event.sender, pair.event.room_id, pair.event.content
                )
            ]
            return await self._visible(user_id, matching)

        first = limit if efilter.is_noop else limit * 3
        events, more = await refill.collect(
            source,
            keep,
            _event_id,
            limit,
            refill.FetchSchedule(first, MAX_MESSAGES_LIMIT, MAX_PAGE_ROUNDS),
        )
        return events, source.cursor, not more

    async def messages(
        self,
        user_id: str,
        device_id: str | None,
        room_id: str,
        *,
        from_pos: HistoryPosition | None,
        from_token: str | None,
        to_pos: HistoryPosition | None,
        backwards: bool,
        limit: int,
        efilter: EventFilter = NO_FILTER,
    ) -> JsonDict:
        """/messages: history in topological order (depth, then stream position)."""
        access = await self.access(user_id, room_id)
        max_stream = self._current_position()
        if access.upper is not None:
            max_stream = min(max_stream, access.upper)
        if from_token is not None:
            start = from_token
        else:
            start = HistoryPosition(max_stream if backwards else BEGINNING).encode()
        response: JsonDict = {"start": start, "chunk": []}
        if limit == 0:
            response["end"] = start
            return response
        events, end, exhausted = await self._page(
            user_id, room_id, from_pos, to_pos, backwards, limit, efilter, max_stream
        )
        if (
            backwards
            and exhausted
            and len(events) < limit
            and to_pos is None
            and self._backfill is not None
            and await self._backfill(room_id)
        ):
            # We reached the start of what we hold; other servers had more: page again.
            events, end, exhausted = await self._page(
                user_id, room_id, from_pos, to_pos, backwards, limit, efilter, max_stream
            )
        opts = FormatOptions(user_id, device_id)
        response["chunk"] = await self._formatter.format(events, opts)
        # Like Synapse: a page with events always has an `end` (the next page may be
        # empty); only an empty page at the start of history leaves it out.
        if end is not None and (not exhausted or events):
            response["end"] = end.encode()
        if efilter.lazy_load_members and events:
            response["state"] = await self._member_state(
                user_id, device_id, events, {e.sender for e, _ in events}
            )
        return response

    async def _member_state(
        self,
        user_id: str,
        device_id: str | None,
        events: Sequence[StoredEvent],
        senders: set[str],
    ) -> list[JsonDict]:
        """The member events of `senders` in the state at the first of `events`."""
        group = events[0].meta.state_after
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
        if found is None or found.event.room_id != room_id or found.meta.rejected_reason:
            raise not_found("Event not found")
        if not await self._visibility.is_visible(user_id, found):
            raise forbidden("You don't have permission to see this event")
        position = found.meta.stream_ordering
        if position is None:
            raise MatrixError(404, "M_NOT_FOUND", "Event is not part of the room's timeline")
        depth = found.event.depth
        max_stream = self._current_position()
        if access.upper is not None:
            max_stream = min(max_stream, access.upper)
        before_limit = limit // 2
        after_limit = limit - before_limit
        before: list[StoredEvent] = []
        after: list[StoredEvent] = []
        start_pos = HistoryPosition(position - 1, depth)
        end_pos = HistoryPosition(position, depth)
        if before_limit:
            before, before_end, _ = await self._page(
                user_id, room_id, start_pos, None, True, before_limit, efilter, max_stream
            )
            start_pos = before_end or start_pos
        if after_limit:
            after, after_end, _ = await self._page(
                user_id, room_id, end_pos, None, False, after_limit, efilter, max_stream
            )
            end_pos = after_end or end_pos
        opts = FormatOptions(user_id, device_id)
        formatted = await self._formatter.format([*before, found, *after], opts)
        last = after[-1] if after else found
        state_group = last.meta.state_after
        state: Mapping[StateKey, str] = (
            await self._state.get_state_ids(state_group) if state_group is not None else {}
        )
        if efilter.lazy_load_members:
            senders = {e.sender for e, _ in [*before, found, *after]}
            state = {k: v for k, v in state.items() if k[0] != "m.room.member" or k[1] in senders}
        state_pairs = await self._events.get_events_with_meta(state.values())
        state_list = [state_pairs[eid] for eid in state.values() if eid in state_pairs]
        return {
            "start": start_pos.encode(),
            "end": end_pos.encode(),
            "events_before": formatted[: len(before)],
            "event": formatted[len(before)],
            "events_after": formatted[len(before) + 1 :],
            "state": await self._formatter.format(state_list, opts),
        }

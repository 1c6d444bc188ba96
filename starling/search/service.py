"""POST /search, category room_events (spec: modules "Server Side Search").

The rooms searched are those the user is joined to (up to now) and those they left or
were banned from (up to their departure, as Synapse does) and have not forgotten; a
`filter.rooms` narrows them. Candidates come from the full-text index in pages
(`SearchStore.search`), then pass the rest of the filter (senders, types, contains_url)
and history visibility; a page that they thin out is refilled from further on, a bounded
number of times.

Ordering: `rank` (most relevant first, newest first among equals) or `recent` (newest
first). Both paginate: the `next_batch` token is `k<offset>` for rank (rows of the
ranked match list already consumed) and `t<position>` for recent (results continue
below that stream position). Groupings by room_id and sender list the event IDs of the
page; with `recent`, each room group carries a token for more results in that room
(`t<position>~<room_id>`). `count` is the number of matches before visibility is
applied: the spec allows an estimate. `highlights` are the words searched for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starling.errors import invalid_param
from starling.protocol.numbers import parse_int
from starling.rooms import refill
from starling.rooms.client_format import EventFormatter, FormatOptions, JsonDict
from starling.rooms.visibility import HistoryVisibility
from starling.storage.events import EventStore, StoredEvent
from starling.storage.memberships import MembershipStore
from starling.storage.search import ALL_KEYS as ALL_KEYS  # the searchable keys
from starling.storage.search import SearchHit, SearchStore, search_words
from starling.storage.state import StateStore
from starling.sync.filtering import EventFilter
from starling.sync.tokens import pagination_token

# (user_id, room_id) -> the room's current state events, formatted (RoomHistory.state_events)
StateReader = Callable[[str, str], Any]

UNBOUNDED = 2**62
MAX_ROUNDS = 5
MAX_BATCH = 500
MAX_TOKEN_LENGTH = 512


# A match and its event (None: the event is gone since it was indexed).
_Row = tuple[SearchHit, StoredEvent | None]


def _hit_id(row: _Row) -> str:
    return row[0].event_id


class _HitSource:
    """The full-text matches in order (by rank: from `offset` on; by recency: below
    `before`), each with its event."""

    def __init__(
        self,
        store: SearchStore,
        events: EventStore,
        words: Sequence[str],
        rooms: Sequence[tuple[str, int]],
        keys: Sequence[str],
        *,
        by_rank: bool,
        offset: int,
        before: int | None,
    ) -> None:
        self._store = store
        self._events = events
        self._words = words
        self._rooms = rooms
        self._keys = keys
        self._by_rank = by_rank
        self.offset = offset
        self._before = before
        self._page: list[_Row] = []
        self._page_offset = offset

    async def read(self, n: int) -> Sequence[_Row]:
        hits = await self._store.search(
            self._words,
            self._rooms,
            self._keys,
            by_rank=self._by_rank,
            before=self._before,
            offset=self.offset,
            limit=n,
        )
        pairs = await self._events.get_events_with_meta(h.event_id for h in hits)
        self._page = [(hit, pairs.get(hit.event_id)) for hit in hits]
        self._page_offset = self.offset
        if self._page:
            self.stop_after(self._page[-1])
        return self._page

    def stop_after(self, row: _Row) -> None:
        index = next(i for i, r in enumerate(self._page) if r[0].event_id == row[0].event_id)
        self.offset = self._page_offset + index + 1
        self._before = row[0].stream_ordering


@dataclass(frozen=True)
class SearchToken:
    by_rank: bool
    value: int  # rank: offset; recent: exclusive upper stream position
    room_id: str | None = None

    def encode(self) -> str:
        head = f"{'k' if self.by_rank else 't'}{self.value}"
        return head if self.room_id is None else f"{head}~{self.room_id}"

    @classmethod
    def parse(cls, token: str) -> SearchToken:
        head, sep, room_id = token.partition("~")
        if (
            len(token) > MAX_TOKEN_LENGTH
            or head[:1] not in ("k", "t")
            or parse_int(head[1:], minimum=0) is None
            or (sep and not room_id.startswith("!"))
        ):
            raise invalid_param("Invalid next_batch token")
        return cls(head[0] == "k", int(head[1:]), room_id or None)


@dataclass(frozen=True)
class EventContextRequest:
    before_limit: int = 5
    after_limit: int = 5
    include_profile: bool = False


@dataclass(frozen=True)
class RoomEventsQuery:
    search_term: str
    keys: tuple[str, ...]
    efilter: EventFilter
    limit: int
    by_rank: bool
    context: EventContextRequest | None
    include_state: bool
    group_by_room: bool
    group_by_sender: bool


class SearchService:
    def __init__(
        self,
        store: SearchStore,
        events: EventStore,
        state: StateStore,
        memberships: MembershipStore,
        visibility: HistoryVisibility,
        formatter: EventFormatter,
        state_reader: StateReader,
    ) -> None:
        self._store = store
        self._events = events
        self._state = state
        self._memberships = memberships
        self._visibility = visibility
        self._formatter = formatter
        self._state_reader = state_reader

    async def _searchable_rooms(self, user_id: str) -> tuple[dict[str, int], list[str]]:
        """{room_id: last stream position the user may search}, and the joined rooms."""
        rooms = await self._memberships.get_rooms_for_user(user_id)
        bounds: dict[str, int] = {}
        joined: list[str] = []
        departed: dict[str, str] = {}
        for room_id, m in rooms.items():
            if m.membership == "join":
                bounds[room_id] = UNBOUNDED
                joined.append(room_id)
            elif m.membership == "leave":
                # A banned user reads nothing more of the room (RoomHistory.access).
                departed[room_id] = m.event_id
        if departed:
            # A forgotten room's history is no longer searchable (spec: /forget).
            for room_id in await self._memberships.forgotten_rooms(user_id):
                departed.pop(room_id, None)
        if departed:
            metas = await self._events.get_events_with_meta(departed.values())
            for room_id, event_id in departed.items():
                found = metas.get(event_id)
                if found is not None and found.meta.stream_ordering is not None:
                    bounds[room_id] = found.meta.stream_ordering
        return bounds, joined

    async def room_events(
        self, user_id: str, device_id: str | None, query: RoomEventsQuery, token: str | None
    ) -> JsonDict:
        words = search_words(query.search_term)
        start = SearchToken.parse(token) if token is not None else None
        if start is not None and start.by_rank != query.by_rank:
            raise invalid_param("next_batch token is for a different order_by")
        bounds, joined = await self._searchable_rooms(user_id)
        f = query.efilter
        wanted = {
            r: upper
            for r, upper in bounds.items()
            if (f.rooms is None or r in f.rooms) and r not in f.not_rooms
        }
        if start is not None and start.room_id is not None:
            wanted = {r: u for r, u in wanted.items() if r == start.room_id}
        rooms = sorted(wanted.items())
        keys = query.keys
        count = await self._store.count(words, rooms, keys)

        source = _HitSource(
            self._store,
            self._events,
            words,
            rooms,
            keys,
            by_rank=query.by_rank,
            offset=start.value if start is not None and start.by_rank else 0,
            before=start.value if start is not None and not start.by_rank else None,
        )

        async def keep(rows: Sequence[_Row]) -> Sequence[_Row]:
            candidates = [
                pair
                for _, pair in rows
                if pair is not None
                and f.matches(
                    pair.event.type, pair.event.sender, pair.event.room_id, pair.event.content
                )
            ]
            visible = {
                e.event_id
                for e, _ in await self._visibility.filter_events(
                    user_id, candidates, joined_rooms=joined
                )
            }
            return [row for row in rows if row[0].event_id in visible]

        kept, more = await refill.collect(
            source,
            keep,
            _hit_id,
            query.limit,
            refill.FetchSchedule(max(query.limit * 2, 20), MAX_BATCH, MAX_ROUNDS),
        )
        found = [(pair, hit) for hit, pair in kept if pair is not None]
        offset = source.offset

        opts = FormatOptions(user_id, device_id)
        formatted = await self._formatter.format([p for p, _ in found], opts)
        results: list[JsonDict] = []
        for (pair, hit), event_json in zip(found, formatted, strict=True):
            result: JsonDict = {"rank": hit.score, "result": event_json}
            if query.context is not None:
                result["context"] = await self._context(
                    user_id,
                    device_id,
                    pair,
                    wanted.get(pair.event.room_id, UNBOUNDED),
                    query.context,
                )
            results.append(result)

        body: JsonDict = {"count": count, "highlights": words, "results": results}
        next_token: SearchToken | None = None
        if more and found:
            next_token = SearchToken(
                query.by_rank,
                offset if query.by_rank else found[-1][1].stream_ordering,
                start.room_id if start is not None else None,
            )
            body["next_batch"] = next_token.encode()
        groups = self._groups(query, found, more)
        if groups:
            body["groups"] = groups
        if query.include_state:
            state: JsonDict = {}
            for room_id in dict.fromkeys(p.event.room_id for p, _ in found):
                state[room_id] = await self._state_reader(user_id, room_id)
            body["state"] = state
        return body

    def _groups(
        self, query: RoomEventsQuery, found: Sequence[tuple[StoredEvent, SearchHit]], more: bool
    ) -> JsonDict:
        groups: JsonDict = {}
        if query.group_by_room:
            by_room: dict[str, JsonDict] = {}
            for (event, _), hit in found:
                order = hit.score if query.by_rank else hit.stream_ordering
                group = by_room.setdefault(event.room_id, {"results": [], "order": order})
                group["results"].append(event.event_id)
                if not query.by_rank and more:
                    # Results of this room continue below its oldest one on this page.
                    group["next_batch"] = SearchToken(
                        False, hit.stream_ordering, event.room_id
                    ).encode()
            groups["room_id"] = by_room
        if query.group_by_sender:
            by_sender: dict[str, JsonDict] = {}
            for (event, _), hit in found:
                order = hit.score if query.by_rank else hit.stream_ordering
                group = by_sender.setdefault(event.sender, {"results": [], "order": order})
                group["results"].append(event.event_id)
            groups["sender"] = by_sender
        return groups

    async def _context(
        self,
        user_id: str,
        device_id: str | None,
        pair: StoredEvent,
        upper: int,
        request: EventContextRequest,
    ) -> JsonDict:
        """Events around a result that the user may see (spec: event_context)."""
        event, meta = pair
        position = meta.stream_ordering or 0
        before: list[StoredEvent] = []
        after: list[StoredEvent] = []
        if request.before_limit:
            rows = await self._events.get_room_events_between(
                event.room_id, None, position - 1, request.before_limit * 2, backwards=True
            )
            visible = await self._visibility.filter_events(user_id, rows)
            before = visible[: request.before_limit]
        if request.after_limit and position < upper:
            rows = await self._events.get_room_events_between(
                event.room_id,
                position,
                min(upper, UNBOUNDED),
                request.after_limit * 2,
                backwards=False,
            )
            visible = await self._visibility.filter_events(user_id, rows)
            after = visible[: request.after_limit]
        opts = FormatOptions(user_id, device_id)
        formatted_before = await self._formatter.format(before, opts)
        formatted_after = await self._formatter.format(after, opts)
        start = (before[-1].meta.stream_ordering or 0) - 1 if before else position - 1
        end = (after[-1].meta.stream_ordering or 0) if after else position
        context: JsonDict = {
            "start": pagination_token(start),
            "end": pagination_token(end),
            "events_before": formatted_before,
            "events_after": formatted_after,
        }
        if request.include_profile:
            context["profile_info"] = await self._profiles(
                [*before, pair, *after], meta.state_after
            )
        return context

    async def _profiles(self, pairs: Sequence[StoredEvent], group: int | None) -> JsonDict:
        """Display names and avatars of the senders, from their member events in the
        room's state at the result (the profile they had then)."""
        senders = sorted({e.sender for e, _ in pairs})
        if group is None:
            return {}
        entries = await self._state.get_state_entries_for_groups(
            [group], [("m.room.member", s) for s in senders]
        )
        ids = entries.get(group, {})
        members = await self._events.get_events(ids.values())
        out: JsonDict = {}
        for (_, sender), event_id in ids.items():
            member = members.get(event_id)
            if member is None:
                continue
            info: JsonDict = {}
            for key in ("displayname", "avatar_url"):
                value = member.content.get(key)
                if isinstance(value, str):
                    info[key] = value
            out[sender] = info
        return out

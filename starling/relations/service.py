"""Relations: the children of an event, the threads of a room and the bundled
aggregations (spec: client-server-api "Forming relationships between events",
"Aggregations of child events", modules "Threading", "Event replacements",
"Reference relations").

`RelationAggregator.bundle` computes `unsigned.m.relations` for a batch of events being
formatted, in a fixed number of queries whatever the batch size: one statement for the
thread summaries, latest valid edits and references of the events; when there are
threads, one more for the edits and references of their latest replies; then one read
of the events named. Annotations are not bundled (the spec dropped
them); an edit or an annotation gets no aggregations of its own, an event that relates
to another cannot be a thread root, and a redacted event gets no edit.

`RelationsService` serves /relations and /threads: room access first (403), the parent
must exist in the room and be visible to the user (404), then every child passes history
visibility. Pages walk the events stream; tokens are the stream positions of
`starling.sync.tokens`, so /messages and /sync tokens are accepted too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from starling.errors import not_found
from starling.rooms.client_format import (
    Bundle,
    EventFormatter,
    FormatOptions,
    JsonDict,
    ThreadBundle,
)
from starling.rooms.visibility import HistoryVisibility
from starling.storage.events import EventStore, StoredEvent
from starling.storage.relations import (
    ANNOTATION,
    REPLACE,
    THREAD,
    RelationStore,
    ThreadSummary,
    is_valid_edit,
    relation_of,
)
from starling.sync.tokens import pagination_token

IgnoredUsersLookup = Callable[[str], Awaitable[frozenset[str]]]
# Raises 403 M_FORBIDDEN when the user may not read the room (RoomHistory.access).
RoomAccessCheck = Callable[[str, str], Awaitable[object]]
# The events (user, pairs) the user may see: HistoryVisibility.filter_events.
VisibilityFilter = Callable[[str, Sequence[StoredEvent]], Awaitable[list[StoredEvent]]]

# How many children of one parent are read to find the latest the user may see, when
# the latest of all is hidden from them (they left, or joined later).
MAX_FALLBACK_SCAN = 1000

# How deep `recurse=true` follows relations of relations (the spec asks for at least 3).
RECURSION_DEPTH = 3


class RelationAggregator:
    def __init__(
        self,
        events: EventStore,
        store: RelationStore,
        ignored_users: IgnoredUsersLookup | None = None,
        visible: VisibilityFilter | None = None,
    ) -> None:
        self._events = events
        self._store = store
        self._ignored_users = ignored_users
        self._visible = visible

    async def bundle(self, pairs: Sequence[StoredEvent], user_id: str | None) -> dict[str, Bundle]:
        """The bundled aggregations of each event (and of their threads' latest replies)."""
        wanted: dict[str, StoredEvent] = {}
        related: set[str] = set()
        for pair in pairs:
            event, meta = pair
            if event.state_key is not None or meta.rejected_reason is not None:
                continue  # state events get no bundled aggregations (spec)
            relation = relation_of(event.content) if meta.redacted_by is None else None
            if relation is not None:
                if relation.rel_type in (REPLACE, ANNOTATION):
                    continue
                related.add(event.event_id)
            wanted[event.event_id] = pair
        if not wanted:
            return {}
        ignored: frozenset[str] = frozenset()
        if user_id is not None and self._ignored_users is not None:
            ignored = await self._ignored_users(user_id)

        # Round one: the events themselves. Round two, only when there are threads:
        # the edits and references of the threads' latest replies.
        found = await self._store.aggregations(
            thread_roots=[eid for eid in wanted if eid not in related],
            edit_targets=[eid for eid, (_, meta) in wanted.items() if meta.redacted_by is None],
            reference_targets=list(wanted),
            user_id=user_id,
            ignored=ignored,
        )
        summaries = found.threads
        edits = dict(found.edits)
        references = dict(found.references)
        latest_ids = {s.latest_event_id for s in summaries.values()}
        extra = sorted(latest_ids - wanted.keys())
        if extra:
            more = await self._store.aggregations(
                thread_roots=[],
                edit_targets=extra,
                reference_targets=extra,
                user_id=user_id,
                ignored=ignored,
            )
            edits.update(more.edits)
            references.update(more.references)
        to_load = latest_ids | set(edits.values())
        if self._visible is not None:
            to_load |= {eid for children in references.values() for eid in children}
        loaded = await self._events.get_events_with_meta(to_load) if to_load else {}
        if self._visible is not None and user_id is not None and loaded:
            await self._hide_invisible(
                user_id, wanted, summaries, edits, references, loaded, ignored
            )

        out: dict[str, Bundle] = {}
        for root_id, summary in summaries.items():
            latest = loaded.get(summary.latest_event_id)
            if latest is None:
                continue
            root_sender = wanted[root_id].event.sender
            out.setdefault(root_id, Bundle()).thread = ThreadBundle(
                latest, summary.count, summary.user_participated or root_sender == user_id
            )
        for parent_id, edit_id in edits.items():
            edit = loaded.get(edit_id)
            if edit is not None:
                out.setdefault(parent_id, Bundle()).replace = edit
        for parent_id, children in references.items():
            out.setdefault(parent_id, Bundle()).references = children
        return out

    async def _hide_invisible(
        self,
        user_id: str,
        wanted: dict[str, StoredEvent],
        summaries: dict[str, ThreadSummary],
        edits: dict[str, str],
        references: dict[str, list[str]],
        loaded: dict[str, StoredEvent],
        ignored: frozenset[str],
    ) -> None:
        """Children the user may not see (history visibility) are not bundled: a hidden
        latest reply or edit gives way to the latest one they may see. Updates the
        arguments in place; runs queries only when something is hidden."""
        assert self._visible is not None
        seen = {e.event_id for e, _ in await self._visible(user_id, list(loaded.values()))}
        if len(seen) == len(loaded):
            return
        for root_id, summary in list(summaries.items()):
            if summary.latest_event_id in seen:
                continue
            root = wanted[root_id].event
            replies = await self._visible_children(user_id, root.room_id, root_id, THREAD)
            replies = [p for p in replies if p.event.sender not in ignored]
            if not replies:
                del summaries[root_id]
                continue
            latest = replies[0]
            summaries[root_id] = ThreadSummary(
                latest.event.event_id,
                len(replies),
                any(e.sender == user_id for e, _ in replies),
            )
            loaded[latest.event.event_id] = latest
            seen.add(latest.event.event_id)
            more = await self._store.aggregations(
                thread_roots=[],
                edit_targets=[latest.event.event_id],
                reference_targets=[latest.event.event_id],
                user_id=user_id,
                ignored=ignored,
            )
            edits.update(more.edits)
            references.update(more.references)
            extra = set(more.edits.values()) | {
                eid for children in more.references.values() for eid in children
            }
            if extra:
                pairs = await self._events.get_events_with_meta(extra)
                loaded.update(pairs)
                seen |= {e.event_id for e, _ in await self._visible(user_id, list(pairs.values()))}
        for parent_id, edit_id in list(edits.items()):
            if edit_id in seen:
                continue
            del edits[parent_id]
            parent = wanted.get(parent_id) or loaded.get(parent_id)
            if parent is None:
                continue
            original = parent.event
            candidates = [
                child
                for child in await self._visible_children(
                    user_id, original.room_id, parent_id, REPLACE
                )
                if is_valid_edit(child.event)
                and child.event.sender == original.sender
                and child.event.type == original.type
                and original.state_key is None
            ]
            if candidates:
                best = max(candidates, key=lambda p: (p.event.origin_server_ts, p.event.event_id))
                edits[parent_id] = best.event.event_id
                loaded[best.event.event_id] = best
        for parent_id, children in list(references.items()):
            kept = [eid for eid in children if eid in seen]
            if kept:
                references[parent_id] = kept
            else:
                del references[parent_id]

    async def _visible_children(
        self, user_id: str, room_id: str, parent_id: str, rel_type: str
    ) -> list[StoredEvent]:
        """The children of one relation type the user may see, newest first."""
        assert self._visible is not None
        rows = await self._store.get_children(
            room_id,
            parent_id,
            rel_type=rel_type,
            event_type=None,
            lower_exclusive=None,
            upper_inclusive=None,
            backwards=True,
            limit=MAX_FALLBACK_SCAN,
        )
        got = await self._events.get_events_with_meta(eid for eid, _ in rows)
        pairs = [got[eid] for eid, _ in rows if eid in got and not got[eid].meta.soft_failed]
        return await self._visible(user_id, pairs)


class RelationsService:
    def __init__(
        self,
        events: EventStore,
        store: RelationStore,
        visibility: HistoryVisibility,
        formatter: EventFormatter,
        room_access: RoomAccessCheck,
    ) -> None:
        self._events = events
        self._store = store
        self._visibility = visibility
        self._formatter = formatter
        self._room_access = room_access

    async def _visible_parent(self, user_id: str, room_id: str, event_id: str) -> StoredEvent:
        await self._room_access(user_id, room_id)
        found = await self._events.get_event(event_id)
        if (
            found is None
            or found.event.room_id != room_id
            or found.meta.rejected_reason is not None
            or not await self._visibility.is_visible(user_id, found)
        ):
            raise not_found("Unknown parent event")
        return found

    async def _load(self, user_id: str, event_ids: Sequence[str]) -> list[StoredEvent]:
        """The events, in the given order, that the user may see."""
        got = await self._events.get_events_with_meta(event_ids)
        pairs = [got[eid] for eid in event_ids if eid in got and not got[eid].meta.soft_failed]
        return await self._visibility.filter_events(user_id, pairs)

    async def relations(
        self,
        user_id: str,
        device_id: str | None,
        room_id: str,
        event_id: str,
        *,
        rel_type: str | None,
        event_type: str | None,
        from_pos: int | None,
        from_token: str | None,
        to_pos: int | None,
        backwards: bool,
        limit: int,
        recurse: bool,
    ) -> JsonDict:
        """GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]: one page of
        the children, newest first when `backwards`. A position token splits the stream:
        events at or before it are behind, events after it ahead."""
        await self._visible_parent(user_id, room_id, event_id)
        if backwards:
            lower, upper = to_pos, from_pos
        else:
            lower, upper = from_pos, to_pos
        rows = await self._store.get_children(
            room_id,
            event_id,
            rel_type=rel_type,
            event_type=event_type,
            lower_exclusive=lower,
            upper_inclusive=upper,
            backwards=backwards,
            limit=limit + 1,
            recurse_depth=RECURSION_DEPTH if recurse else 1,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        visible = await self._load(user_id, [eid for eid, _ in rows])
        body: JsonDict = {
            "chunk": await self._formatter.format(visible, FormatOptions(user_id, device_id))
        }
        if more and rows:
            last = rows[-1][1]
            body["next_batch"] = pagination_token(last - 1 if backwards else last)
        if from_token is not None:
            body["prev_batch"] = from_token
        if recurse:
            body["recursion_depth"] = RECURSION_DEPTH
        return body

    async def threads(
        self,
        user_id: str,
        device_id: str | None,
        room_id: str,
        *,
        participated_only: bool,
        from_pos: int | None,
        limit: int,
    ) -> JsonDict:
        """GET /rooms/{roomId}/threads: the thread roots by latest reply, newest first."""
        await self._room_access(user_id, room_id)
        rows = await self._store.get_threads(
            room_id, from_pos, limit + 1, user_id if participated_only else None
        )
        more = len(rows) > limit
        rows = rows[:limit]
        roots = [
            pair
            for pair in await self._load(user_id, [eid for eid, _ in rows])
            if pair.event.room_id == room_id
        ]
        body: JsonDict = {
            "chunk": await self._formatter.format(roots, FormatOptions(user_id, device_id))
        }
        if more and rows:
            body["next_batch"] = pagination_token(rows[-1][1] - 1)
        return body

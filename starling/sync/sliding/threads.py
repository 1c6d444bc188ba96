"""MSC4360, the threads extension of sliding sync, and its companion endpoint
`GET /_matrix/client/unstable/io.element.msc4360/thread_updates`.

A thread is updated when it gets a reply (the `threads` table keeps each thread's latest
reply). Updates are those of the user's currently joined rooms (as Synapse, a room left
since shows none), one per thread however many replies it got, latest first, at most the
request's `limit` (100 at most). Each may carry:

- `thread_root` (with `include_roots`): the root event, formatted with its bundled
  aggregations, so `unsigned.m.relations.m.thread.latest_event` is the latest reply;
- `prev_batch`: when the thread got more than one reply in the window, a /relations
  `from` token (dir=b) just before the latest reply, for the ones not shown.

Without `include_roots`, a thread whose latest reply is in this response's timelines is
left out (the client has it). With more updates than `limit`, the extension's
`prev_batch` continues them through /thread_updates (`from`), bounded below by `to`
(the request's `pos`). Roots the user may not see (history visibility) are left out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from starling.rooms.client_format import EventFormatter, FormatOptions
from starling.storage.events import EventStore, StoredEvent
from starling.storage.sliding_sync import SlidingSyncStore
from starling.sync.tokens import pagination_token, parse_room_position

VisibleFilter = Callable[[str, Sequence[StoredEvent]], Awaitable[list[StoredEvent]]]


class ThreadUpdates:
    def __init__(
        self,
        store: SlidingSyncStore,
        events: EventStore,
        formatter: EventFormatter,
        visible: VisibleFilter,
        joined_rooms: Callable[[str], Awaitable[Collection[str]]],
    ) -> None:
        self._store = store
        self._events = events
        self._formatter = formatter
        self._visible = visible
        self._joined_rooms = joined_rooms

    async def updates(
        self,
        user_id: str,
        device_id: str | None,
        lower: int | None,
        upper: int,
        limit: int,
        include_roots: bool,
        in_timelines: Collection[str] = (),
    ) -> tuple[dict[str, dict[str, Any]], str | None]:
        """({room: {root: update}}, the prev_batch for /thread_updates or None)."""
        rooms = sorted(await self._joined_rooms(user_id))
        rows = await self._store.thread_updates(rooms, lower, upper, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        prev_batch = pagination_token(rows[-1][3] - 1) if more and rows else None
        if not include_roots:
            rows = [r for r in rows if r[2] not in in_timelines]
        if not rows:
            return {}, prev_batch
        several = await self._store.threads_with_several_replies([r[1] for r in rows], lower, upper)
        loaded = await self._events.get_events_with_meta(r[1] for r in rows)
        roots = await self._visible(user_id, [loaded[r[1]] for r in rows if r[1] in loaded])
        visible = {pair.event.event_id: pair for pair in roots}
        formatted: dict[str, dict[str, Any]] = {}
        if include_roots and roots:
            shown = await self._formatter.format(roots, FormatOptions(user_id, device_id))
            formatted = {
                pair.event.event_id: event for pair, event in zip(roots, shown, strict=True)
            }
        out: dict[str, dict[str, Any]] = {}
        for room_id, thread_id, _latest_id, latest_pos in rows:
            if thread_id not in visible or visible[thread_id].event.room_id != room_id:
                continue
            update: dict[str, Any] = {}
            if include_roots:
                update["thread_root"] = formatted[thread_id]
            if thread_id in several:
                update["prev_batch"] = pagination_token(latest_pos - 1)
            out.setdefault(room_id, {})[thread_id] = update
        return out, prev_batch

    async def page(
        self,
        user_id: str,
        device_id: str | None,
        from_token: str | None,
        to_token: str | None,
        limit: int,
        current: int,
    ) -> dict[str, Any]:
        """GET /thread_updates (dir=b): thread updates at or before `from` (or now) and
        after `to`, latest first, roots included."""
        upper = parse_room_position(from_token) if from_token is not None else current
        lower = parse_room_position(to_token) if to_token is not None else None
        chunk, next_batch = await self.updates(
            user_id, device_id, lower, min(upper, current), limit, include_roots=True
        )
        body: dict[str, Any] = {"chunk": chunk}
        if next_batch is not None:
            body["next_batch"] = next_batch
        return body

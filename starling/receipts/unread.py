"""Unread notification counts for /sync: `unread_notifications` (and, when the filter
asks, `unread_thread_notifications`) of each joined room.

The counts come from the user's push rules (spec: client-server-api modules/push.md,
"Receiving notifications"): an event counts when it is from someone else, after the user's
latest m.read / m.read.private receipt (unthreaded, or of the event's thread) and after
the user joined, and the user's rules give it the "notify" action; it is a highlight when
they also set the "highlight" tweak. The rules are evaluated here, when the counts are
asked for, on the newest events of each room after those bounds (at most
SCAN_FACTOR * UNREAD_CAP per room, in one query); counting stops at UNREAD_CAP per room
(clients show "99+"). Evaluation per event is pure and cheap; the compiled rule sets are
cached by the push rules service until the user's m.push_rules change.

The counts change with every new event and receipt, so this extension's "position" is
the sum of the events and receipts positions: it moves whenever either stream does.
It fills the rooms already in the response (all joined rooms on an initial sync), so it
must be registered after the extensions that add rooms (typing, receipts, account data).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starling.protocol.push_rules import is_highlight, notifies
from starling.push.service import PushRulesService
from starling.receipts.service import MAIN_THREAD, thread_of
from starling.rooms.event_service import RoomEventService
from starling.storage.database import Database
from starling.storage.events import EventStore
from starling.storage.memberships import MembershipStore
from starling.storage.profiles import ProfileStore
from starling.storage.receipts import ReceiptStore, events_after_bounds
from starling.storage.streams import StreamIdGenerator
from starling.sync.extension import SyncContext
from starling.sync.sections import joined_room, wants_thread_counts

UNREAD_CAP = 100
# How many of the newest events after the read receipt are evaluated per room, as a
# multiple of UNREAD_CAP: non-notifying events (reactions, edits, member changes) share
# the window with the ones that count.
SCAN_FACTOR = 3

Counts = dict[str, list[int]]  # thread ("main" or root ID) -> [notifications, highlights]


class UnreadCounts:
    """The SyncExtension writing unread counts into joined rooms."""

    stream_name = "unread_counts"

    def __init__(
        self,
        db: Database,
        receipts: ReceiptStore,
        events: EventStore,
        events_stream: StreamIdGenerator,
        memberships: MembershipStore,
        profiles: ProfileStore,
        room_events: RoomEventService,
        push_rules: PushRulesService,
    ) -> None:
        self._db = db
        self._receipts = receipts
        self._events = events
        self._events_stream = events_stream
        self._memberships = memberships
        self._profiles = profiles
        self._room_events = room_events
        self._push_rules = push_rules

    def current_position(self) -> int:
        return self._events_stream.current_position() + self._receipts.stream.current_position()

    async def counts(self, user_id: str, room_ids: Iterable[str]) -> dict[str, Counts]:
        """Per room, per thread: [notification count, highlight count]."""
        memberships = await self._memberships.get_rooms_for_user(user_id)
        rooms = [r for r in room_ids if r in memberships]
        if not rooms:
            return {}
        read = await self._receipts.get_read_positions(user_id, rooms)
        lower: dict[str, int] = {}
        for room_id in rooms:
            joined_at = memberships[room_id].stream_ordering or 0
            lower[room_id] = max(joined_at, read.get(room_id, {}).get("", 0))
        cap = UNREAD_CAP
        candidates = await events_after_bounds(self._db, user_id, lower, SCAN_FACTOR * cap)
        candidates.sort(key=lambda c: c[2], reverse=True)  # newest first
        loaded = await self._events.get_events([eid for _, eid, _ in candidates])
        # Events of threads already read are skipped before evaluating the rest.
        unread = []
        for room_id, event_id, position in candidates:
            event = loaded.get(event_id)
            if event is None:
                continue
            thread = thread_of(event)
            if position <= read.get(room_id, {}).get(thread, -1):
                continue
            unread.append((room_id, event, thread))
        actions = await self._push_rules.actions_for(user_id, (e for _, e, _ in unread))
        out: dict[str, Counts] = {r: {} for r in rooms}
        counted: dict[str, int] = {}
        for room_id, event, thread in unread:
            event_actions = actions.get(event.event_id)
            if not notifies(event_actions) or counted.get(room_id, 0) >= cap:
                continue
            counted[room_id] = counted.get(room_id, 0) + 1
            counter = out[room_id].setdefault(thread, [0, 0])
            counter[0] += 1
            if is_highlight(event_actions):
                counter[1] += 1
        return out

    # --- SyncExtension ---------------------------------------------------------------

    async def contribute(self, ctx: SyncContext, response: dict[str, Any]) -> bool:
        if ctx.since is None:
            rooms = sorted(ctx.joined_rooms)
        else:
            present = response.get("rooms", {}).get("join", {})
            rooms = [r for r in present if r in ctx.joined_rooms]
        if not rooms:
            return False
        threaded = wants_thread_counts(ctx)
        counts = await self.counts(ctx.user_id, rooms)
        for room_id in rooms:
            per_thread = counts.get(room_id, {})
            room = joined_room(response, room_id)
            if threaded:
                main = per_thread.get(MAIN_THREAD, [0, 0])
                room["unread_notifications"] = {
                    "notification_count": main[0],
                    "highlight_count": main[1],
                }
                threads = {
                    root: {"notification_count": n, "highlight_count": h}
                    for root, (n, h) in per_thread.items()
                    if root != MAIN_THREAD
                }
                if threads:
                    room["unread_thread_notifications"] = threads
            else:
                room["unread_notifications"] = {
                    "notification_count": min(UNREAD_CAP, sum(c[0] for c in per_thread.values())),
                    "highlight_count": min(UNREAD_CAP, sum(c[1] for c in per_thread.values())),
                }
        # Counts alone never end a long-poll: they ride along with the room's changes.
        return False

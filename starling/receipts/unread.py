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

Evaluated events are remembered per (user, room) (`_Scanned`, an LRU bounded by the
number of events it holds): the next count for that room evaluates only the events that
arrived since, so a long-polling client's incremental sync costs one short query and the
new events' evaluation, not a re-evaluation of everything unread. Like Synapse, which
stores push actions when an event arrives, an event is evaluated once, with the room's
facts (member count, power levels, display name) of that moment. A change of the user's
rules, a new join (an older lower bound), a redaction in the room or a purge of its
history starts that room afresh.

The counts change with every new event and receipt, so this extension's "position" is
the sum of the events and receipts positions: it moves whenever either stream does.
It fills the rooms already in the response (all joined rooms on an initial sync), so it
must be registered after the extensions that add rooms (typing, receipts, account data).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from starling.protocol.event import Event
from starling.protocol.push_rules import PushRuleSet, is_highlight, notifies
from starling.push.service import PushRulesService
from starling.receipts.service import MAIN_THREAD, thread_of
from starling.rooms.event_service import RoomEventService
from starling.storage.events import EventStore
from starling.storage.memberships import MembershipStore
from starling.storage.profiles import ProfileStore
from starling.storage.receipts import ReceiptStore
from starling.storage.streams import StreamIdGenerator
from starling.sync.extension import SyncContext
from starling.sync.sections import joined_room, wants_thread_counts

UNREAD_CAP = 100
# How many of the newest events after the read receipt are evaluated per room, as a
# multiple of UNREAD_CAP: non-notifying events (reactions, edits, member changes) share
# the window with the ones that count.
SCAN_FACTOR = 3

# Notifying events remembered across all (user, room) entries of the scan cache.
CACHE_EVENTS = 100_000
# Users whose read positions are remembered between syncs.
CACHE_USERS = 10_000

Counts = dict[str, list[int]]  # thread ("main" or root ID) -> [notifications, highlights]
# A notifying event: (stream position, thread, highlight).
_Entry = tuple[int, str, bool]


@dataclass
class _Scanned:
    """What is known of one (user, room): every event of others after `lower` up to
    `upto` was evaluated with `rules`; `entries` are the notifying ones, newest first (at
    most SCAN_FACTOR * UNREAD_CAP). `generation` is the room's redaction and purge count
    then."""

    rules: PushRuleSet
    lower: int
    upto: int
    generation: int
    entries: list[_Entry]


class UnreadCounts:
    """The SyncExtension writing unread counts into joined rooms."""

    stream_name = "unread_counts"

    def __init__(
        self,
        receipts: ReceiptStore,
        events: EventStore,
        events_stream: StreamIdGenerator,
        memberships: MembershipStore,
        profiles: ProfileStore,
        room_events: RoomEventService,
        push_rules: PushRulesService,
    ) -> None:
        self._receipts = receipts
        self._events = events
        self._events_stream = events_stream
        self._memberships = memberships
        self._profiles = profiles
        self._room_events = room_events
        self._push_rules = push_rules
        self._scanned: OrderedDict[tuple[str, str], _Scanned] = OrderedDict()
        self._scanned_events = 0
        # user -> (receipts position, rooms asked, their read positions)
        self._reads: OrderedDict[str, tuple[int, frozenset[str], dict[str, dict[str, int]]]] = (
            OrderedDict()
        )
        # Redactions seen per room: a redacted event no longer counts.
        self._redactions: dict[str, int] = {}
        room_events.add_listener(self._on_new_event)

    def _on_new_event(self, event: Event, position: int) -> None:
        if event.type == "m.room.redaction":
            self._redactions[event.room_id] = self._redactions.get(event.room_id, 0) + 1

    def _generation(self, room_id: str) -> int:
        """Moves with every redaction in the room and every history purge step (purged
        events no longer count)."""
        return self._redactions.get(room_id, 0) + self._events.purge_generation(room_id)

    def current_position(self) -> int:
        return self._events_stream.current_position() + self._receipts.stream.current_position()

    async def _candidates(
        self, user_id: str, scan_from: dict[str, int], window: int, upto: int
    ) -> list[tuple[str, str, int]]:
        """(room, event ID, position) of the newest `window` events per room after its
        bound that others sent, not redacted (ReceiptStore.events_after_bounds): from the
        room's remembered newest events when they cover the range (an incremental sync's
        case, no read), from the database otherwise."""
        asked: dict[str, int] = {}
        remembered: dict[str, list[tuple[str, int]]] = {}
        for room_id, start in scan_from.items():
            ids = self._events.recent_event_ids(room_id, start, upto)
            if ids is None:
                asked[room_id] = start
            elif ids:
                remembered[room_id] = ids
        out: list[tuple[str, str, int]] = []
        if remembered:
            got = await self._events.get_events_with_meta(
                eid for ids in remembered.values() for eid, _ in ids
            )
            for room_id, ids in remembered.items():
                if any(eid not in got for eid, _ in ids):  # purged meanwhile
                    asked[room_id] = scan_from[room_id]
                    continue
                picked = [
                    (room_id, eid, pos)
                    for eid, pos in ids
                    if got[eid].event.sender != user_id and got[eid].meta.redacted_by is None
                ]
                out.extend(picked[:window])
        if asked:
            out.extend(await self._receipts.events_after_bounds(user_id, asked, window, upper=upto))
        return out

    async def counts(self, user_id: str, room_ids: Iterable[str]) -> dict[str, Counts]:
        """Per room, per thread: [notification count, highlight count]."""
        memberships = await self._memberships.get_rooms_for_user(user_id)
        rooms = [r for r in room_ids if r in memberships]
        if not rooms:
            return {}
        read = await self._read_positions(user_id, rooms)
        rules = await self._push_rules.rule_set(user_id)
        upto = self._events_stream.current_position()
        window = SCAN_FACTOR * UNREAD_CAP
        lower: dict[str, int] = {}
        scan_from: dict[str, int] = {}
        kept: dict[str, list[_Entry]] = {}
        generation: dict[str, int] = {}
        for room_id in rooms:
            joined_at = memberships[room_id].stream_ordering or 0
            low = max(joined_at, read.get(room_id, {}).get("", 0))
            lower[room_id] = low
            gen = generation[room_id] = self._generation(room_id)
            hit = self._scanned.get((user_id, room_id))
            if (
                hit is not None
                and hit.rules is rules
                and hit.generation == gen
                and hit.lower <= low
                and hit.upto <= upto
            ):
                self._scanned.move_to_end((user_id, room_id))
                kept[room_id] = [e for e in hit.entries if e[0] > low]
                start = max(hit.upto, low)
            else:
                kept[room_id] = []
                start = low
            if start < upto:
                scan_from[room_id] = start
        candidates = await self._candidates(user_id, scan_from, window, upto)
        candidates.sort(key=lambda c: c[2], reverse=True)  # newest first
        loaded = await self._events.get_events([eid for _, eid, _ in candidates])
        batch = [(room_id, loaded[eid], pos) for room_id, eid, pos in candidates if eid in loaded]
        actions = await self._push_rules.actions_for(user_id, (e for _, e, _ in batch))
        fresh: dict[str, list[_Entry]] = {}
        scanned: dict[str, int] = {}
        for room_id, event, position in batch:
            scanned[room_id] = scanned.get(room_id, 0) + 1
            event_actions = actions.get(event.event_id)
            if notifies(event_actions):
                fresh.setdefault(room_id, []).append(
                    (position, thread_of(event), is_highlight(event_actions))
                )
        for room_id in rooms:
            new = fresh.get(room_id, [])
            # A full window of new events hides older ones: start over from it.
            entries = new if scanned.get(room_id, 0) >= window else new + kept[room_id]
            del entries[window:]
            kept[room_id] = entries
            if self._generation(room_id) == generation[room_id]:
                self._remember(
                    (user_id, room_id),
                    _Scanned(rules, lower[room_id], upto, generation[room_id], entries),
                )
        # Events of threads already read are skipped; counting stops at the cap.
        cap = UNREAD_CAP
        out: dict[str, Counts] = {r: {} for r in rooms}
        for room_id in rooms:
            thread_read = read.get(room_id, {})
            counted = 0
            per_thread = out[room_id]
            for position, thread, highlight in kept[room_id]:
                if position <= thread_read.get(thread, -1):
                    continue
                counter = per_thread.setdefault(thread, [0, 0])
                counter[0] += 1
                if highlight:
                    counter[1] += 1
                counted += 1
                if counted >= cap:
                    break
        return out

    async def _read_positions(self, user_id: str, rooms: list[str]) -> dict[str, dict[str, int]]:
        """The user's read receipts per room and thread; reused while the receipts stream
        stands still (a new receipt moves it before anyone can read the new position)."""
        position = self._receipts.stream.current_position()
        hit = self._reads.get(user_id)
        if hit is not None and hit[0] == position and hit[1].issuperset(rooms):
            self._reads.move_to_end(user_id)
            return hit[2]
        read = await self._receipts.get_read_positions(user_id, rooms)
        self._reads[user_id] = (position, frozenset(rooms), read)
        self._reads.move_to_end(user_id)
        if len(self._reads) > CACHE_USERS:
            self._reads.popitem(last=False)
        return read

    def _remember(self, key: tuple[str, str], scanned: _Scanned) -> None:
        old = self._scanned.pop(key, None)
        if old is not None:
            self._scanned_events -= len(old.entries) + 1
        self._scanned[key] = scanned
        self._scanned_events += len(scanned.entries) + 1
        while self._scanned_events > CACHE_EVENTS and self._scanned:
            _, evicted = self._scanned.popitem(last=False)
            self._scanned_events -= len(evicted.entries) + 1

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

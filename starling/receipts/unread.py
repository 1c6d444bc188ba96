"""Unread notification counts for /sync: `unread_notifications` (and, when the filter
asks, `unread_thread_notifications`) of each joined room.

Full push-rule evaluation is not implemented. The counts follow the spec's default
push rules in a simplified form: an event notifies the user when it is from someone else,
after the user's latest m.read / m.read.private receipt (unthreaded, or of the event's
thread) and after the user joined, and is a message (not an m.notice, not an edit), an
encrypted event, a sticker, a call invite, a poll start, or an invite of the user.
Other state events do not count. It is a highlight when its m.mentions lists the user,
or m.mentions.room is set by a sender with the room's "room" notification power; without
m.mentions, when its body contains the user's display name or localpart (as a word), or
"@room" from such a sender. Counting stops at UNREAD_CAP per room (clients show "99+").

The counts change with every new event and receipt, so this extension's "position" is
the sum of the events and receipts positions: it moves whenever either stream does.
It fills the rooms already in the response (all joined rooms on an initial sync), so it
must be registered after the extensions that add rooms (typing, receipts, account data).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from starling.protocol.event import Event
from starling.protocol.power_levels import PowerLevels
from starling.receipts.sections import joined_room, wants_thread_counts
from starling.receipts.service import MAIN_THREAD, thread_of
from starling.rooms.event_service import RoomEventService
from starling.storage.database import Database
from starling.storage.events import EventStore
from starling.storage.memberships import MembershipStore
from starling.storage.profiles import ProfileStore
from starling.storage.receipts import ReceiptStore, unread_candidates
from starling.storage.streams import StreamIdGenerator
from starling.sync.extension import SyncContext

UNREAD_CAP = 100
NOTIFYING_TYPES = (
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "org.matrix.msc3381.poll.start",
)

Counts = dict[str, list[int]]  # thread ("main" or root ID) -> [notifications, highlights]


def _word_pattern(text: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(text)}(?!\w)", re.IGNORECASE)


class _Mentions:
    """What highlights one user: their ID, display name and localpart."""

    def __init__(self, user_id: str, displayname: str | None) -> None:
        self.user_id = user_id
        localpart = user_id[1:].split(":", 1)[0]
        self.patterns = [_word_pattern(localpart)]
        if displayname and displayname.strip():
            self.patterns.append(_word_pattern(displayname.strip()))

    def in_body(self, body: Any) -> bool:
        return isinstance(body, str) and any(p.search(body) for p in self.patterns)


def _notifies(event: Event, user_id: str) -> bool:
    if event.type == "m.room.member":
        return event.state_key == user_id and event.membership == "invite"
    if event.type == "m.room.message":
        if event.content.get("msgtype") == "m.notice":
            return False
        relates = event.content.get("m.relates_to")
        if isinstance(relates, dict) and relates.get("rel_type") == "m.replace":
            return False
    return True


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
    ) -> None:
        self._db = db
        self._receipts = receipts
        self._events = events
        self._events_stream = events_stream
        self._memberships = memberships
        self._profiles = profiles
        self._room_events = room_events

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
        candidates = await unread_candidates(self._db, user_id, lower, NOTIFYING_TYPES, UNREAD_CAP)
        events = await self._events.get_events([eid for _, eid, _ in candidates])
        profile = await self._profiles.get_profile(user_id) or {}
        mentions = _Mentions(user_id, profile.get("displayname"))
        out: dict[str, Counts] = {r: {} for r in rooms}
        room_power: dict[str, PowerLevels | None] = {}
        for room_id, event_id, position in candidates:
            event = events.get(event_id)
            if event is None or not _notifies(event, user_id):
                continue
            thread = thread_of(event)
            if position <= read.get(room_id, {}).get(thread, -1):
                continue
            counter = out[room_id].setdefault(thread, [0, 0])
            counter[0] += 1
            if await self._highlights(event, mentions, room_power):
                counter[1] += 1
        return out

    async def _highlights(
        self, event: Event, mentions: _Mentions, room_power: dict[str, PowerLevels | None]
    ) -> bool:
        if event.type not in ("m.room.message", "m.sticker", "m.poll.start"):
            return False
        content = event.content
        declared = content.get("m.mentions")
        if isinstance(declared, dict):
            user_ids = declared.get("user_ids")
            if isinstance(user_ids, list) and mentions.user_id in user_ids:
                return True
            if declared.get("room") is True:
                return await self._may_notify_room(event, room_power)
            return False
        body = content.get("body")
        if mentions.in_body(body):
            return True
        if isinstance(body, str) and "@room" in body:
            return await self._may_notify_room(event, room_power)
        return False

    async def _may_notify_room(
        self, event: Event, room_power: dict[str, PowerLevels | None]
    ) -> bool:
        if event.room_id not in room_power:
            state = await self._room_events.current_state_events(
                event.room_id, [("m.room.create", ""), ("m.room.power_levels", "")]
            )
            create = state.get(("m.room.create", ""))
            room_power[event.room_id] = (
                None
                if create is None
                else PowerLevels.from_state(
                    create, state.get(("m.room.power_levels", "")), create.room_version
                )
            )
        levels = room_power[event.room_id]
        return levels is not None and levels.user_level(event.sender) >= levels.notification_level(
            "room"
        )

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

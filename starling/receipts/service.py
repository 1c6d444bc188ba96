"""Receipts and read markers (spec: client-server-api modules/receipts.md, read_markers.md).

A receipt marks an event as read by a user, optionally within a thread: `thread_id` is
"main" (the main timeline), a thread root's event ID, or absent (an unthreaded receipt,
stored with thread_id ''). Receipts only move forward within the same (type, thread).
m.read receipts go to every member of the room in the ephemeral m.receipt event of
/sync; m.read.private ones only to their owner. The fully-read marker (m.fully_read) is
room account data, also only moved forward.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from starling.account_data.service import AccountDataService
from starling.errors import forbidden, invalid_param, not_found
from starling.notifier import Notifier
from starling.protocol.event import Event
from starling.protocol.identifiers import is_valid_event_id
from starling.storage.events import EventStore, StoredEvent
from starling.storage.memberships import MembershipStore
from starling.storage.receipts import Receipt, ReceiptStore
from starling.sync.extension import SyncContext
from starling.sync.sections import add_room_events, section_matcher

RECEIPT_TYPES = ("m.read", "m.read.private")
FULLY_READ = "m.fully_read"
MAIN_THREAD = "main"


def thread_of(event: Event) -> str:
    """The thread an event belongs to: its thread root's ID, or "main"."""
    relates = event.content.get("m.relates_to")
    if isinstance(relates, dict) and relates.get("rel_type") == "m.thread":
        root = relates.get("event_id")
        if isinstance(root, str):
            return root
    return MAIN_THREAD


class ReceiptsService:
    """Receipts and read markers, and the receipts SyncExtension (stream "receipts")."""

    stream_name = "receipts"

    def __init__(
        self,
        store: ReceiptStore,
        events: EventStore,
        memberships: MembershipStore,
        account_data: AccountDataService,
        notifier: Notifier,
        clock: Callable[[], float] = time.time,
        visible: Callable[[str, StoredEvent], Awaitable[bool]] | None = None,
    ) -> None:
        self._store = store
        self._events = events
        self._memberships = memberships
        self._account_data = account_data
        self._notifier = notifier
        self._clock = clock
        # History visibility: a receipt is only taken on an event the user may see.
        self._visible = visible
        # Told of each new local receipt (federation sends the public ones).
        self.on_local_receipt: Callable[[Receipt], Awaitable[None]] | None = None

    def current_position(self) -> int:
        return self._store.stream.current_position()

    async def _joined_event(self, room_id: str, user_id: str, event_id: str) -> tuple[Event, int]:
        """The event (in this room, seen by a joined user) and its timeline position."""
        membership = await self._memberships.get_membership(room_id, user_id)
        if membership is None or membership.membership != "join":
            raise forbidden("You are not in this room")
        if not is_valid_event_id(event_id):
            raise invalid_param(f"{event_id!r} is not an event ID")
        found = await self._events.get_event(event_id)
        if (
            found is None
            or found.event.room_id != room_id
            or found.meta.rejected_reason is not None
            # An event the user may not see is answered as one that does not exist.
            or (self._visible is not None and not await self._visible(user_id, found))
        ):
            raise not_found(f"Unknown event {event_id} in room {room_id}")
        event, meta = found
        position = meta.stream_ordering if meta.stream_ordering is not None else 0
        return event, position

    async def set_receipt(
        self,
        room_id: str,
        user_id: str,
        receipt_type: str,
        event_id: str,
        thread_id: str | None = None,
    ) -> None:
        """POST /rooms/{roomId}/receipt/{receiptType}/{eventId}."""
        if receipt_type == FULLY_READ:
            if thread_id is not None:
                raise invalid_param("thread_id cannot be used with m.fully_read")
            await self.set_fully_read(room_id, user_id, event_id)
            return
        if receipt_type not in RECEIPT_TYPES:
            raise invalid_param(
                f"Receipt type must be one of {', '.join((*RECEIPT_TYPES, FULLY_READ))}"
            )
        event, position = await self._joined_event(room_id, user_id, event_id)
        if thread_id is not None:
            if not thread_id:
                raise invalid_param("thread_id must be a non-empty string")
            if thread_id != MAIN_THREAD and not is_valid_event_id(thread_id):
                raise invalid_param("thread_id must be 'main' or a thread root's event ID")
            in_thread = thread_of(event)
            if thread_id == MAIN_THREAD:
                if in_thread != MAIN_THREAD:
                    raise invalid_param("The event is in a thread, not the main timeline")
            elif in_thread != thread_id and event.event_id != thread_id:
                raise invalid_param("The event is not in the given thread")
        receipt = Receipt(
            room_id, receipt_type, user_id, thread_id or "", event_id, int(self._clock() * 1000)
        )
        if await self._store.upsert(receipt, position) is not None:
            if receipt_type == "m.read.private":
                self._notifier.notify(users=[user_id])
            else:
                self._notifier.notify(rooms=[room_id])
            if self.on_local_receipt is not None:
                await self.on_local_receipt(receipt)

    async def set_fully_read(self, room_id: str, user_id: str, event_id: str) -> None:
        """Move the m.fully_read marker (room account data) forward to the event."""
        _, position = await self._joined_event(room_id, user_id, event_id)
        current = await self._account_data.get(user_id, room_id, FULLY_READ)
        if current is not None and isinstance(current.get("event_id"), str):
            if current["event_id"] == event_id:
                return
            found = await self._events.get_event(current["event_id"])
            old_position = found.meta.stream_ordering if found is not None else None
            if old_position is not None and old_position >= position:
                return
        await self._account_data.set_account_data(
            user_id, room_id, FULLY_READ, {"event_id": event_id}
        )

    async def set_read_markers(
        self,
        room_id: str,
        user_id: str,
        fully_read: str | None,
        read: str | None,
        read_private: str | None,
    ) -> None:
        """POST /rooms/{roomId}/read_markers."""
        if fully_read is not None:
            await self.set_fully_read(room_id, user_id, fully_read)
        if read is not None:
            await self.set_receipt(room_id, user_id, "m.read", read)
        if read_private is not None:
            await self.set_receipt(room_id, user_id, "m.read.private", read_private)
        if fully_read is None and read is None and read_private is None:
            # Still answer like the other calls would for someone outside the room.
            membership = await self._memberships.get_membership(room_id, user_id)
            if membership is None or membership.membership != "join":
                raise forbidden("You are not in this room")

    # --- SyncExtension ---------------------------------------------------------------

    async def contribute(self, ctx: SyncContext, response: dict[str, Any]) -> bool:
        """An m.receipt ephemeral event in each joined room with receipts changed in
        (since, upto] (all current receipts on an initial sync)."""
        if not ctx.joined_rooms or ctx.since == ctx.upto:
            return False  # no room, or the stream has not moved: nothing to read
        allowed = section_matcher(ctx, "ephemeral")
        receipts = await self._store.get_receipts_for_rooms(
            sorted(ctx.joined_rooms), ctx.user_id, ctx.since, ctx.upto
        )
        by_room: dict[str, dict[str, Any]] = {}
        for r in receipts:
            data: dict[str, Any] = {"ts": r.ts}
            if r.thread_id:
                data["thread_id"] = r.thread_id
            content = by_room.setdefault(r.room_id, {})
            content.setdefault(r.event_id, {}).setdefault(r.receipt_type, {})[r.user_id] = data
        added = False
        for room_id, content in by_room.items():
            event = {"type": "m.receipt", "content": content}
            if allowed(event, room_id):
                add_room_events(response, room_id, "ephemeral", [event])
                added = True
        return added

    async def on_remote_receipt(self, receipt: Receipt) -> None:
        """Store a receipt received over federation (only public m.read ones)."""
        if receipt.receipt_type != "m.read":
            return
        found = await self._events.get_event(receipt.event_id)
        position = found.meta.stream_ordering if found is not None else None
        if found is not None and found.event.room_id != receipt.room_id:
            return
        if await self._store.upsert(receipt, position) is not None:
            self._notifier.notify(rooms=[receipt.room_id])

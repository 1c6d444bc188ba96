"""Ephemeral messages (MSC2228, Synapse's experimental `enable_ephemeral_messages`): a
message event whose content has `org.matrix.self_destruct_after` (a time, in ms since the
epoch) is censored at that time: its stored JSON becomes its redacted form (so every
reader, and every server that fetches it later, gets `content: {}`), as Synapse expires
it. No redaction event is sent: the expiry is this server's own business.

Every process that persists such an event records its expiry time; the process that runs
the background tasks censors the events that are due (woken at once for its own, within
IDLE_WAKE_SECONDS for another worker's)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from starling.protocol.event import Event
from starling.protocol.redaction import RedactionError, redact
from starling.rooms.due_timer import DueTimer
from starling.storage.event_expiry import EventExpiryStore
from starling.storage.events import EventStore

logger = logging.getLogger(__name__)

SELF_DESTRUCT_AFTER = "org.matrix.self_destruct_after"
IDLE_WAKE_SECONDS = 5.0
DUE_BATCH = 100


def expiry_of(event: Event) -> int | None:
    """The self-destruct time of a message event (not of state events), if it sets one."""
    if event.state_key is not None:
        return None
    value = event.content.get(SELF_DESTRUCT_AFTER)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


class EphemeralMessages:
    def __init__(
        self,
        store: EventExpiryStore,
        events: EventStore,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._store = store
        self._events = events
        self._clock_ms = clock_ms
        self._timer = DueTimer(
            "ephemeral-messages", self._run_due, lambda: self._clock_ms(), IDLE_WAKE_SECONDS
        )
        self._writes: set[asyncio.Task[Any]] = set()

    def on_new_event(self, event: Event, _position: int) -> None:
        """A persisted timeline event (RoomEventService listener, on its writer)."""
        expiry = expiry_of(event)
        if expiry is None:
            return
        task = asyncio.ensure_future(self._record(event.event_id, expiry))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _record(self, event_id: str, expiry: int) -> None:
        try:
            await self._store.add(event_id, expiry)
        except Exception:
            logger.exception("ephemeral messages: recording the expiry of %s failed", event_id)
            return
        self._timer.wake()

    async def settle(self) -> None:
        """Wait for the expiry times being recorded (tests)."""
        while self._writes:
            await asyncio.wait(list(self._writes))

    async def start(self) -> None:
        self._timer.start()

    async def stop(self) -> None:
        for pending in list(self._writes):
            pending.cancel()
        await self._timer.stop()

    async def expire_due(self) -> int:
        """Censor every event that is due; how many."""
        done = 0
        while True:
            due = await self._store.due(self._clock_ms(), DUE_BATCH)
            if not due:
                return done
            for event_id in due:
                await self._expire(event_id)
                done += 1

    async def _expire(self, event_id: str) -> None:
        stored = await self._events.get_event(event_id)
        if stored is None:
            await self._store.forget(event_id)
            return
        event = stored.event
        try:
            pruned = redact(event.pdu, event.room_version)
        except RedactionError:
            await self._store.forget(event_id)
            return
        await self._store.censor(event_id, orjson.dumps(pruned).decode())

    async def _run_due(self) -> int | None:
        await self.expire_due()
        return await self._store.next_expiry()

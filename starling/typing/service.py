"""Typing notifications (spec: client-server-api modules/typing_notifications.md).

Typing state is ephemeral and lives in memory only: per room, the users typing and when
each stops. Every change (start, stop, expiry) advances the "typing" stream by one and
records the position on the room, so an incremental /sync sends a room's m.typing only
when it changed since the token. A typing user who stays typing does not move the stream.
A restart forgets everything, which the spec allows. Positions follow the wall clock in
milliseconds (each change takes the next integer, or the current millisecond if that is
higher), so a new process starts above every position the previous one handed out and a
token from before a restart hides nothing that changes after it; a token from the future
(a clock set back, or a burst of more than one change per millisecond just before the
restart) is treated like an initial sync.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starling.errors import forbidden
from starling.notifier import Notifier
from starling.protocol.event import Event
from starling.storage.memberships import MembershipStore
from starling.sync.extension import SyncContext
from starling.sync.sections import add_room_events, section_matcher

# The longest a typing notification lasts without being renewed.
MAX_TYPING_TIMEOUT_MS = 30_000
DEFAULT_TYPING_TIMEOUT_MS = 30_000


class TypingService:
    """The typing state of every room, and its SyncExtension (stream "typing")."""

    stream_name = "typing"

    def __init__(
        self,
        memberships: MembershipStore,
        notifier: Notifier,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._memberships = memberships
        self._notifier = notifier
        self._clock = clock
        self._wall_clock = wall_clock
        self._position = self._wall_ms()
        # room -> {user: monotonic time the notification ends}
        self._typing: dict[str, dict[str, float]] = {}
        # room -> stream position of its last change
        self._changed_at: dict[str, int] = {}
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        # Told of each local user's typing change (room, user, typing): federation.
        self.on_local_change: Callable[[str, str, bool], Awaitable[None]] | None = None
        # Set with workers (starling/cluster): each change made here is told to the other
        # processes as (room, user, typing, timeout ms); they apply it to their own copy
        # (`started_here`, `stopped_here`), so a user's typing shows on every process.
        self.relay: Callable[[str, str, bool, int], None] | None = None

    def current_position(self) -> int:
        return self._position

    def _wall_ms(self) -> int:
        return int(self._wall_clock() * 1000)

    def typing_users(self, room_id: str) -> list[str]:
        now = self._clock()
        return sorted(u for u, until in self._typing.get(room_id, {}).items() if until > now)

    async def set_typing(
        self, room_id: str, user_id: str, typing: bool, timeout_ms: int = DEFAULT_TYPING_TIMEOUT_MS
    ) -> None:
        """Start (for at most MAX_TYPING_TIMEOUT_MS) or stop typing; the user must be
        joined to the room (else M_FORBIDDEN)."""
        membership = await self._memberships.get_membership(room_id, user_id)
        if membership is None or membership.membership != "join":
            raise forbidden("You are not in this room")
        if typing:
            self.started(room_id, user_id, timeout_ms)
        else:
            self.stopped(room_id, user_id)
        if self.on_local_change is not None:
            await self.on_local_change(room_id, user_id, typing)

    def started(self, room_id: str, user_id: str, timeout_ms: int) -> None:
        """Record that a user is typing (also for typing EDUs from federation)."""
        self.started_here(room_id, user_id, timeout_ms)
        if self.relay is not None:
            self.relay(room_id, user_id, True, timeout_ms)

    def stopped(self, room_id: str, user_id: str) -> None:
        self.stopped_here(room_id, user_id)
        if self.relay is not None:
            self.relay(room_id, user_id, False, 0)

    def started_here(self, room_id: str, user_id: str, timeout_ms: int) -> None:
        """`started` for this process only (another process's change)."""
        seconds = max(0, min(timeout_ms, MAX_TYPING_TIMEOUT_MS)) / 1000
        users = self._typing.setdefault(room_id, {})
        was_typing = users.get(user_id, 0.0) > self._clock()
        users[user_id] = self._clock() + seconds
        key = (room_id, user_id)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._timers[key] = asyncio.get_running_loop().call_later(
            seconds, self._expire, room_id, user_id
        )
        if not was_typing:
            self._changed(room_id)

    def stopped_here(self, room_id: str, user_id: str) -> None:
        """`stopped` for this process only (another process's change)."""
        timer = self._timers.pop((room_id, user_id), None)
        if timer is not None:
            timer.cancel()
        users = self._typing.get(room_id)
        if users is not None and users.pop(user_id, None) is not None:
            if not users:
                del self._typing[room_id]
            self._changed(room_id)

    def _expire(self, room_id: str, user_id: str) -> None:
        self._timers.pop((room_id, user_id), None)
        users = self._typing.get(room_id)
        if users is None or user_id not in users or users[user_id] > self._clock():
            return
        del users[user_id]
        if not users:
            del self._typing[room_id]
        self._changed(room_id)

    def _changed(self, room_id: str) -> None:
        self._position = max(self._position + 1, self._wall_ms())
        self._changed_at[room_id] = self._position
        self._notifier.notify(rooms=[room_id])

    def on_new_event(self, event: Event, position: int) -> None:
        """RoomEventService listener: a user who leaves a room stops typing there."""
        if (
            event.type == "m.room.member"
            and event.state_key is not None
            and event.membership != "join"
            and event.state_key in self._typing.get(event.room_id, {})
        ):
            self.stopped(event.room_id, event.state_key)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    # --- SyncExtension ---------------------------------------------------------------

    async def contribute(self, ctx: SyncContext, response: dict[str, Any]) -> bool:
        """m.typing in the ephemeral section of each joined room whose typing changed in
        (since, upto]; on an initial sync, of each room whose typing changed since this
        process started, even when nobody types any more (as Synapse does: a client
        that starts over learns that the typing it may have shown has stopped)."""
        allowed = section_matcher(ctx, "ephemeral")
        since = ctx.since
        if since is not None and since > self._position:
            since = None  # a token from before a restart
        if since is None:
            candidates = [r for r in ctx.joined_rooms if r in self._changed_at]
        elif len(self._changed_at) < len(ctx.joined_rooms):
            candidates = [
                r for r, at in self._changed_at.items() if at > since and r in ctx.joined_rooms
            ]
        else:
            candidates = [r for r in ctx.joined_rooms if self._changed_at.get(r, 0) > since]
        added = False
        for room_id in candidates:
            users = self.typing_users(room_id)
            event = {"type": "m.typing", "content": {"user_ids": users}}
            if not allowed(event, room_id):
                continue
            add_room_events(response, room_id, "ephemeral", [event])
            added = True
        return added

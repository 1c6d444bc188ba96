"""Peeking into world-readable rooms without joining them (MSC2753).

`POST /peek/{roomIdOrAlias}` makes the requesting *device* see the room under
`rooms.peek` in its /sync: the whole room (as a newly joined room is sent) in the first
response after the peek, then what changed, until the device stops peeking
(`POST /rooms/{roomId}/unpeek`), the user joins the room (it moves to `rooms.join`), or
the room stops being world-readable. Only rooms this server is in can be peeked
(peeking over federation, MSC2444, is not supported); only world-readable ones, since a
peeker is not a member: history visibility is judged for them as for anyone outside.

The peeks live on the "peeks" stream (storage/peeks.py), whose position is part of the
sync token: the sync service asks `peeks_for_sync` which rooms are new to a token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from starling.errors import MatrixError, forbidden, not_found
from starling.notifier import Notifier
from starling.protocol.event import Event
from starling.rooms.visibility import HistoryVisibility
from starling.storage.peeks import PeekStore
from starling.storage.state import StateStore

logger = logging.getLogger(__name__)

# Peeked rooms per device: each is built into every /sync of the device.
MAX_PEEKS_PER_DEVICE = 100


class PeekService:
    stream_name = "peeks"

    def __init__(
        self,
        store: PeekStore,
        state: StateStore,
        visibility: HistoryVisibility,
        notifier: Notifier,
        server_name: str,
    ) -> None:
        self._store = store
        self._state = state
        self._visibility = visibility
        self._notifier = notifier
        self._server_name = server_name
        self._tasks: set[asyncio.Task[None]] = set()

    def current_position(self) -> int:
        return self._store.stream.current_position()

    async def peek(self, user_id: str, device_id: str | None, room_id: str) -> None:
        """Start peeking, or 403 M_FORBIDDEN unless the room is world-readable."""
        if device_id is None:
            raise MatrixError(400, "M_UNKNOWN", "Peeking needs a device (log in with one)")
        if not await self._state.get_current_state_ids(room_id):
            raise not_found(f"Room {room_id} is not known to this server")
        if await self._visibility.current_visibility(room_id) != "world_readable":
            raise forbidden(f"Room {room_id} is not world-readable: it cannot be peeked into")
        peeks = await self._store.get_peeks(user_id, device_id)
        if room_id not in peeks and len(peeks) >= MAX_PEEKS_PER_DEVICE:
            raise forbidden(f"A device may peek into at most {MAX_PEEKS_PER_DEVICE} rooms")
        await self._store.add(user_id, device_id, room_id)
        self._notifier.notify(users=[user_id])

    async def unpeek(self, user_id: str, device_id: str | None, room_id: str) -> None:
        if device_id is not None and await self._store.remove(user_id, device_id, room_id):
            self._notifier.notify(users=[user_id])

    async def peeked_rooms(self, user_id: str, device_id: str | None) -> dict[str, int]:
        """The rooms the device peeks into, with the stream position of each peek."""
        if device_id is None:
            return {}
        return await self._store.get_peeks(user_id, device_id)

    async def devices_changed(self, user_id: str, device_ids: list[str], deleted: bool) -> None:
        """AccountService device listener: a deleted device's peeks end."""
        if deleted:
            for device_id in device_ids:
                await self._store.remove_device(user_id, device_id)

    # --- ending peeks --------------------------------------------------------------------

    def on_event(self, event: Event, position: int) -> None:
        """RoomEventService listener (on the writer): a local user's join ends their
        peeks into the room; a room that stops being world-readable ends every peek."""
        if event.state_key is None:
            return
        if event.type == "m.room.member":
            if event.membership != "join" or not event.state_key.endswith(":" + self._server_name):
                return
            self._spawn(self._end_user_peeks(event.state_key, event.room_id))
        elif event.type == "m.room.history_visibility" and event.state_key == "":
            if event.content.get("history_visibility") == "world_readable":
                return
            self._spawn(self._end_room_peeks(event.room_id))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _end_user_peeks(self, user_id: str, room_id: str) -> None:
        try:
            if await self._store.remove_user_room(user_id, room_id):
                self._notifier.notify(users=[user_id])
        except Exception:
            logger.exception("could not end the peeks of %s into %s", user_id, room_id)

    async def _end_room_peeks(self, room_id: str) -> None:
        try:
            users = await self._store.remove_room(room_id)
            if users:
                self._notifier.notify(users=users)
        except Exception:
            logger.exception("could not end the peeks into %s", room_id)

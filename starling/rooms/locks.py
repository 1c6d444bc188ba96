"""The per-room write lock: every write to a room's graph holds it (DESIGN §4).

Local sends, inbound PDUs, send_join responses and backfill all take
`RoomLocks.lock(room_id)` before computing an event's context and calling the persister,
so a room's extremities and current state change one event at a time; different rooms
proceed in parallel. One instance is shared by every writer (built in app.py).

One process only: a second writer process would need a database lock (scale-out work).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starling.locks import KeyedLock


class RoomLocks:
    def __init__(self) -> None:
        self._locks: KeyedLock[str] = KeyedLock()

    @asynccontextmanager
    async def lock(self, room_id: str) -> AsyncIterator[None]:
        """Hold the room's write lock for the body of the `async with`."""
        async with self._locks(room_id):
            yield

    def locked(self, room_id: str) -> bool:
        return self._locks.locked(room_id)

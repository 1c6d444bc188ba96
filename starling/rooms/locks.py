"""The per-room write lock: every write to a room's graph holds it (DESIGN §4).

Local sends, inbound PDUs, send_join responses and backfill all take
`RoomLocks.lock(room_id)` before computing an event's context and calling the persister,
so a room's extremities and current state change one event at a time; different rooms
proceed in parallel. One instance is shared by every writer (built in app.py).

With several processes (workers, docs/scaling.md) the lock is also a PostgreSQL
session-level advisory lock on the room, so a room is written by one process at a time;
the process that gets it first forgets what it has cached of the room's extremities and
current state (another process may have written since), so no writer ever computes a
room's state from a stale copy. Within a process the asyncio lock queues writers first,
so each process polls PostgreSQL for a room at most once at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from starling.locks import KeyedLock
from starling.storage.database import StorageError
from starling.storage.streams import advisory_key

if TYPE_CHECKING:
    # Only with workers, on PostgreSQL: asyncpg is not imported by a server on SQLite.
    from starling.storage.postgres import SessionLocks

logger = logging.getLogger(__name__)

# pg_advisory_lock(classid, objid): the class of room locks (streams use another).
ROOM_LOCK_CLASS = 0x53524D31
# Polling for a room another process holds: from 1 ms doubling to 20 ms.
_FIRST_POLL = 0.001
_MAX_POLL = 0.02
# Pings of the lock session: well within its idle timeout (SESSION_IDLE_TIMEOUT_S).
KEEPALIVE_SECONDS = 15.0


class RoomLocks:
    def __init__(self) -> None:
        self._locks: KeyedLock[str] = KeyedLock()
        self._connect: Callable[[], Awaitable[SessionLocks]] | None = None
        self._session: SessionLocks | None = None
        self._forget: Callable[[str], None] = lambda room_id: None
        self._keepalive: asyncio.Task[None] | None = None

    async def use_cluster(
        self, connect: Callable[[], Awaitable[SessionLocks]], forget: Callable[[str], None]
    ) -> None:
        """Other processes write rooms too: hold each room's advisory lock as well, through
        sessions `connect` opens, and call `forget(room_id)` (drop the room's cached
        extremities and state) each time the lock is taken."""
        self._connect = connect
        self._forget = forget
        self._session = await connect()
        self._keepalive = asyncio.get_running_loop().create_task(self._ping_forever())

    async def _ping_forever(self) -> None:
        """PostgreSQL ends the lock session of a process that stops talking (a frozen
        one), releasing its rooms; a running process pings it well within that time."""
        while True:
            await asyncio.sleep(KEEPALIVE_SECONDS)
            session = self._session
            if session is not None and not session.lost:
                try:
                    await session.ping()
                except StorageError:
                    logger.warning("room locks: the PostgreSQL session was lost")

    async def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
            self._keepalive = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @asynccontextmanager
    async def lock(self, room_id: str) -> AsyncIterator[None]:
        """Hold the room's write lock for the body of the `async with`."""
        async with self._locks(room_id):
            if self._connect is None:
                yield
                return
            session = await self._acquire(room_id)
            try:
                self._forget(room_id)
                yield
            finally:
                await asyncio.shield(session.unlock(ROOM_LOCK_CLASS, advisory_key(room_id)))

    async def _acquire(self, room_id: str) -> SessionLocks:
        key = advisory_key(room_id)
        delay = _FIRST_POLL
        while True:
            session = await self._live_session()
            try:
                if await session.try_lock(ROOM_LOCK_CLASS, key):
                    return session
            except StorageError:
                logger.warning("room locks: the PostgreSQL session was lost; reconnecting")
                if self._session is session:
                    self._session = None
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_POLL)

    async def _live_session(self) -> SessionLocks:
        if self._session is None or self._session.lost:
            assert self._connect is not None
            self._session = await self._connect()
        return self._session

    def locked(self, room_id: str) -> bool:
        return self._locks.locked(room_id)

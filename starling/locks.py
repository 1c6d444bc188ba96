"""Per-key coordination: `KeyedLock` and `SharedTasks` within this process,
`ClusterKeyedLock` across the processes of one server.

Writers that must not interleave for one key (a room, a user's push rules, a media
file's hash) take the key's lock; other keys proceed in parallel. A key's lock exists
only while someone holds or waits for it, so the table never grows with keys seen once.

Readers that would all do the same slow work for one key (fetch a server's keys, a URL's
preview, a room's backfill) share one task for it (`SharedTasks`), kept only while it runs.

`ClusterKeyedLock`: one process, a `KeyedLock`. With workers (docs/scaling.md), each key
is also a PostgreSQL session-level advisory lock of the lock's class, taken with
`pg_try_advisory_lock` on a connection of the lock's own (polled, as rooms/locks.py does
for rooms: a blocking lock would stall the connection's other keys) and pinged so that
PostgreSQL's idle timeout only ends the session of a frozen process. Within a process
the asyncio lock queues holders first, so each process polls PostgreSQL for a key at
most once at a time. Used where two processes doing the same work at once would lose
data (media files shared by hash) or do it twice (fetching a remote file).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Hashable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from starling.storage.database import StorageError
from starling.storage.streams import advisory_key

if TYPE_CHECKING:
    # Only with workers, on PostgreSQL: asyncpg is not imported by a server on SQLite.
    from starling.storage.postgres import SessionLocks

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class KeyedLock(Generic[K]):
    """``async with locks(key): ...`` — one holder per key at a time, FIFO per key."""

    def __init__(self) -> None:
        self._locks: dict[K, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def __call__(self, key: K) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def locked(self, key: K) -> bool:
        """Whether someone holds `key`'s lock now."""
        entry = self._locks.get(key)
        return entry is not None and entry[0].locked()

    def __len__(self) -> int:
        """How many keys have a holder or a waiter."""
        return len(self._locks)


class SharedTasks(Generic[K, T]):
    """``await tasks.run(key, start)``: the callers asking for one key while its work
    runs share a single task started by the first (`start()`), and all get its result or
    its exception. The task runs to its end even if every caller goes away (one client
    leaving must not cancel what others wait for); it is forgotten once done."""

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[T]] = {}

    def __contains__(self, key: K) -> bool:
        """Whether work for `key` runs now."""
        return key in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    async def run(self, key: K, start: Callable[[], Coroutine[Any, Any, T]]) -> T:
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.create_task(start())
            self._tasks[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: K, task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have gone away


logger = logging.getLogger(__name__)

# Polling for a key another process holds: from 1 ms doubling to 50 ms.
_FIRST_POLL = 0.001
_MAX_POLL = 0.05
# Pings of the lock session: well within its idle timeout (SESSION_IDLE_TIMEOUT_S).
KEEPALIVE_SECONDS = 15.0


class ClusterKeyedLock(Generic[K]):
    """``async with locks(key): ...`` — one holder per key in the whole server."""

    def __init__(self, lock_class: int, name: Callable[[K], str] = str) -> None:
        self._class = lock_class
        self._name = name
        self._local: KeyedLock[K] = KeyedLock()
        self._connect: Callable[[], Awaitable[SessionLocks]] | None = None
        self._session: SessionLocks | None = None
        self._keepalive: asyncio.Task[None] | None = None

    async def use_cluster(self, connect: Callable[[], Awaitable[SessionLocks]]) -> None:
        """Other processes take these keys too: hold each key's advisory lock as well,
        on sessions `connect` opens."""
        self._connect = connect
        self._session = await connect()
        self._keepalive = asyncio.get_running_loop().create_task(self._ping_forever())

    async def _ping_forever(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_SECONDS)
            session = self._session
            if session is not None and not session.lost:
                try:
                    await session.ping()
                except StorageError:
                    logger.warning("cluster locks: the PostgreSQL session was lost")

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
    async def __call__(self, key: K) -> AsyncIterator[None]:
        async with self._local(key):
            if self._connect is None:
                yield
                return
            objid = advisory_key(self._name(key))
            session = await self._acquire(objid)
            try:
                yield
            finally:
                await asyncio.shield(session.unlock(self._class, objid))

    async def _acquire(self, objid: int) -> SessionLocks:
        delay = _FIRST_POLL
        while True:
            session = await self._live_session()
            try:
                if await session.try_lock(self._class, objid):
                    return session
            except StorageError:
                logger.warning("cluster locks: the PostgreSQL session was lost; reconnecting")
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

    def locked(self, key: K) -> bool:
        """Whether someone in this process holds `key`'s lock now."""
        return self._local.locked(key)

"""Per-key coordination within this process: `KeyedLock` and `SharedTasks`.

Writers that must not interleave for one key (a room, a user's push rules, a media
file's hash) take the key's lock; other keys proceed in parallel. A key's lock exists
only while someone holds or waits for it, so the table never grows with keys seen once.

Readers that would all do the same slow work for one key (fetch a server's keys, a URL's
preview, a room's backfill) share one task for it (`SharedTasks`), kept only while it runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Hashable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

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

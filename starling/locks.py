"""Per-key mutual exclusion within this process: `KeyedLock`.

Writers that must not interleave for one key (a room, a user's push rules, a media
file's hash) take the key's lock; other keys proceed in parallel. A key's lock exists
only while someone holds or waits for it, so the table never grows with keys seen once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


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

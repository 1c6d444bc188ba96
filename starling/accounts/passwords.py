"""Password hashing with argon2id, off the event loop.

argon2 is deliberately slow (tens of milliseconds); hashing on the event loop would stall
every other request, so both hashing and checking run in threads. They get a small pool of
their own: each hash needs ~19 MiB of working memory, and glibc keeps a per-thread arena
of that size after use, so the default pool (one thread per core + 4) would pin ~100 MiB
for good after a burst of logins. `release_freed_memory_promptly` makes allocations that
large come straight from mmap, so they go back to the system once freed.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from concurrent.futures import ThreadPoolExecutor

import argon2

logger = logging.getLogger(__name__)

HASHING_THREADS = 2
_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def release_freed_memory_promptly(threshold: int = 1024 * 1024) -> bool:
    """Ask glibc to serve allocations of `threshold` bytes and more with mmap (returned to
    the OS on free). A no-op where there is no glibc; returns whether it took effect."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


class PasswordHasher:
    def __init__(self, time_cost: int = 2, memory_cost_kib: int = 19456, parallelism: int = 1):
        # OWASP's argon2id baseline (19 MiB, 2 iterations, 1 lane).
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost_kib, parallelism=parallelism
        )
        self._executor = ThreadPoolExecutor(HASHING_THREADS, thread_name_prefix="argon2")

    async def hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._hasher.hash, password
        )

    async def verify(self, password_hash: str, password: str) -> bool:
        def check() -> bool:
            try:
                return bool(self._hasher.verify(password_hash, password))
            except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
                return False

        return await asyncio.get_running_loop().run_in_executor(self._executor, check)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

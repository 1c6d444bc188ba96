"""Password hashing with argon2id, off the event loop.

argon2 is deliberately slow (tens of milliseconds); hashing on the event loop would stall
every other request, so both hashing and checking run in the default thread pool.
"""

from __future__ import annotations

import asyncio

import argon2


class PasswordHasher:
    def __init__(self, time_cost: int = 2, memory_cost_kib: int = 19456, parallelism: int = 1):
        # OWASP's argon2id baseline (19 MiB, 2 iterations, 1 lane).
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost_kib, parallelism=parallelism
        )

    async def hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(None, self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        def check() -> bool:
            try:
                return bool(self._hasher.verify(password_hash, password))
            except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
                return False

        return await asyncio.get_running_loop().run_in_executor(None, check)

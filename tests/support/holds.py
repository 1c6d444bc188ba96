"""Holding a read open across a write: the races of "a read began before a change and
cached its answer after the change" (a generation guard's tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest


class Hold:
    """`reached` is set once the held call has its answer; it returns on `release()`."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self._released = asyncio.Event()

    async def wait_reached(self) -> None:
        await asyncio.wait_for(self.reached.wait(), 10)

    def release(self) -> None:
        self._released.set()


def hold_first_call(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str, matches: Callable[..., bool]
) -> Hold:
    """Patch the coroutine method `owner.name`: its first call whose arguments `matches`
    runs, then waits for `release()` before returning; every other call passes through."""
    real = getattr(owner, name)
    hold = Hold()

    async def held(*args: Any) -> Any:
        answer = await real(*args)
        if not hold.reached.is_set() and matches(*args):
            hold.reached.set()
            await hold._released.wait()
        return answer

    monkeypatch.setattr(owner, name, held)
    return hold

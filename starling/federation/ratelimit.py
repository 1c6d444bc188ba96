"""Inbound federation rate limits, per origin server (Synapse's `rc_federation`).

Within each `window_size` ms, an origin's requests past `sleep_limit` are delayed by
`sleep_delay` ms; a request arriving while more than `reject_limit` of that origin's
requests are already delayed or queued is refused (429 M_LIMIT_EXCEEDED); at most
`concurrent` requests per origin are processed at once, the rest wait in arrival order.
`acquire(origin)` returns the release to call when the request is done.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starling.config import FederationRateLimit
from starling.errors import limit_exceeded


@dataclass
class _Origin:
    times: deque[float] = field(default_factory=deque)
    sleeping: int = 0
    active: int = 0
    queue: deque[asyncio.Future[None]] = field(default_factory=deque)


class FederationRateLimiter:
    def __init__(
        self,
        limits: FederationRateLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._limits = limits
        self._clock = clock
        self._sleep = sleep
        self._origins: dict[str, _Origin] = {}

    async def acquire(self, origin: str) -> Callable[[], None]:
        limits = self._limits
        state = self._origins.get(origin)
        if state is None:
            state = self._origins[origin] = _Origin()
        now = self._clock()
        window = limits.window_size / 1000
        while state.times and now - state.times[0] >= window:
            state.times.popleft()
        if state.sleeping + len(state.queue) > limits.reject_limit:
            raise limit_exceeded(limits.window_size)
        state.times.append(now)
        if len(state.times) > limits.sleep_limit and limits.sleep_delay > 0:
            state.sleeping += 1
            try:
                await self._sleep(limits.sleep_delay / 1000)
            finally:
                state.sleeping -= 1
        if state.active < limits.concurrent:
            state.active += 1
        else:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            state.queue.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release(origin, state)  # the slot was handed to us: pass it on
                else:
                    state.queue.remove(waiter)
                raise
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._release(origin, state)

        return release

    def _release(self, origin: str, state: _Origin) -> None:
        while state.queue:
            waiter = state.queue.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the next waiter
                return
        state.active -= 1
        if state.active == 0 and not state.sleeping and not state.times:
            self._origins.pop(origin, None)
        elif state.active == 0 and not state.sleeping and len(self._origins) > 10_000:
            self._origins.pop(origin, None)

"""The delivery loop behind every persisted outbound HTTP queue (application-service
transactions, outgoing webhooks).

One loop per target. It sends the oldest stored item until the target accepts it, so
delivery is ordered and survives restarts (items live in the database, never only here).
When nothing is stored it asks its owner to fill the queue from the events stream, and
when that finds nothing new it sleeps until woken. A failed attempt waits as
`BackoffPolicy` says (the federation sender's policy: quick retries during a short outage,
then up to a quarter of an hour), then the same item is tried again; an owner may instead
give the item up (a dead letter), and the next one goes at once.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from starling.federation.sender.backoff import BackoffPolicy

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Attempt(enum.Enum):
    DELIVERED = "delivered"  # accepted: the owner has marked it done
    RETRY = "retry"  # not accepted: back off, then the same item again
    GIVEN_UP = "given_up"  # the owner recorded it as a dead letter: next item, no wait


class DeliveryLoop(Generic[T]):
    """Runs `oldest` → `send` until the queue is empty, then `fill`, then waits for `wake`.

    - `oldest()`: the oldest stored item, or None;
    - `send(item)`: one attempt, saying how it went (it marks the item done itself);
    - `fill()`: store the next items from the source; False when there was nothing new.
    """

    def __init__(
        self,
        name: str,
        *,
        oldest: Callable[[], Awaitable[T | None]],
        send: Callable[[T], Awaitable[Attempt]],
        fill: Callable[[], Awaitable[bool]],
        policy: BackoffPolicy,
        clock_ms: Callable[[], int] = lambda: int(time.monotonic() * 1000),
    ) -> None:
        self.name = name
        self.wake = asyncio.Event()
        self._oldest = oldest
        self._send = send
        self._fill = fill
        self._policy = policy
        self._clock_ms = clock_ms
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("%s failed", self.name)

    async def _run(self) -> None:
        interval_ms = 0
        failing_since_ms = 0
        while True:
            try:
                item = await self._oldest()
                if item is not None:
                    outcome = await self._send(item)
                    if outcome is not Attempt.RETRY:
                        interval_ms = 0
                        continue
                    now = self._clock_ms()
                    if interval_ms == 0:
                        failing_since_ms = now
                    interval_ms = self._policy.next_interval(interval_ms, failing_since_ms, now)
                    await asyncio.sleep(self._policy.jittered(interval_ms) / 1000)
                    continue
                self.wake.clear()
                if not await self._fill():
                    await self.wake.wait()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A database hiccup or a bug: log, wait as after a failed attempt, go on.
                logger.exception("%s: delivery failed", self.name)
                await asyncio.sleep(max(interval_ms, self._policy.initial_ms) / 1000)

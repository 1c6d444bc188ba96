"""`DueTimer`: one background task that does the work that is due, then sleeps until the
next due time (or until woken, or at most `idle_wake_seconds`), and retries a second later
when a round fails. Delayed events (rooms/delayed.py) and ephemeral messages
(rooms/ephemeral.py) run on it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

RETRY_SECONDS = 1.0


class DueTimer:
    def __init__(
        self,
        name: str,
        run_due: Callable[[], Awaitable[int | None]],
        clock_ms: Callable[[], int],
        idle_wake_seconds: float,
    ) -> None:
        """`run_due` does what is due now and answers the next due time (ms since the epoch),
        None when nothing is scheduled; `clock_ms` is read at every round."""
        self._name = name
        self._run_due = run_due
        self._clock_ms = clock_ms
        self._idle_wake_seconds = idle_wake_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Look at the schedule again now (something was added or changed)."""
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                self._wake.clear()
                upcoming = await self._run_due()
                wait = (
                    self._idle_wake_seconds
                    if upcoming is None
                    else max(0.0, (upcoming - self._clock_ms()) / 1000)
                )
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._wake.wait(), min(wait, self._idle_wake_seconds)
                        )
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s: a round failed; retrying", self._name)
                await asyncio.sleep(RETRY_SECONDS)

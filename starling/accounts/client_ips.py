"""Where and when each device was last seen: the address, user agent and time of its
latest authenticated request, for the devices list and the admin API's whois.

Requests only touch memory; the tracker writes what changed in one batch every
FLUSH_SECONDS (and when the server stops), as Synapse's client-IP batching does, so a
busy client costs no write per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from starling.storage.accounts import AccountStore

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 5.0
MAX_USER_AGENT = 512  # longer ones are cut (a client controls the header)


class ClientIps:
    def __init__(self, store: AccountStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        # Per process, by design: sightings not yet written. Each worker flushes its own
        # (the store keeps the newest sighting, whichever process flushes last), so an
        # admin's whois shows a request served elsewhere after that process's next flush (5 s).
        self._pending: dict[tuple[str, str], tuple[int, str | None, str | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def seen(
        self, user_id: str, device_id: str | None, ip: str | None, user_agent: str | None
    ) -> None:
        """Note a request by this device (tokens without a device are not tracked)."""
        if device_id is None:
            return
        ua = user_agent[:MAX_USER_AGENT] if user_agent else None
        # One entry per device, so this is bounded by the devices that exist.
        self._pending[(user_id, device_id)] = (int(self._clock() * 1000), ip, ua)

    async def flush(self) -> None:
        """Write every pending sighting now."""
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            await self._store.update_devices_last_seen(
                (user, device, ts, ip, ua) for (user, device), (ts, ip, ua) in batch.items()
            )

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except Exception:
                logger.exception("writing where devices were last seen failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.flush()

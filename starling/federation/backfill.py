"""Backfilling history from other servers (Server-Server API > Backfilling and retrieving
missing events): when a client pages back past the oldest event we hold in a room that
other servers share, we ask them for the events before our backward extremities (the
prev events we cite but lack) and run what comes back through the receipt pipeline as
backfilled events (negative stream positions: history, never /sync timeline, never an
extremity).

Servers with joined users are tried one after the other, those with the most members
first, until one answers with events.
Concurrent backfills of one room share a single fetch, and a room where every server
failed us is not asked again for a while (unless its backward extremities moved).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from starling.federation.receipt.fetched import ancestors_within, parse_batch
from starling.federation.receipt.remote import RemoteEvents
from starling.locks import SharedTasks
from starling.protocol.power_levels import server_of
from starling.protocol.room_versions import RoomVersion

logger = logging.getLogger(__name__)

BACKFILL_LIMIT = 100
# Backward extremities named in one request (the deepest ones).
MAX_EXTREMITIES = 20
# Servers tried for one backfill.
MAX_SERVERS = 5
# After every server failed us at the same backward extremities, /messages does not ask
# again for this long (clients page back in bursts).
RETRY_AFTER_MS = 30_000


class _Graph(Protocol):
    async def get_backward_extremities(self, room_id: str) -> list[str]: ...

    async def get_room_version(self, room_id: str) -> RoomVersion | None: ...


class _Members(Protocol):
    async def get_joined_users(self, room_id: str) -> frozenset[str]: ...


class _Pipeline(Protocol):
    async def process_pulled_events(
        self, origin: str, room_id: str, pdus: list[dict[str, Any]], *, backfilled: bool
    ) -> None: ...


class Backfiller:
    def __init__(
        self,
        server_name: str,
        graph: _Graph,
        memberships: _Members,
        remote: RemoteEvents,
        pipeline: _Pipeline,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._server_name = server_name
        self._graph = graph
        self._memberships = memberships
        self._remote = remote
        self._pipeline = pipeline
        self._running: SharedTasks[str, bool] = SharedTasks()
        self._clock = clock
        # room -> (when every server failed, the backward extremities then)
        self._failed: dict[str, tuple[float, frozenset[str]]] = {}

    async def backfill(self, room_id: str, limit: int = BACKFILL_LIMIT) -> bool:
        """Fetch history before the room's backward extremities; True if any server
        answered with events (which are then stored)."""
        return await self._running.run(room_id, lambda: self._backfill(room_id, limit))

    async def _backfill(self, room_id: str, limit: int) -> bool:
        extremities = (await self._graph.get_backward_extremities(room_id))[:MAX_EXTREMITIES]
        if not extremities:
            return False
        failed = self._failed.get(room_id)
        now = self._clock()
        if failed is not None:
            when, at = failed
            if at == frozenset(extremities) and now - when < RETRY_AFTER_MS / 1000:
                return False
            del self._failed[room_id]
        room_version = await self._graph.get_room_version(room_id)
        if room_version is None:
            return False
        for server in (await self._servers(room_id))[:MAX_SERVERS]:
            answer = await self._remote.backfill(server, room_id, extremities, limit)
            parsed, _ = parse_batch(answer or [], room_id, room_version, None)
            # Only the history we asked for: the extremities and their ancestors.
            wanted = ancestors_within(extremities, parsed)
            pdus = [ev.pdu for ev in wanted.values()]
            if not pdus:
                continue
            try:
                await self._pipeline.process_pulled_events(server, room_id, pdus, backfilled=True)
            except Exception:
                logger.exception("backfill of %s from %s failed", room_id, server)
                continue
            return True
        if len(self._failed) > 10_000:
            self._failed.clear()
        self._failed[room_id] = (now, frozenset(extremities))
        return False

    async def _servers(self, room_id: str) -> list[str]:
        joined = await self._memberships.get_joined_users(room_id)
        counts: dict[str, int] = {}
        for user in joined:
            server = server_of(user)
            if server and server != self._server_name:
                counts[server] = counts.get(server, 0) + 1
        return sorted(counts, key=lambda s: (-counts[s], s))

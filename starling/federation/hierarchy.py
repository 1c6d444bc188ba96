"""Asking other servers about the rooms of a space (server-server-api
GET /_matrix/federation/v1/hierarchy/{roomId}), for our clients' /hierarchy walks.

Answers are cached briefly (the spec asks that they be: a client paging through a big
space, or several clients opening it, ask the same question); failures are not cached
but answered as None, so the walk moves on to the next server or leaves the room out.
What an answer says is checked by `starling.rooms.hierarchy_remote` before use.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from starling.federation.client import federation_path
from starling.federation.errors import FederationError, FederationUnreachable
from starling.federation.ports import FederationClientPort

logger = logging.getLogger(__name__)

CACHE_SECONDS = 60.0
MAX_CACHED = 1000
TIMEOUT = 10.0
MAX_ANSWER_BYTES = 4 * 1024 * 1024


class RemoteHierarchy:
    def __init__(
        self, client: FederationClientPort, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._client = client
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str, bool], tuple[float, Any]] = OrderedDict()

    async def fetch(self, server: str, room_id: str, suggested_only: bool) -> Any:
        key = (server, room_id, suggested_only)
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return hit[1]
        try:
            answer = await self._client.get_json(
                server,
                federation_path("/_matrix/federation/v1/hierarchy/{}", room_id),
                {"suggested_only": "true" if suggested_only else "false"},
                timeout=TIMEOUT,
            )
        except (FederationError, FederationUnreachable) as e:
            logger.info("hierarchy of %s from %s: %s", room_id, server, e)
            return None
        self._cache[key] = (now, answer)
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
        return answer

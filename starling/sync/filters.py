"""Filters a user stores for /sync and the message endpoints (spec: client-server-api
"Filtering"): storing a validated filter, reading it back, and turning the `filter`
parameter of /sync (a stored filter's ID or inline JSON) into a parsed `SyncFilter`.

Both kinds are parsed once and cached: stored filters never change, and inline ones are
keyed by their text.
"""

from __future__ import annotations

from typing import Any

from starling.errors import invalid_param
from starling.protocol.numbers import parse_int
from starling.storage.events import LruCache
from starling.storage.filters import FilterStore
from starling.sync.filtering import (
    DEFAULT_SYNC_FILTER,
    SyncFilter,
    parse_filter_json,
    parse_sync_filter,
)

INLINE_CACHE_SIZE = 1000
STORED_CACHE_SIZE = 10_000


class SyncFilters:
    def __init__(self, store: FilterStore) -> None:
        self._store = store
        self._inline: LruCache[str, SyncFilter] = LruCache(INLINE_CACHE_SIZE)
        self._stored: LruCache[tuple[str, int], SyncFilter] = LruCache(STORED_CACHE_SIZE)

    async def create(self, user_id: str, body: dict[str, Any]) -> int:
        """Store `body` (400 if it is not a valid filter); its new filter ID."""
        parse_sync_filter(body)
        return await self._store.add_filter(user_id, body)

    async def get(self, user_id: str, filter_id: int) -> dict[str, Any] | None:
        return await self._store.get_filter(user_id, filter_id)

    async def for_sync(self, user_id: str, raw: str | None) -> SyncFilter:
        """/sync's `filter` parameter: absent, inline JSON, or the ID of a stored filter
        of this user (400 M_INVALID_PARAM "No such filter" otherwise)."""
        if raw is None or raw == "":
            return DEFAULT_SYNC_FILTER
        if raw.startswith("{"):
            hit = self._inline.get(raw)
            if hit is None:
                hit = parse_sync_filter(parse_filter_json(raw))
                self._inline.put(raw, hit)
            return hit
        filter_id = parse_int(raw, minimum=0)
        if filter_id is None:
            raise invalid_param("No such filter")
        key = (user_id, filter_id)
        hit = self._stored.get(key)
        if hit is None:
            stored = await self._store.get_filter(user_id, filter_id)
            if stored is None:
                raise invalid_param("No such filter")
            hit = parse_sync_filter(stored)
            self._stored.put(key, hit)
        return hit

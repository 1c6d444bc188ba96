"""Stored sync filters: POST /user/{userId}/filter writes here, /sync reads by ID.

Filters are immutable once stored, so reads are cached. The same filter uploaded twice
(compared by canonical JSON) keeps one row and one ID.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from starling.storage.database import Database, UniqueViolation
from starling.storage.events import LruCache


def _canonical(filter_json: dict[str, Any]) -> str:
    return orjson.dumps(filter_json, option=orjson.OPT_SORT_KEYS).decode()


class FilterStore:
    def __init__(self, db: Database, cache_size: int = 10_000) -> None:
        self._db = db
        self._cache: LruCache[tuple[str, int], dict[str, Any]] = LruCache(cache_size)

    async def add_filter(self, user_id: str, filter_json: dict[str, Any]) -> int:
        """Store a filter for the user; returns its ID (an existing one for a duplicate)."""
        text = _canonical(filter_json)
        digest = hashlib.sha256(text.encode()).hexdigest()
        for _ in range(5):
            existing = await self._db.fetch_val(
                "SELECT filter_id FROM user_filters WHERE user_id = ? AND filter_hash = ?",
                user_id,
                digest,
            )
            if existing is not None:
                return int(existing)
            try:
                async with self._db.transaction() as txn:
                    filter_id = await txn.fetch_val(
                        "INSERT INTO user_filters (user_id, filter_id, filter_hash, filter_json)"
                        " SELECT ?, COALESCE(MAX(filter_id), -1) + 1, ?, ?"
                        " FROM user_filters WHERE user_id = ? RETURNING filter_id",
                        user_id,
                        digest,
                        text,
                        user_id,
                    )
                return int(filter_id)
            except UniqueViolation:
                # A concurrent upload took the ID (or stored the same filter): look again.
                continue
        raise RuntimeError("could not allocate a filter ID")

    async def get_filter(self, user_id: str, filter_id: int) -> dict[str, Any] | None:
        hit = self._cache.get((user_id, filter_id))
        if hit is not None:
            return hit
        text = await self._db.fetch_val(
            "SELECT filter_json FROM user_filters WHERE user_id = ? AND filter_id = ?",
            user_id,
            filter_id,
        )
        if text is None:
            return None
        value: dict[str, Any] = orjson.loads(text)
        self._cache.put((user_id, filter_id), value)
        return value

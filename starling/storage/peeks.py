"""Rooms a device peeks into (MSC2753), on the "peeks" stream.

A row per (user, device, room); a new peek, or a peek renewed, takes a new stream
position, so /sync tells "peeking since before the client's token" (send what changed)
from "new since then" (send the whole room). Ending peeks moves the stream too.
"""

from __future__ import annotations

from typing import Any

from starling.storage.database import Database
from starling.storage.events import LruCache
from starling.storage.streams import StreamIdGenerator


class PeekStore:
    def __init__(self, db: Database, stream: StreamIdGenerator, cache_size: int = 10_000) -> None:
        self._db = db
        self.stream = stream
        self._cache: LruCache[tuple[str, str], tuple[int, dict[str, int]]] = LruCache(cache_size)

    async def add(self, user_id: str, device_id: str, room_id: str) -> int:
        """Start (or renew) a peek; returns its stream position."""
        async with self._db.transaction() as txn:
            stream_id = await self.stream.next_id(txn)
            await txn.execute(
                "INSERT INTO room_peeks (user_id, device_id, room_id, stream_id)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, device_id, room_id)"
                " DO UPDATE SET stream_id = excluded.stream_id",
                user_id,
                device_id,
                room_id,
                stream_id,
            )
        return stream_id

    async def _delete(self, sql: str, *args: Any) -> list[str]:
        """Run a DELETE ... RETURNING user_id; a deletion moves the stream too (so the
        readers' cache, keyed by the stream's position, sees it). The users whose
        peeks ended."""
        async with self._db.transaction() as txn:
            rows = await txn.fetch_all(sql + " RETURNING user_id", *args)
            if rows:
                await self.stream.next_id(txn)
        return sorted({r[0] for r in rows})

    async def remove(self, user_id: str, device_id: str, room_id: str) -> bool:
        """End a device's peek; False if it was not peeking."""
        return bool(
            await self._delete(
                "DELETE FROM room_peeks WHERE user_id = ? AND device_id = ? AND room_id = ?",
                user_id,
                device_id,
                room_id,
            )
        )

    async def remove_user_room(self, user_id: str, room_id: str) -> bool:
        """End the peeks of every device of the user into the room (a read first: this
        runs on every local join, and almost never finds a peek)."""
        found = await self._db.fetch_val(
            "SELECT 1 FROM room_peeks WHERE room_id = ? AND user_id = ? LIMIT 1", room_id, user_id
        )
        if found is None:
            return False
        return bool(
            await self._delete(
                "DELETE FROM room_peeks WHERE room_id = ? AND user_id = ?", room_id, user_id
            )
        )

    async def remove_room(self, room_id: str) -> list[str]:
        """End every peek into the room; returns the users who were peeking."""
        return await self._delete("DELETE FROM room_peeks WHERE room_id = ?", room_id)

    async def remove_device(self, user_id: str, device_id: str) -> bool:
        return bool(
            await self._delete(
                "DELETE FROM room_peeks WHERE user_id = ? AND device_id = ?", user_id, device_id
            )
        )

    async def get_peeks(self, user_id: str, device_id: str) -> dict[str, int]:
        """The rooms the device peeks into, with each peek's stream position. Every
        /sync asks, so the answer is cached until the stream moves (any peek or unpeek
        anywhere: they are rare), which other processes' writes also do."""
        position = self.stream.current_position()
        key = (user_id, device_id)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == position:
            return dict(hit[1])
        rows = await self._db.fetch_all(
            "SELECT room_id, stream_id FROM room_peeks WHERE user_id = ? AND device_id = ?",
            user_id,
            device_id,
        )
        found = {r[0]: int(r[1]) for r in rows}
        self._cache.put(key, (position, found))
        return dict(found)

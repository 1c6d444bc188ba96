"""Rooms a device peeks into (MSC2753), on the "peeks" stream.

A row per (user, device, room); a new peek, or a peek renewed, takes a new stream
position, so /sync tells "peeking since before the client's token" (send what changed)
from "new since then" (send the whole room).
"""

from __future__ import annotations

from starling.storage.database import Database
from starling.storage.streams import StreamIdGenerator


class PeekStore:
    def __init__(self, db: Database, stream: StreamIdGenerator) -> None:
        self._db = db
        self.stream = stream

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

    async def remove(self, user_id: str, device_id: str, room_id: str) -> bool:
        """End a device's peek; False if it was not peeking."""
        count = await self._db.execute(
            "DELETE FROM room_peeks WHERE user_id = ? AND device_id = ? AND room_id = ?",
            user_id,
            device_id,
            room_id,
        )
        return count > 0

    async def remove_user_room(self, user_id: str, room_id: str) -> int:
        """End the peeks of every device of the user into the room (a read first: this
        runs on every local join, and almost never finds a peek)."""
        found = await self._db.fetch_val(
            "SELECT 1 FROM room_peeks WHERE room_id = ? AND user_id = ? LIMIT 1", room_id, user_id
        )
        if found is None:
            return 0
        return await self._db.execute(
            "DELETE FROM room_peeks WHERE room_id = ? AND user_id = ?", room_id, user_id
        )

    async def remove_room(self, room_id: str) -> list[str]:
        """End every peek into the room; returns the users who were peeking."""
        async with self._db.transaction() as txn:
            rows = await txn.fetch_all(
                "DELETE FROM room_peeks WHERE room_id = ? RETURNING user_id", room_id
            )
        return sorted({r[0] for r in rows})

    async def remove_device(self, user_id: str, device_id: str) -> int:
        return await self._db.execute(
            "DELETE FROM room_peeks WHERE user_id = ? AND device_id = ?", user_id, device_id
        )

    async def count(self, user_id: str, device_id: str) -> int:
        return int(
            await self._db.fetch_val(
                "SELECT COUNT(*) FROM room_peeks WHERE user_id = ? AND device_id = ?",
                user_id,
                device_id,
            )
        )

    async def get_peeks(self, user_id: str, device_id: str) -> dict[str, int]:
        """The rooms the device peeks into, with each peek's stream position."""
        rows = await self._db.fetch_all(
            "SELECT room_id, stream_id FROM room_peeks WHERE user_id = ? AND device_id = ?",
            user_id,
            device_id,
        )
        return {r[0]: int(r[1]) for r in rows}

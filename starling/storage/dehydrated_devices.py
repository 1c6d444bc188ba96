"""Dehydrated devices (MSC3814): one row per user (table dehydrated_devices)."""

from __future__ import annotations

import time
from typing import Any

import orjson

from starling.storage.database import Database


class DehydratedDeviceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, user_id: str) -> tuple[str, dict[str, Any]] | None:
        """(device ID, device_data) of the user's dehydrated device, if any."""
        row = await self._db.fetch_one(
            "SELECT device_id, device_data FROM dehydrated_devices WHERE user_id = ?", user_id
        )
        return None if row is None else (row[0], orjson.loads(row[1]))

    async def set(self, user_id: str, device_id: str, device_data: dict[str, Any]) -> str | None:
        """Make this the user's dehydrated device; returns the one it replaces, if any."""
        async with self._db.transaction() as txn:
            old = await txn.fetch_val(
                "SELECT device_id FROM dehydrated_devices WHERE user_id = ?", user_id
            )
            await txn.execute(
                "INSERT INTO dehydrated_devices (user_id, device_id, device_data, created_ts)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET"
                " device_id = excluded.device_id, device_data = excluded.device_data,"
                " created_ts = excluded.created_ts",
                user_id,
                device_id,
                orjson.dumps(device_data).decode(),
                int(time.time() * 1000),
            )
        return None if old is None or old == device_id else str(old)

    async def delete(self, user_id: str, device_id: str | None = None) -> str | None:
        """Forget the user's dehydrated device (only if it is `device_id`, when given);
        returns the device ID forgotten."""
        async with self._db.transaction() as txn:
            current = await txn.fetch_val(
                "SELECT device_id FROM dehydrated_devices WHERE user_id = ?", user_id
            )
            if current is None or (device_id is not None and current != device_id):
                return None
            await txn.execute("DELETE FROM dehydrated_devices WHERE user_id = ?", user_id)
        return str(current)

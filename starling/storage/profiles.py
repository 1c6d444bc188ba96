"""Local users' global profiles: display name and avatar URL."""

from __future__ import annotations

from typing import Any

from starling.storage.database import Database


class ProfileStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_profile(self, user_id: str) -> dict[str, Any] | None:
        """{"displayname": ..., "avatar_url": ...} without unset fields; None if no row."""
        row = await self._db.fetch_one(
            "SELECT displayname, avatar_url FROM profiles WHERE user_id = ?", user_id
        )
        if row is None:
            return None
        out: dict[str, Any] = {}
        if row[0] is not None:
            out["displayname"] = row[0]
        if row[1] is not None:
            out["avatar_url"] = row[1]
        return out

    async def create_profile(self, user_id: str, displayname: str | None) -> None:
        await self._db.execute(
            "INSERT INTO profiles (user_id, displayname) VALUES (?, ?)"
            " ON CONFLICT (user_id) DO NOTHING",
            user_id,
            displayname,
        )

    async def set_field(self, user_id: str, field: str, value: str | None) -> None:
        if field not in ("displayname", "avatar_url"):
            raise ValueError(f"unknown profile field {field!r}")
        await self._db.execute(
            f"INSERT INTO profiles (user_id, {field}) VALUES (?, ?)"
            f" ON CONFLICT (user_id) DO UPDATE SET {field} = excluded.{field}",
            user_id,
            value,
        )

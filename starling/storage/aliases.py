"""Room aliases of this server: #alias:server -> room ID."""

from __future__ import annotations

from starling.storage.database import Database, UniqueViolation


class AliasExists(Exception):
    """The alias is already taken."""


class AliasStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_alias(self, alias: str, room_id: str, creator: str) -> None:
        try:
            await self._db.execute(
                "INSERT INTO room_aliases (room_alias, room_id, creator) VALUES (?, ?, ?)",
                alias,
                room_id,
                creator,
            )
        except UniqueViolation:
            raise AliasExists(alias) from None

    async def get_alias(self, alias: str) -> str | None:
        value = await self._db.fetch_val(
            "SELECT room_id FROM room_aliases WHERE room_alias = ?", alias
        )
        return None if value is None else str(value)

    async def get_alias_creator(self, alias: str) -> str | None:
        value = await self._db.fetch_val(
            "SELECT creator FROM room_aliases WHERE room_alias = ?", alias
        )
        return None if value is None else str(value)

    async def delete_alias(self, alias: str) -> bool:
        return (await self._db.execute("DELETE FROM room_aliases WHERE room_alias = ?", alias)) > 0

    async def aliases_for_room(self, room_id: str) -> list[str]:
        rows = await self._db.fetch_all(
            "SELECT room_alias FROM room_aliases WHERE room_id = ? ORDER BY room_alias", room_id
        )
        return [r[0] for r in rows]

"""A user's third-party IDs: those of the account (user_threepids, which the admin API
and external logins also write) and which identity servers they were bound to through
this server.

One row per (user, medium, address, identity server), written after a successful
/account/3pid/bind and removed after a successful unbind (spec: client-server-api
"Adding Account Administrative Contact Information": the homeserver tracks binds so they
can be undone).
"""

from __future__ import annotations

from dataclasses import dataclass

from starling.storage.database import Database


@dataclass(frozen=True, slots=True)
class ThreepidBinding:
    medium: str
    address: str
    id_server: str


class ThreepidBindingStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, user_id: str, medium: str, address: str, id_server: str) -> None:
        await self._db.execute(
            "INSERT INTO user_threepid_id_server (user_id, medium, address, id_server)"
            " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            user_id,
            medium,
            address,
            id_server,
        )

    async def remove(self, user_id: str, medium: str, address: str, id_server: str) -> None:
        await self._db.execute(
            "DELETE FROM user_threepid_id_server"
            " WHERE user_id = ? AND medium = ? AND address = ? AND id_server = ?",
            user_id,
            medium,
            address,
            id_server,
        )

    async def for_user(self, user_id: str) -> list[ThreepidBinding]:
        rows = await self._db.fetch_all(
            "SELECT medium, address, id_server FROM user_threepid_id_server"
            " WHERE user_id = ? ORDER BY medium, address, id_server",
            user_id,
        )
        return [ThreepidBinding(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    # -- the account's own third-party IDs (user_threepids)

    async def account_threepids(self, user_id: str) -> list[dict[str, object]]:
        """GET /account/3pid: medium, address, validated_at, added_at."""
        rows = await self._db.fetch_all(
            "SELECT medium, address, validated_at, added_at FROM user_threepids"
            " WHERE user_id = ? ORDER BY medium, address",
            user_id,
        )
        return [
            {"medium": r[0], "address": r[1], "validated_at": r[2], "added_at": r[3]} for r in rows
        ]

    async def remove_from_account(self, user_id: str, medium: str, address: str) -> bool:
        """Whether the account had this third-party ID (now removed)."""
        removed = await self._db.execute(
            "DELETE FROM user_threepids WHERE user_id = ? AND medium = ? AND address = ?",
            user_id,
            medium,
            address,
        )
        return bool(removed)

"""Account data, global and per room, on the "account_data" stream.

Content is stored as JSON text; room_id '' holds global data. Each write takes the next
stream position, so /sync reads "what changed since" with one indexed range query.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from starling.storage.database import Database, Transaction
from starling.storage.streams import StreamIdGenerator

GLOBAL = ""


@dataclass(frozen=True, slots=True)
class AccountDataChange:
    room_id: str  # '' for global
    data_type: str
    content: dict[str, Any]


Modifier = Callable[[dict[str, Any] | None], dict[str, Any] | None]


class AccountDataStore:
    def __init__(self, db: Database, stream: StreamIdGenerator) -> None:
        self._db = db
        self.stream = stream

    async def get(self, user_id: str, room_id: str, data_type: str) -> dict[str, Any] | None:
        raw = await self._db.fetch_val(
            "SELECT content FROM account_data WHERE user_id = ? AND room_id = ? AND data_type = ?",
            user_id,
            room_id,
            data_type,
        )
        if raw is None:
            return None
        value: dict[str, Any] = orjson.loads(raw)
        return value

    async def put(self, user_id: str, room_id: str, data_type: str, content: dict[str, Any]) -> int:
        """Store the content; returns the new stream position."""
        async with self._db.transaction() as txn:
            return await self._put(txn, user_id, room_id, data_type, content)

    async def _put(
        self,
        txn: Transaction,
        user_id: str,
        room_id: str,
        data_type: str,
        content: dict[str, Any],
    ) -> int:
        stream_id = await self.stream.next_id(txn)
        await txn.execute(
            "INSERT INTO account_data (user_id, room_id, data_type, content, stream_id)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, room_id, data_type) DO UPDATE"
            " SET content = excluded.content, stream_id = excluded.stream_id",
            user_id,
            room_id,
            data_type,
            orjson.dumps(content).decode(),
            stream_id,
        )
        return stream_id

    async def modify(
        self, user_id: str, room_id: str, data_type: str, modifier: Modifier
    ) -> tuple[int | None, dict[str, Any] | None]:
        """Read-modify-write one entry atomically. `modifier` gets the current content
        (None if unset) and returns the new content, or None to leave it unchanged.
        Returns (stream position or None, the content now stored)."""
        async with self._db.transaction() as txn:
            raw = await txn.fetch_val(
                "SELECT content FROM account_data WHERE user_id = ? AND room_id = ?"
                f" AND data_type = ?{txn.sql.for_update}",
                user_id,
                room_id,
                data_type,
            )
            current = None if raw is None else orjson.loads(raw)
            new = modifier(current)
            if new is None:
                return None, current
            position = await self._put(txn, user_id, room_id, data_type, new)
            return position, new

    async def get_changes(
        self, user_id: str, from_exclusive: int | None, to_inclusive: int
    ) -> list[AccountDataChange]:
        """The user's entries changed in (from, to]; every entry when from is None."""
        lower = -1 if from_exclusive is None else from_exclusive
        rows = await self._db.fetch_all(
            "SELECT room_id, data_type, content FROM account_data"
            " WHERE user_id = ? AND stream_id > ? AND stream_id <= ? ORDER BY stream_id",
            user_id,
            lower,
            to_inclusive,
        )
        return [AccountDataChange(r[0], r[1], orjson.loads(r[2])) for r in rows]

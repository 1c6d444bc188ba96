"""Inbound federation transactions already answered, for deduplication per origin and
transaction ID (Server-Server API > Transactions)."""

from __future__ import annotations

from typing import Any

import orjson

from starling.storage.database import Database


class InboundTransactionStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_response(self, origin: str, txn_id: str) -> dict[str, Any] | None:
        raw = await self._db.fetch_val(
            "SELECT response FROM federation_inbound_transactions WHERE origin = ? AND txn_id = ?",
            origin,
            txn_id,
        )
        if raw is None:
            return None
        value = orjson.loads(raw)
        return value if isinstance(value, dict) else None

    async def store_response(
        self, origin: str, txn_id: str, response: dict[str, Any], now_ms: int
    ) -> None:
        await self._db.execute(
            "INSERT INTO federation_inbound_transactions (origin, txn_id, response, received_ts)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (origin, txn_id) DO NOTHING",
            origin,
            txn_id,
            orjson.dumps(response).decode(),
            now_ms,
        )

    async def delete_older_than(self, ts: int) -> int:
        """Forget answers received before `ts` (a sender retries within minutes)."""
        return await self._db.execute(
            "DELETE FROM federation_inbound_transactions WHERE received_ts < ?", ts
        )

"""Outgoing webhook queues (migration 0031): a position in the events stream per hook and
the deliveries owed; a delivery that used its last attempt stays as a dead letter.

Queuing deliveries and moving the position past their events is one transaction, so an
event is queued once, never lost and never twice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starling.storage.database import Database


@dataclass(frozen=True, slots=True)
class Delivery:
    delivery_id: int
    body: str
    attempts: int


class WebhookStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def position(self, hook_id: str, start: int) -> int:
        """The hook's position; a new hook starts at `start` (no history is sent)."""
        await self._db.execute(
            "INSERT INTO webhook_positions (hook_id, stream_position) VALUES (?, ?)"
            " ON CONFLICT (hook_id) DO NOTHING",
            hook_id,
            start,
        )
        return int(
            await self._db.fetch_val(
                "SELECT stream_position FROM webhook_positions WHERE hook_id = ?", hook_id
            )
        )

    async def enqueue(self, hook_id: str, bodies: Sequence[tuple[int, str]], position: int) -> None:
        async with self._db.transaction() as txn:
            for delivery_id, body in bodies:
                await txn.execute(
                    "INSERT INTO webhook_deliveries (hook_id, delivery_id, body) VALUES (?, ?, ?)"
                    " ON CONFLICT (hook_id, delivery_id) DO NOTHING",
                    hook_id,
                    delivery_id,
                    body,
                )
            await txn.execute(
                "UPDATE webhook_positions SET stream_position = ? WHERE hook_id = ?",
                position,
                hook_id,
            )

    async def next_delivery(self, hook_id: str) -> Delivery | None:
        row = await self._db.fetch_one(
            "SELECT delivery_id, body, attempts FROM webhook_deliveries"
            " WHERE hook_id = ? AND dead = FALSE ORDER BY delivery_id LIMIT 1",
            hook_id,
        )
        return None if row is None else Delivery(int(row[0]), row[1], int(row[2]))

    async def delivered(self, hook_id: str, delivery_id: int) -> None:
        await self._db.execute(
            "DELETE FROM webhook_deliveries WHERE hook_id = ? AND delivery_id = ?",
            hook_id,
            delivery_id,
        )

    async def failed(self, hook_id: str, delivery_id: int, error: str, dead: bool) -> None:
        await self._db.execute(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_error = ?, dead = ?"
            " WHERE hook_id = ? AND delivery_id = ?",
            error[:500],
            dead,
            hook_id,
            delivery_id,
        )

    async def dead_letters(self, hook_id: str) -> list[tuple[int, int, str | None]]:
        """(delivery ID, attempts, last error) of the deliveries given up on."""
        rows = await self._db.fetch_all(
            "SELECT delivery_id, attempts, last_error FROM webhook_deliveries"
            " WHERE hook_id = ? AND dead = TRUE ORDER BY delivery_id",
            hook_id,
        )
        return [(int(r[0]), int(r[1]), r[2]) for r in rows]

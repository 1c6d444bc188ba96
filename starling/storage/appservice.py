"""Application-service delivery queues (migration 0024): each service's position in the
events stream, its last transaction ID, and the transactions built but not yet accepted.

Building a transaction and moving the position past the events it holds is one database
transaction, so an event is queued once: never lost (the position only moves with the
transaction stored) and never queued twice (a restart reads on from the new position).
"""

from __future__ import annotations

from dataclasses import dataclass

from starling.storage.database import Database

_SENDABLE = "e.outlier = FALSE AND e.soft_failed = FALSE AND e.rejected_reason IS NULL"


@dataclass(frozen=True, slots=True)
class QueuedTransaction:
    txn_id: int
    body: str


class AppServiceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_position(self, as_id: str) -> tuple[int, int] | None:
        """(stream position, last transaction ID), or None for a service never seen."""
        row = await self._db.fetch_one(
            "SELECT stream_position, last_txn_id FROM appservice_positions WHERE as_id = ?",
            as_id,
        )
        return None if row is None else (int(row[0]), int(row[1]))

    async def start_at(self, as_id: str, position: int) -> None:
        """A new service starts at `position` (it is not sent the history before it)."""
        await self._db.execute(
            "INSERT INTO appservice_positions (as_id, stream_position, last_txn_id)"
            " VALUES (?, ?, 0) ON CONFLICT (as_id) DO NOTHING",
            as_id,
            position,
        )

    async def set_position(self, as_id: str, position: int) -> None:
        await self._db.execute(
            "UPDATE appservice_positions SET stream_position = ? WHERE as_id = ?",
            position,
            as_id,
        )

    async def enqueue(self, as_id: str, body: str, position: int) -> int:
        """Store a new transaction and move the position to `position`; its ID."""
        async with self._db.transaction() as txn:
            last = await txn.fetch_val(
                "SELECT last_txn_id FROM appservice_positions WHERE as_id = ?", as_id
            )
            txn_id = int(last or 0) + 1
            await txn.execute(
                "INSERT INTO appservice_txns (as_id, txn_id, body) VALUES (?, ?, ?)",
                as_id,
                txn_id,
                body,
            )
            await txn.execute(
                "UPDATE appservice_positions SET stream_position = ?, last_txn_id = ?"
                " WHERE as_id = ?",
                position,
                txn_id,
                as_id,
            )
        return txn_id

    async def oldest_pending(self, as_id: str) -> QueuedTransaction | None:
        row = await self._db.fetch_one(
            "SELECT txn_id, body FROM appservice_txns WHERE as_id = ? ORDER BY txn_id LIMIT 1",
            as_id,
        )
        return None if row is None else QueuedTransaction(int(row[0]), row[1])

    async def count_pending(self, as_id: str) -> int:
        return int(
            await self._db.fetch_val("SELECT COUNT(*) FROM appservice_txns WHERE as_id = ?", as_id)
        )

    async def delivered(self, as_id: str, txn_id: int) -> None:
        await self._db.execute(
            "DELETE FROM appservice_txns WHERE as_id = ? AND txn_id = ?", as_id, txn_id
        )

    async def stream_event_ids(self, after: int, upto: int, limit: int) -> list[tuple[str, int]]:
        """(event ID, position) of timeline events in (after, upto], in stream order."""
        rows = await self._db.fetch_all(
            "SELECT e.event_id, e.stream_ordering FROM events e"
            " WHERE e.stream_ordering > ? AND e.stream_ordering <= ?"
            f" AND {_SENDABLE} ORDER BY e.stream_ordering LIMIT ?",
            after,
            upto,
            limit,
        )
        return [(r[0], int(r[1])) for r in rows]

"""To-device messages across servers: the outbox of `m.direct_to_device` EDUs per
destination (kept until delivered, read back in stream order) and the `message_id`s
received from each origin (so a resent EDU is delivered once)."""

from __future__ import annotations

from collections.abc import Sequence

from starling.storage.database import Database, Transaction


class FederationToDeviceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    @staticmethod
    async def add_outbound(
        txn: Transaction, stream_id: int, edus: Sequence[tuple[str, str]]
    ) -> None:
        """(destination, EDU content JSON) rows at `stream_id`."""
        await txn.executemany(
            "INSERT INTO federation_to_device_outbox (destination, stream_id, edu_json)"
            " VALUES (?, ?, ?)",
            [(dest, stream_id, body) for dest, body in edus],
        )

    async def destinations_pending(self) -> list[str]:
        rows = await self._db.fetch_all(
            "SELECT DISTINCT destination FROM federation_to_device_outbox"
        )
        return sorted(r[0] for r in rows)

    async def pending(self, destination: str, limit: int) -> list[tuple[int, str]]:
        """The oldest `limit` (stream_id, EDU content JSON) owed to `destination`."""
        rows = await self._db.fetch_all(
            "SELECT stream_id, edu_json FROM federation_to_device_outbox"
            " WHERE destination = ? ORDER BY stream_id LIMIT ?",
            destination,
            limit,
        )
        return [(int(r[0]), r[1]) for r in rows]

    async def delete_delivered(self, destination: str, upto: int) -> None:
        await self._db.execute(
            "DELETE FROM federation_to_device_outbox WHERE destination = ? AND stream_id <= ?",
            destination,
            upto,
        )

    @staticmethod
    async def claim_message_id(txn: Transaction, origin: str, message_id: str, now_ms: int) -> bool:
        """Record the message ID; False if `origin` already delivered it."""
        inserted = await txn.execute(
            "INSERT INTO federation_to_device_received (origin, message_id, received_ts)"
            " VALUES (?, ?, ?) ON CONFLICT (origin, message_id) DO NOTHING",
            origin,
            message_id,
            now_ms,
        )
        return bool(inserted)

    @staticmethod
    async def prune_received(txn: Transaction, older_than_ms: int) -> None:
        await txn.execute(
            "DELETE FROM federation_to_device_received WHERE received_ts < ?", older_than_ms
        )

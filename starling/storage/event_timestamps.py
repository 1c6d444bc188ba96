"""A room's timeline events by their `origin_server_ts` (for /timestamp_to_event)."""

from __future__ import annotations

from starling.storage.database import Database


class EventTimestampStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def closest_event(self, room_id: str, ts: int, forwards: bool) -> tuple[str, int] | None:
        """(event ID, origin_server_ts) of the accepted timeline event of the room closest
        to `ts`: the first at or after it (forwards), or the last at or before it. Outliers,
        rejected and soft-failed events are never answered."""
        op, order = (">=", "ASC") if forwards else ("<=", "DESC")
        row = await self._db.fetch_one(
            "SELECT event_id, origin_server_ts FROM events"
            f" WHERE room_id = ? AND origin_server_ts {op} ? AND outlier = FALSE"
            " AND rejected_reason IS NULL AND soft_failed = FALSE"
            f" ORDER BY origin_server_ts {order}, stream_ordering {order} LIMIT 1",
            room_id,
            ts,
        )
        return None if row is None else (str(row[0]), int(row[1]))

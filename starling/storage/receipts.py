"""Read receipts: the latest receipt per (room, type, user, thread), on the "receipts" stream.

A receipt only moves forward: storing one for an event earlier in the timeline than the
current receipt of the same (room, type, user, thread) changes nothing. The upsert's
WHERE clause makes that decision atomically on both engines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starling.storage.database import Database
from starling.storage.streams import StreamIdGenerator

# Receipt types whose positions mark what the user has read (for unread counts).
READ_TYPES = ("m.read", "m.read.private")


@dataclass(frozen=True, slots=True)
class Receipt:
    room_id: str
    receipt_type: str
    user_id: str
    thread_id: str  # '' when unthreaded
    event_id: str
    ts: int


class ReceiptStore:
    def __init__(self, db: Database, stream: StreamIdGenerator) -> None:
        self._db = db
        self.stream = stream

    async def upsert(self, receipt: Receipt, event_stream_ordering: int | None) -> int | None:
        """Store the receipt if it moves forward; returns its stream position, or None
        when an existing receipt is already at or after the event."""
        async with self._db.transaction() as txn:
            stream_id = await self.stream.next_id(txn)
            row = await txn.fetch_one(
                "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id,"
                " event_stream_ordering, ts, stream_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE SET"
                " event_id = excluded.event_id,"
                " event_stream_ordering = excluded.event_stream_ordering,"
                " ts = excluded.ts, stream_id = excluded.stream_id"
                " WHERE receipts.event_id <> excluded.event_id AND ("
                "   receipts.event_stream_ordering IS NULL"
                "   OR excluded.event_stream_ordering IS NULL"
                "   OR receipts.event_stream_ordering < excluded.event_stream_ordering)"
                " RETURNING stream_id",
                receipt.room_id,
                receipt.receipt_type,
                receipt.user_id,
                receipt.thread_id,
                receipt.event_id,
                event_stream_ordering,
                receipt.ts,
                stream_id,
            )
        return None if row is None else stream_id

    async def get_receipts_for_rooms(
        self,
        room_ids: Sequence[str],
        viewer: str,
        from_exclusive: int | None,
        to_inclusive: int,
    ) -> list[Receipt]:
        """Receipts in the rooms changed in (from, to] (all current ones when from is
        None), without other users' private receipts."""
        if not room_ids:
            return []
        lower = -1 if from_exclusive is None else from_exclusive
        rows = await self._db.fetch_all(
            "SELECT room_id, receipt_type, user_id, thread_id, event_id, ts FROM receipts"
            " WHERE stream_id > ? AND stream_id <= ?"
            f" AND {self._db.sql.in_array('room_id')}"
            " AND (receipt_type <> 'm.read.private' OR user_id = ?)",
            lower,
            to_inclusive,
            self._db.sql.array(room_ids),
            viewer,
        )
        return [Receipt(r[0], r[1], r[2], r[3], r[4], int(r[5])) for r in rows]

    async def get_read_positions(
        self, user_id: str, room_ids: Sequence[str]
    ) -> dict[str, dict[str, int]]:
        """{room_id: {thread_id: events-stream position read up to}} from the user's
        m.read and m.read.private receipts (thread '' is the unthreaded receipt)."""
        if not room_ids:
            return {}
        rows = await self._db.fetch_all(
            "SELECT room_id, thread_id, MAX(event_stream_ordering) FROM receipts"
            " WHERE user_id = ? AND receipt_type IN ('m.read', 'm.read.private')"
            f" AND event_stream_ordering IS NOT NULL AND {self._db.sql.in_array('room_id')}"
            " GROUP BY room_id, thread_id",
            user_id,
            self._db.sql.array(room_ids),
        )
        out: dict[str, dict[str, int]] = {}
        for room_id, thread_id, pos in rows:
            out.setdefault(room_id, {})[thread_id] = int(pos)
        return out

    async def get_receipt(
        self, room_id: str, receipt_type: str, user_id: str, thread_id: str = ""
    ) -> str | None:
        value = await self._db.fetch_val(
            "SELECT event_id FROM receipts WHERE room_id = ? AND receipt_type = ?"
            " AND user_id = ? AND thread_id = ?",
            room_id,
            receipt_type,
            user_id,
            thread_id,
        )
        return None if value is None else str(value)

    async def events_after_bounds(
        self,
        user_id: str,
        lower_bounds: dict[str, int],
        per_room_cap: int,
        upper: int | None = None,
    ) -> list[tuple[str, str, int]]:
        """(room_id, event_id, stream_ordering) of the newest events (at most `per_room_cap`
        per room) after each room's lower bound (and at most `upper`, when given) that others
        sent, of any type, outliers left out (an old event a history purge took out of the
        timeline): the events push rules are evaluated on for unread counts. One query
        for all rooms."""
        if not lower_bounds:
            return []
        bounds_sql, bounds_args = self._db.sql.text_int_pairs(
            "b", "room_id", "lower_bound", list(lower_bounds.items())
        )
        upper_sql = "" if upper is None else " AND e.stream_ordering <= ?"
        upper_args = () if upper is None else (upper,)
        rows = await self._db.fetch_all(
            "SELECT room_id, event_id, stream_ordering FROM ("
            "  SELECT e.room_id, e.event_id, e.stream_ordering, ROW_NUMBER() OVER ("
            "    PARTITION BY e.room_id ORDER BY e.stream_ordering DESC) AS rn"
            f"  FROM {bounds_sql}"
            "  JOIN events e ON e.room_id = b.room_id AND e.stream_ordering > b.lower_bound"
            "  WHERE e.sender <> ? AND NOT e.soft_failed AND e.rejected_reason IS NULL"
            f"    AND NOT e.outlier AND e.redacted_by IS NULL{upper_sql}"
            ") x WHERE rn <= ?",
            *bounds_args,
            user_id,
            *upper_args,
            per_room_cap,
        )
        return [(r[0], r[1], int(r[2])) for r in rows]

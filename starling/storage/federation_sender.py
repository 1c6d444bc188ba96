"""The outbound federation queues (migration 0011): the sender's position in the events
stream, per-destination delivery positions and retry state, the rooms each destination is
owed events in, and the events this server relays on another server's behalf.

Every method is one statement or one transaction over batches: the sender calls these once
per batch of events or per transaction sent, never per event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from starling.storage.database import Database

EVENTS_STREAM = "events"

# What the sender sends: timeline events (no outliers, no backfilled negative positions),
# neither rejected nor soft-failed.
_SENDABLE = "e.outlier = FALSE AND e.soft_failed = FALSE AND e.rejected_reason IS NULL"


@dataclass(slots=True)
class DestinationRow:
    destination: str
    last_successful: int
    retry_interval_ms: int
    retry_until_ts: int
    failing_since_ts: int | None
    # The newest stream position owed to it in any room (its queue is non-empty when this
    # is past last_successful).
    newest_owed: int


class FederationSenderStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- the sender's position in the events stream ---------------------------------------

    async def get_position(self) -> int | None:
        val = await self._db.fetch_val(
            "SELECT position FROM federation_stream_position WHERE stream_name = ?",
            EVENTS_STREAM,
        )
        return None if val is None else int(val)

    async def set_position(self, position: int) -> None:
        await self._db.execute(
            "INSERT INTO federation_stream_position (stream_name, position) VALUES (?, ?)"
            " ON CONFLICT (stream_name) DO UPDATE SET position = excluded.position",
            EVENTS_STREAM,
            position,
        )

    async def stream_events(self, after: int, upto: int, limit: int) -> list[tuple[str, int]]:
        """(event ID, position) of sendable events with positions in (after, upto], in
        stream order."""
        rows = await self._db.fetch_all(
            "SELECT e.event_id, e.stream_ordering FROM events e"
            " WHERE e.stream_ordering > ? AND e.stream_ordering <= ?"
            f" AND {_SENDABLE} ORDER BY e.stream_ordering LIMIT ?",
            after,
            upto,
            limit,
        )
        return [(r[0], int(r[1])) for r in rows]

    async def record_fan_out(
        self,
        owed: Mapping[str, Mapping[str, int]],
        first_owed: Mapping[str, int],
        position: int,
    ) -> None:
        """In one transaction: destination -> room -> newest position owed, new destinations
        starting just before the first event owed to them, and the sender's new position."""
        async with self._db.transaction() as txn:
            if first_owed:
                await txn.executemany(
                    "INSERT INTO federation_destinations"
                    " (destination, last_successful_stream_ordering) VALUES (?, ?)"
                    " ON CONFLICT (destination) DO NOTHING",
                    [(dest, pos - 1) for dest, pos in first_owed.items()],
                )
            rows = [
                (dest, room, pos) for dest, rooms in owed.items() for room, pos in rooms.items()
            ]
            if rows:
                await txn.executemany(
                    "INSERT INTO federation_destination_rooms"
                    " (destination, room_id, stream_ordering) VALUES (?, ?, ?)"
                    " ON CONFLICT (destination, room_id) DO UPDATE"
                    " SET stream_ordering = excluded.stream_ordering"
                    " WHERE federation_destination_rooms.stream_ordering"
                    " < excluded.stream_ordering",
                    rows,
                )
            await txn.queue(  # with the COMMIT: no round trip of its own
                "INSERT INTO federation_stream_position (stream_name, position) VALUES (?, ?)"
                " ON CONFLICT (stream_name) DO UPDATE SET position = excluded.position",
                EVENTS_STREAM,
                position,
            )

    # --- destinations ---------------------------------------------------------------------

    _DESTINATION_COLUMNS = (
        "d.destination, d.last_successful_stream_ordering, d.retry_interval_ms,"
        " d.retry_until_ts, d.failing_since_ts,"
        " (SELECT MAX(r.stream_ordering) FROM federation_destination_rooms r"
        "  WHERE r.destination = d.destination)"
    )

    @staticmethod
    def _row(row: Sequence[object]) -> DestinationRow:
        last = int(row[1])  # type: ignore[call-overload]
        return DestinationRow(
            destination=str(row[0]),
            last_successful=last,
            retry_interval_ms=int(row[2]),  # type: ignore[call-overload]
            retry_until_ts=int(row[3]),  # type: ignore[call-overload]
            failing_since_ts=None if row[4] is None else int(row[4]),  # type: ignore[call-overload]
            newest_owed=last if row[5] is None else int(row[5]),  # type: ignore[call-overload]
        )

    async def get_destinations(self, destinations: Iterable[str]) -> dict[str, DestinationRow]:
        wanted = list(destinations)
        if not wanted:
            return {}
        rows = await self._db.fetch_all(
            f"SELECT {self._DESTINATION_COLUMNS} FROM federation_destinations d"
            f" WHERE {self._db.sql.in_array('d.destination')}",
            self._db.sql.array(wanted),
        )
        return {r[0]: self._row(tuple(r)) for r in rows}

    async def list_destinations(
        self, offset: int, limit: int, name_contains: str | None = None
    ) -> tuple[list[DestinationRow], int]:
        """A page of destinations by name, and how many there are (admin API)."""
        where, args = "", []
        if name_contains:
            where = " WHERE d.destination LIKE ?"
            args.append("%" + name_contains.replace("%", "").replace("_", "") + "%")
        total = await self._db.fetch_val(
            f"SELECT COUNT(*) FROM federation_destinations d{where}", *args
        )
        rows = await self._db.fetch_all(
            f"SELECT {self._DESTINATION_COLUMNS} FROM federation_destinations d{where}"
            " ORDER BY d.destination LIMIT ? OFFSET ?",
            *args,
            limit,
            offset,
        )
        return [self._row(tuple(r)) for r in rows], int(total)

    async def destinations_needing_attention(self) -> list[DestinationRow]:
        """Destinations that are owed events or are backing off (loaded at start)."""
        rows = await self._db.fetch_all(
            f"SELECT {self._DESTINATION_COLUMNS} FROM federation_destinations d"
            " WHERE d.retry_interval_ms > 0 OR EXISTS (SELECT 1 FROM"
            " federation_destination_rooms r WHERE r.destination = d.destination"
            " AND r.stream_ordering > d.last_successful_stream_ordering)"
        )
        return [self._row(tuple(r)) for r in rows]

    async def set_last_successful(self, destination: str, position: int) -> None:
        """Delivered up to `position`; also ends any backoff."""
        await self._db.execute(
            "UPDATE federation_destinations SET last_successful_stream_ordering = ?,"
            " retry_interval_ms = 0, retry_until_ts = 0, failing_since_ts = NULL"
            " WHERE destination = ? AND last_successful_stream_ordering < ?",
            position,
            destination,
            position,
        )

    async def set_retry(
        self, destination: str, interval_ms: int, until_ts: int, failing_since_ts: int | None
    ) -> None:
        await self._db.execute(
            "UPDATE federation_destinations SET retry_interval_ms = ?, retry_until_ts = ?,"
            " failing_since_ts = ? WHERE destination = ?",
            interval_ms,
            until_ts,
            failing_since_ts,
            destination,
        )

    async def ensure_destination(self, destination: str, last_successful: int) -> None:
        await self._db.execute(
            "INSERT INTO federation_destinations (destination, last_successful_stream_ordering)"
            " VALUES (?, ?) ON CONFLICT (destination) DO NOTHING",
            destination,
            last_successful,
        )

    # --- catch-up -------------------------------------------------------------------------

    async def rooms_owed(self, destination: str, after: int) -> dict[str, int]:
        """Rooms with events for the destination after `after`: room -> newest position."""
        rows = await self._db.fetch_all(
            "SELECT room_id, stream_ordering FROM federation_destination_rooms"
            " WHERE destination = ? AND stream_ordering > ?",
            destination,
            after,
        )
        return {r[0]: int(r[1]) for r in rows}

    async def room_events_after(
        self, room_ids: Sequence[str], after: int, upto: int, limit: int
    ) -> list[tuple[str, int]]:
        """(event ID, position) of sendable events of these rooms in (after, upto], in
        stream order."""
        if not room_ids:
            return []
        rows = await self._db.fetch_all(
            "SELECT e.event_id, e.stream_ordering FROM events e"
            f" WHERE {self._db.sql.in_array('e.room_id')}"
            " AND e.stream_ordering > ? AND e.stream_ordering <= ?"
            f" AND {_SENDABLE} ORDER BY e.stream_ordering LIMIT ?",
            self._db.sql.array(list(room_ids)),
            after,
            upto,
            limit,
        )
        return [(r[0], int(r[1])) for r in rows]

    async def event_ids_at_positions(self, positions: Sequence[int]) -> list[str]:
        if not positions:
            return []
        rows = await self._db.fetch_all(
            "SELECT e.event_id FROM events e"
            f" WHERE {self._db.sql.in_array('e.stream_ordering')} AND {_SENDABLE}",
            self._db.sql.array(list(positions)),
        )
        return [r[0] for r in rows]

    # --- events relayed for another server ------------------------------------------------

    async def record_relayed(self, event_id: str, origin: str) -> None:
        await self._db.execute(
            "INSERT INTO federation_relayed_events (event_id, origin) VALUES (?, ?)"
            " ON CONFLICT (event_id) DO NOTHING",
            event_id,
            origin,
        )

    async def relayed_origins(self, event_ids: Sequence[str]) -> dict[str, str]:
        if not event_ids:
            return {}
        rows = await self._db.fetch_all(
            "SELECT event_id, origin FROM federation_relayed_events"
            f" WHERE {self._db.sql.in_array('event_id')}",
            self._db.sql.array(list(event_ids)),
        )
        return {r[0]: r[1] for r in rows}

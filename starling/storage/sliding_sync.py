"""The reads simplified sliding sync (MSC4186) needs beyond the /sync stores.

- each room's latest served event position (optionally of some event types only), which
  orders the room list by recency and gives `bump_stamp`;
- each room's current state as it was at its own position (a room's state when the
  connection last had it), from the current-state-delta stream in one read;
- a few state types of the current state of many rooms (m.room.create, m.room.encryption,
  m.space.child), which the list filters read, without loading every member event.

Both are one statement per 100 rooms whatever the number of rooms: each room is an index
lookup, never a scan of its history.
"""

from __future__ import annotations

from collections.abc import Sequence

from starling.protocol.event import StateKey
from starling.storage.database import Database

_SERVED = "NOT e.outlier AND NOT e.soft_failed AND e.rejected_reason IS NULL"
CHUNK = 100


class SlidingSyncStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def last_positions(
        self, room_ids: Sequence[str], types: Sequence[str] | None = None
    ) -> dict[str, int]:
        """For each room, the stream position of its newest served timeline event (of one
        of `types` when given). Rooms without one are absent."""
        out: dict[str, int] = {}
        items = sorted(set(room_ids))
        type_clause = ""
        if types:
            type_clause = f" AND e.type IN ({', '.join('?' for _ in types)})"
        for start in range(0, len(items), CHUNK):
            chunk = items[start : start + CHUNK]
            parts = [
                "SELECT CAST(? AS TEXT), (SELECT e.stream_ordering FROM events e"
                f" WHERE e.room_id = ? AND e.stream_ordering > 0 AND {_SERVED}{type_clause}"
                " ORDER BY e.stream_ordering DESC LIMIT 1)"
                for _ in chunk
            ]
            args: list[object] = []
            for room_id in chunk:
                args.extend([room_id, room_id, *(types or ())])
            rows = await self._db.fetch_all(" UNION ALL ".join(parts), *args)
            for room_id, position in rows:
                if position is not None:
                    out[str(room_id)] = int(position)
        return out

    async def current_state_of_types(
        self, room_ids: Sequence[str], types: Sequence[str]
    ) -> dict[str, dict[StateKey, str]]:
        """Each room's current state entries of the given types: room -> key -> event ID.
        Rooms with none are absent."""
        out: dict[str, dict[StateKey, str]] = {}
        items = sorted(set(room_ids))
        if not items or not types:
            return out
        placeholders = ", ".join("?" for _ in types)
        for start in range(0, len(items), 500):
            chunk = items[start : start + 500]
            rows = await self._db.fetch_all(
                "SELECT cs.room_id, k.type, k.state_key, ev.event_id FROM state_keys k"
                " JOIN current_state cs ON cs.key_nid = k.key_nid"
                " JOIN events ev ON ev.event_nid = cs.event_nid"
                f" WHERE k.type IN ({placeholders}) AND {self._db.sql.in_array('cs.room_id')}",
                *types,
                self._db.sql.array(chunk),
            )
            for room_id, etype, state_key, event_id in rows:
                out.setdefault(str(room_id), {})[(str(etype), str(state_key))] = str(event_id)
        return out

    async def state_deltas_after(
        self, room_ids: Sequence[str], position: int
    ) -> list[tuple[str, int, str, str, str | None]]:
        """The rooms' current-state changes after `position`, newest first:
        (room_id, stream_id, type, state_key, the event ID it replaced or None)."""
        items = sorted(set(room_ids))
        if not items:
            return []
        rows = await self._db.fetch_all(
            "SELECT room_id, stream_id, type, state_key, prev_event_id"
            f" FROM current_state_delta_stream WHERE {self._db.sql.in_array('room_id')}"
            " AND stream_id > ? ORDER BY stream_id DESC",
            self._db.sql.array(items),
            position,
        )
        return [(str(r[0]), int(r[1]), str(r[2]), str(r[3]), r[4]) for r in rows]

    # --- the threads extension (MSC4360) -------------------------------------------------

    async def thread_updates(
        self, room_ids: Sequence[str], lower: int | None, upper: int | None, limit: int
    ) -> list[tuple[str, str, str, int]]:
        """(room ID, thread root ID, latest reply ID, its position) of the threads of these
        rooms whose latest reply is in (lower, upper], latest first."""
        if not room_ids:
            return []
        rows = await self._db.fetch_all(
            "SELECT t.room_id, t.thread_id, t.latest_event_id, t.latest_stream_ordering"
            f" FROM threads t WHERE {self._db.sql.in_array('t.room_id')}"
            " AND t.latest_stream_ordering > ? AND t.latest_stream_ordering <= ?"
            " ORDER BY t.latest_stream_ordering DESC LIMIT ?",
            self._db.sql.array(room_ids),
            lower if lower is not None else -(2**62),
            upper if upper is not None else 2**62,
            limit,
        )
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    async def threads_with_several_replies(
        self, thread_ids: Sequence[str], lower: int | None, upper: int
    ) -> set[str]:
        """The threads among these with more than one reply in (lower, upper]."""
        if not thread_ids:
            return set()
        rows = await self._db.fetch_all(
            "SELECT r.relates_to_id FROM event_relations r"
            f" WHERE {self._db.sql.in_array('r.relates_to_id')} AND r.rel_type = 'm.thread'"
            " AND r.stream_ordering > ? AND r.stream_ordering <= ?"
            " GROUP BY r.relates_to_id HAVING COUNT(*) > 1",
            self._db.sql.array(thread_ids),
            lower if lower is not None else -(2**62),
            upper,
        )
        return {r[0] for r in rows}

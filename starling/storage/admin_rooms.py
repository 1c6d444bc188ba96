"""What the admin API reads and changes on rooms: a summary of every room (for the room
list and details), the rooms admins blocked, forward extremities with their depth, and the
purge that removes every trace of a room from the database.

Summaries are built from the current state, the memberships and the state size in four
queries over all rooms: fine for the servers Starling is for (thousands of rooms); a room
statistics table kept up to date by the persister is the way past that.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import orjson

from starling.storage.database import Database
from starling.storage.events import EventStore
from starling.storage.memberships import MembershipStore
from starling.storage.state import StateStore

# The state the room list shows (all with an empty state key).
SUMMARY_STATE_TYPES = (
    "m.room.create",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.join_rules",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.tombstone",
)

# Tables whose rows of a room go with it, in an order that respects their references.
# Account data, key backups and event reports are the users' and stay.
_ROOM_TABLES = (
    "forward_extremities",
    "backward_extremities",
    "current_state",
    "current_state_delta_stream",
    "room_forgotten",
    "room_aliases",
    "receipts",
    "device_list_memberships",
    "event_relations",
    "threads",
    "event_search",
    "federation_destination_rooms",
    "state_groups",
    "events",
    "rooms",
)


@dataclasses.dataclass(frozen=True, slots=True)
class RoomSummary:
    room_id: str
    version: str
    creator: str
    public: bool
    state: dict[str, dict[str, Any]]
    """Content of the SUMMARY_STATE_TYPES events in the current state, by type."""
    joined_members: int
    joined_local_members: int
    state_events: int


def _now_ms() -> int:
    return int(time.time() * 1000)


class AdminRoomStore:
    def __init__(
        self,
        db: Database,
        server_name: str,
        events: EventStore,
        state: StateStore,
        memberships: MembershipStore,
    ) -> None:
        self._db = db
        self._server_suffix = ":" + server_name
        self._events = events
        self._state = state
        self._memberships = memberships

    async def summaries(self, room_id: str | None = None) -> list[RoomSummary]:
        """Every room's summary (or one room's: an empty list if it is unknown)."""
        where, args = ("WHERE room_id = ?", [room_id]) if room_id is not None else ("", [])
        rooms = await self._db.fetch_all(
            f"SELECT room_id, room_version, creator, is_public FROM rooms {where}", *args
        )
        if not rooms:
            return []
        sql = self._db.sql
        state_where = "AND cs.room_id = ?" if room_id is not None else ""
        state_rows = await self._db.fetch_all(
            "SELECT cs.room_id, sk.type, e.json FROM current_state AS cs"
            " JOIN state_keys AS sk ON sk.key_nid = cs.key_nid"
            " JOIN events AS e ON e.event_nid = cs.event_nid"
            f" WHERE sk.state_key = '' AND {sql.in_array('sk.type')} {state_where}",
            sql.array(list(SUMMARY_STATE_TYPES)),
            *args,
        )
        state: dict[str, dict[str, dict[str, Any]]] = {}
        for rid, event_type, raw in state_rows:
            content = orjson.loads(raw).get("content")
            state.setdefault(rid, {})[event_type] = content if isinstance(content, dict) else {}
        counts: dict[str, int] = {
            r[0]: int(r[1])
            for r in await self._db.fetch_all(
                f"SELECT room_id, COUNT(*) FROM current_state {where} GROUP BY room_id", *args
            )
        }
        joined: dict[str, list[int]] = {}
        for rid, user_id in await self._db.fetch_all(
            f"SELECT room_id, user_id FROM room_memberships WHERE membership = 'join'"
            f" {'AND room_id = ?' if room_id is not None else ''}",
            *args,
        ):
            tally = joined.setdefault(rid, [0, 0])
            tally[0] += 1
            if user_id.endswith(self._server_suffix):
                tally[1] += 1
        return [
            RoomSummary(
                room_id=r[0],
                version=r[1],
                creator=r[2],
                public=bool(r[3]),
                state=state.get(r[0], {}),
                joined_members=joined.get(r[0], [0, 0])[0],
                joined_local_members=joined.get(r[0], [0, 0])[1],
                state_events=int(counts.get(r[0], 0)),
            )
            for r in rooms
        ]

    async def forward_extremities(self, room_id: str) -> list[dict[str, Any]]:
        rows = await self._db.fetch_all(
            "SELECT f.event_id, e.depth, e.state_after, e.origin_server_ts"
            " FROM forward_extremities AS f LEFT JOIN events AS e ON e.event_id = f.event_id"
            " WHERE f.room_id = ? ORDER BY f.event_id",
            room_id,
        )
        return [
            {"event_id": r[0], "depth": r[1], "state_group": r[2], "received_ts": r[3]}
            for r in rows
        ]

    # -- blocking

    async def blocked_by(self, room_id: str) -> str | None:
        """The admin who blocked the room, or None if it is not blocked."""
        value = await self._db.fetch_val(
            "SELECT user_id FROM blocked_rooms WHERE room_id = ?", room_id
        )
        return None if value is None else str(value)

    async def is_blocked(self, room_id: str) -> bool:
        return await self.blocked_by(room_id) is not None

    async def block(self, room_id: str, user_id: str) -> None:
        await self._db.execute(
            "INSERT INTO blocked_rooms (room_id, user_id, blocked_ts) VALUES (?, ?, ?)"
            " ON CONFLICT (room_id) DO NOTHING",
            room_id,
            user_id,
            _now_ms(),
        )

    async def unblock(self, room_id: str) -> None:
        await self._db.execute("DELETE FROM blocked_rooms WHERE room_id = ?", room_id)

    # -- purge

    async def purge(self, room_id: str) -> int:
        """Remove every trace of the room (events, state, memberships, aliases, receipts,
        relations, search entries, federation bookkeeping); returns how many events went.
        The caller makes sure no local user is still in it."""
        async with self._db.transaction(heavy=True) as txn:
            event_count = int(
                await txn.fetch_val("SELECT COUNT(*) FROM events WHERE room_id = ?", room_id) or 0
            )
            room_events = "SELECT event_id FROM events WHERE room_id = ?"
            await txn.execute(
                "DELETE FROM event_edges WHERE event_nid IN"
                " (SELECT event_nid FROM events WHERE room_id = ?)",
                room_id,
            )
            await txn.execute(f"DELETE FROM event_auth WHERE event_id IN ({room_events})", room_id)
            await txn.execute(
                f"DELETE FROM federation_relayed_events WHERE event_id IN ({room_events})",
                room_id,
            )
            await txn.execute(
                "DELETE FROM state_group_entries WHERE state_group IN"
                " (SELECT state_group FROM state_groups WHERE room_id = ?)",
                room_id,
            )
            members = [
                r[0]
                for r in await txn.fetch_all(
                    "SELECT user_id FROM room_memberships WHERE room_id = ?", room_id
                )
            ]
            await self._memberships.remove(txn, room_id, members)
            for table in _ROOM_TABLES:
                await txn.execute(f"DELETE FROM {table} WHERE room_id = ?", room_id)
            txn.call_after_commit(lambda: self._forget_cached(room_id))
        return event_count

    def _forget_cached(self, room_id: str) -> None:
        self._events.forget_room(room_id)
        self._state.forget_room(room_id)

    async def largest_rooms(self, count: int) -> list[tuple[str, int]]:
        """(room ID, bytes of its events' JSON) of the rooms that take the most space."""
        rows = await self._db.fetch_all(
            "SELECT room_id, SUM(LENGTH(json)) AS size FROM events GROUP BY room_id"
            " ORDER BY size DESC, room_id ASC LIMIT ?",
            count,
        )
        return [(r[0], int(r[1] or 0)) for r in rows]

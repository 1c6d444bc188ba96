"""What purging a room's history and redacting a user's events read and change.

Purging history follows Synapse's purge (storage/databases/main/purge_events.py): every
event of the room older (by depth) than a cut-off leaves the room's timelines. Non-state
events of other servers' users are deleted: the PDU rows and everything indexed by them
(graph edges, auth edges, relations, threads they root or end, search entries, relay
bookkeeping and forward extremities). The others stay stored but become outliers, as
Synapse makes them: state events (the auth chains and every state group need them; they
also keep the room's current state whole) and, unless asked to delete them too, events
of this server's users (they may be the only copy). Outliers are in no /messages, /sync
timeline, unread count, search or relation, yet GET /rooms/{roomId}/event/{eventId}
still finds them and backfill can bring them back into the timeline. They keep their
state group, so history visibility still decides who may read them (a remote server's
/backfill included).

Where a timeline event at or after the cut-off names a purged event as a prev event,
the purged one becomes a backward extremity (as Synapse: backfill may fetch it again
from another server still in the room; one kept as an outlier is then promoted back
into the timeline).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import orjson

from starling.errors import MatrixError
from starling.storage.database import Database, Transaction
from starling.storage.events import EventStore

# Events deleted per transaction: bounds a transaction's size and how long the room's
# write lock is held at once.
PURGE_BATCH = 2000

# What a user's redaction sweeps: Synapse's three types plus stickers and reactions.
REDACTABLE_TYPES = (
    "m.room.member",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.reaction",
)


@dataclasses.dataclass(frozen=True, slots=True)
class RoomRetention:
    room_id: str
    policy: dict[str, Any] | None
    """The content of the room's m.room.retention state event, if it has one."""


class HistoryStore:
    def __init__(self, db: Database, server_name: str, events: EventStore) -> None:
        self._db = db
        self._local_pattern = "%:" + server_name
        self._events = events

    # -- where to cut

    async def event_depth(self, event_id: str) -> tuple[str, int] | None:
        """(room ID, depth) of a stored event."""
        row = await self._db.fetch_one(
            "SELECT room_id, depth FROM events WHERE event_id = ?", event_id
        )
        return None if row is None else (str(row[0]), int(row[1]))

    async def cut_depth_at_ts(self, room_id: str, ts: int) -> int | None:
        """The purge cut-off for a time: the depth of the room's first timeline event sent
        at or after `ts` (everything sent before goes), or of its newest one if none was
        (as Synapse, which cuts at the event at or before the first stream position
        received at `ts`: the newest event always stays). None when the room has no
        event sent before `ts` (nothing to purge)."""
        served = "room_id = ? AND stream_ordering IS NOT NULL AND NOT outlier"
        if (
            await self._db.fetch_val(
                f"SELECT 1 FROM events WHERE {served} AND origin_server_ts < ? LIMIT 1", room_id, ts
            )
            is None
        ):
            return None
        value = await self._db.fetch_val(
            f"SELECT depth FROM events WHERE {served} AND origin_server_ts >= ?"
            " ORDER BY origin_server_ts, stream_ordering LIMIT 1",
            room_id,
            ts,
        )
        if value is None:
            value = await self._db.fetch_val(
                f"SELECT depth FROM events WHERE {served}"
                " ORDER BY depth DESC, stream_ordering DESC LIMIT 1",
                room_id,
            )
        return None if value is None else int(value)

    async def room_exists(self, room_id: str) -> bool:
        return (
            await self._db.fetch_val("SELECT 1 FROM rooms WHERE room_id = ?", room_id)
        ) is not None

    # -- purging

    async def check_purge_point(self, room_id: str, below_depth: int) -> None:
        """Refuse a purge that would leave the room without a forward extremity."""
        deepest = await self._db.fetch_val(
            "SELECT MAX(e.depth) FROM forward_extremities AS f"
            " JOIN events AS e ON e.event_id = f.event_id WHERE f.room_id = ?",
            room_id,
        )
        if deepest is not None and int(deepest) < below_depth:
            raise MatrixError(
                400, "M_UNKNOWN", "topological_ordering is greater than forward extremities"
            )

    def _doomed(self, delete_local: bool) -> tuple[str, list[Any]]:
        """The condition on `events AS e` of an event the purge deletes (room and depth
        come first as parameters)."""
        where = "e.room_id = ? AND e.depth < ? AND e.state_key IS NULL"
        if delete_local:
            return where, []
        return where + " AND e.sender NOT LIKE ?", [self._local_pattern]

    async def mark_gaps(self, room_id: str, below_depth: int, delete_local: bool) -> None:
        """Before purging: the purged events (deleted or made outliers) that a timeline
        event at or after the cut-off names as a prev event become backward extremities
        (where backfill would start)."""
        rows = await self._db.fetch_all(
            "SELECT DISTINCT e.event_id FROM events AS e"
            " JOIN event_edges AS ed ON ed.prev_event_id = e.event_id"
            " JOIN events AS child ON child.event_nid = ed.event_nid"
            " WHERE e.room_id = ? AND e.depth < ?"
            " AND child.room_id = e.room_id AND child.depth >= ? AND NOT child.outlier",
            room_id,
            below_depth,
            below_depth,
        )
        if rows:
            async with self._db.transaction() as txn:
                await txn.executemany(
                    "INSERT INTO backward_extremities (room_id, event_id) VALUES (?, ?)"
                    " ON CONFLICT DO NOTHING",
                    [(room_id, r[0]) for r in rows],
                )
                txn.call_after_commit(lambda: self._events.forget_extremities(room_id))

    async def purge_batch(
        self, room_id: str, below_depth: int, delete_local: bool
    ) -> tuple[int, int]:
        """Purge up to PURGE_BATCH events in one transaction: first the ones deleted,
        then the ones kept (state events; local ones without `delete_local`) made
        outliers. (deleted, hidden); (0, 0): done. The caller holds the room's lock."""
        doomed, extra = self._doomed(delete_local)
        async with self._db.transaction(heavy=True) as txn:
            rows = await txn.fetch_all(
                f"SELECT e.event_nid, e.event_id FROM events AS e WHERE {doomed}"
                " ORDER BY e.event_nid LIMIT ?",
                room_id,
                below_depth,
                *extra,
                PURGE_BATCH,
            )
            if rows:
                nids = [int(r[0]) for r in rows]
                ids = [str(r[1]) for r in rows]
                await self._delete_events(txn, room_id, nids, ids)
                txn.call_after_commit(lambda: self._events.forget_events(room_id, ids))
                return len(ids), 0
            rows = await txn.fetch_all(
                "SELECT e.event_nid, e.event_id FROM events AS e"
                " WHERE e.room_id = ? AND e.depth < ? AND NOT e.outlier"
                " ORDER BY e.event_nid LIMIT ?",
                room_id,
                below_depth,
                PURGE_BATCH,
            )
            if not rows:
                return 0, 0
            nids = [int(r[0]) for r in rows]
            hidden = [str(r[1]) for r in rows]
            await self._hide_events(txn, room_id, nids, hidden)
            txn.call_after_commit(lambda: self._events.forget_events(room_id, hidden))
        return 0, len(hidden)

    async def _unindex(self, txn: Transaction, room_id: str, ids: Sequence[str]) -> None:
        """What indexes the events as part of the timeline: relations, threads, search
        entries, forward extremities."""
        sql = self._db.sql
        in_ids = sql.array(ids)
        for table in ("event_relations", "event_search"):
            await txn.execute(f"DELETE FROM {table} WHERE {sql.in_array('event_id')}", in_ids)
        await txn.execute(
            f"DELETE FROM threads WHERE room_id = ? AND ({sql.in_array('thread_id')}"
            f" OR {sql.in_array('latest_event_id')})",
            room_id,
            in_ids,
            in_ids,
        )
        await txn.execute(
            f"DELETE FROM forward_extremities WHERE room_id = ? AND {sql.in_array('event_id')}",
            room_id,
            in_ids,
        )

    async def _hide_events(
        self, txn: Transaction, room_id: str, nids: Sequence[int], ids: Sequence[str]
    ) -> None:
        """Kept events leave the timeline: outliers (their stream position, state groups,
        PDU, graph and auth edges stay; promoting them back is what backfill does with an
        outlier)."""
        await self._unindex(txn, room_id, ids)
        sql = self._db.sql
        await txn.execute(
            f"UPDATE events SET outlier = TRUE WHERE {sql.in_array('event_nid')}",
            sql.array(nids),
        )

    async def _delete_events(
        self, txn: Transaction, room_id: str, nids: Sequence[int], ids: Sequence[str]
    ) -> None:
        sql = self._db.sql
        in_ids = sql.array(ids)
        await self._unindex(txn, room_id, ids)
        await txn.execute(
            f"DELETE FROM event_edges WHERE {sql.in_array('event_nid')}", sql.array(nids)
        )
        for table in ("event_auth", "federation_relayed_events"):
            await txn.execute(f"DELETE FROM {table} WHERE {sql.in_array('event_id')}", in_ids)
        await txn.execute(f"DELETE FROM events WHERE {sql.in_array('event_nid')}", sql.array(nids))

    # -- a user's events

    async def rooms_of_user(self, user_id: str) -> list[str]:
        """Every room the user is joined to, banned from or has left (a spammer who
        left still has messages to redact)."""
        rows = await self._db.fetch_all(
            "SELECT room_id FROM room_memberships WHERE user_id = ?"
            " AND membership IN ('join', 'ban', 'leave') ORDER BY room_id",
            user_id,
        )
        return [str(r[0]) for r in rows]

    async def events_to_redact(
        self,
        user_id: str,
        room_ids: Sequence[str],
        *,
        limit: int,
        after_ts: int | None,
        before_ts: int | None,
    ) -> list[tuple[str, str]]:
        """(room ID, event ID) of the user's not yet redacted timeline events of the
        REDACTABLE_TYPES, at most `limit` per room (the newest), newest first."""
        if not room_ids:
            return []
        sql = self._db.sql
        clauses = [
            "sender = ?",
            sql.in_array("room_id"),
            sql.in_array("type"),
            "redacted_by IS NULL",
            "stream_ordering IS NOT NULL",
            "rejected_reason IS NULL",
        ]
        args: list[Any] = [user_id, sql.array(room_ids), sql.array(REDACTABLE_TYPES)]
        if after_ts is not None:
            clauses.append("origin_server_ts >= ?")
            args.append(after_ts)
        if before_ts is not None:
            clauses.append("origin_server_ts <= ?")
            args.append(before_ts)
        rows = await self._db.fetch_all(
            "SELECT room_id, event_id FROM ("
            " SELECT room_id, event_id, stream_ordering, ROW_NUMBER() OVER"
            "  (PARTITION BY room_id ORDER BY stream_ordering DESC) AS n"
            f" FROM events WHERE {' AND '.join(clauses)}"
            ") AS mine WHERE n <= ? ORDER BY stream_ordering DESC",
            *args,
            limit,
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    # -- retention

    async def retention_policies(self) -> list[RoomRetention]:
        """Every room with its m.room.retention content (None without one)."""
        rooms = await self._db.fetch_all("SELECT room_id FROM rooms ORDER BY room_id")
        rows = await self._db.fetch_all(
            "SELECT cs.room_id, e.json FROM current_state AS cs"
            " JOIN state_keys AS sk ON sk.key_nid = cs.key_nid"
            " JOIN events AS e ON e.event_nid = cs.event_nid"
            " WHERE sk.type = 'm.room.retention' AND sk.state_key = ''"
        )
        policies: dict[str, dict[str, Any]] = {}
        for room_id, raw in rows:
            content = orjson.loads(raw).get("content")
            if isinstance(content, dict):
                policies[str(room_id)] = content
        return [RoomRetention(str(r[0]), policies.get(str(r[0]))) for r in rooms]

"""Application-service delivery queues (migration 0024): each service's position in the
events stream, its last transaction ID, and the transactions built but not yet accepted;
its positions in the to_device and device_lists streams (migration 0039).

Building a transaction and moving the position past the events it holds is one database
transaction, so an event is queued once: never lost (the position only moves with the
transaction stored) and never queued twice (a restart reads on from the new position).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from starling.storage.database import Database

_SENDABLE = "e.outlier = FALSE AND e.soft_failed = FALSE AND e.rejected_reason IS NULL"


@dataclass(frozen=True, slots=True)
class QueuedTransaction:
    txn_id: int
    body: str


@dataclass(frozen=True, slots=True)
class Extras:
    """What a transaction carries besides events: the stream positions it moves to, and
    the to-device messages it takes out of their inboxes ((user, device, stream_id))."""

    positions: Mapping[str, int] = field(default_factory=dict)
    taken_to_device: Sequence[tuple[str, str, int]] = ()


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

    async def enqueue(
        self, as_id: str, body: str, position: int, extras: Extras | None = None
    ) -> int:
        """Store a new transaction and move the position to `position` (and the other
        streams' positions, taking the to-device messages it carries); its ID."""
        async with self._db.transaction() as txn:
            if extras is not None:
                for stream, stream_position in extras.positions.items():
                    await txn.execute(
                        "INSERT INTO appservice_stream_positions (as_id, stream, position)"
                        " VALUES (?, ?, ?) ON CONFLICT (as_id, stream)"
                        " DO UPDATE SET position = excluded.position",
                        as_id,
                        stream,
                        stream_position,
                    )
                if extras.taken_to_device:
                    await txn.executemany(
                        "DELETE FROM to_device_inbox"
                        " WHERE user_id = ? AND device_id = ? AND stream_id = ?",
                        list(extras.taken_to_device),
                    )
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

    # -- MSC2409 to-device, MSC3202 device lists and key counts

    async def stream_position(self, as_id: str, stream: str, start: int) -> int:
        """The service's position in `stream`; a new one starts at `start`."""
        await self._db.execute(
            "INSERT INTO appservice_stream_positions (as_id, stream, position) VALUES (?, ?, ?)"
            " ON CONFLICT (as_id, stream) DO NOTHING",
            as_id,
            stream,
            start,
        )
        return int(
            await self._db.fetch_val(
                "SELECT position FROM appservice_stream_positions WHERE as_id = ? AND stream = ?",
                as_id,
                stream,
            )
        )

    async def to_device_between(
        self, after: int, upto: int, max_requests: int
    ) -> tuple[list[tuple[int, str, str, str]], int]:
        """(stream_id, user_id, device_id, message_json) of local inboxes in (after, P],
        oldest first, and P: `upto`, or less so that at most `max_requests` sends (stream
        IDs; each up to MAX_RECIPIENTS devices) are read, never splitting one."""
        ids = await self._db.fetch_all(
            "SELECT DISTINCT stream_id FROM to_device_inbox WHERE stream_id > ?"
            " AND stream_id <= ? ORDER BY stream_id LIMIT ?",
            after,
            upto,
            max_requests,
        )
        if not ids:
            return [], upto
        reached = int(ids[-1][0]) if len(ids) == max_requests else upto
        rows = await self._db.fetch_all(
            "SELECT stream_id, user_id, device_id, message_json FROM to_device_inbox"
            " WHERE stream_id > ? AND stream_id <= ? ORDER BY stream_id, user_id, device_id",
            after,
            reached,
        )
        return [(int(r[0]), r[1], r[2], r[3]) for r in rows], reached

    async def device_list_changes_between(
        self, after: int, upto: int, max_positions: int
    ) -> tuple[set[str], int]:
        """Users whose device lists changed (visibly to everyone) in (after, P], and P:
        `upto`, or less so that at most `max_positions` stream positions are read."""
        ids = await self._db.fetch_all(
            "SELECT DISTINCT stream_id FROM device_list_changes WHERE stream_id > ?"
            " AND stream_id <= ? AND observer IS NULL ORDER BY stream_id LIMIT ?",
            after,
            upto,
            max_positions,
        )
        if not ids:
            return set(), upto
        reached = int(ids[-1][0]) if len(ids) == max_positions else upto
        rows = await self._db.fetch_all(
            "SELECT DISTINCT user_id FROM device_list_changes"
            " WHERE stream_id > ? AND stream_id <= ? AND observer IS NULL",
            after,
            reached,
        )
        return {r[0] for r in rows}, reached

    async def membership_transitions_between(
        self, after: int, upto: int, limit: int
    ) -> list[tuple[str, str, bool]]:
        """(room_id, user_id, joined) of joins and leaves on the device_lists stream in
        (after, upto], oldest first, at most `limit`."""
        rows = await self._db.fetch_all(
            "SELECT room_id, user_id, joined FROM device_list_memberships"
            " WHERE stream_id > ? AND stream_id <= ? AND NOT invited"
            " ORDER BY stream_id LIMIT ?",
            after,
            upto,
            limit,
        )
        return [(r[0], r[1], bool(r[2])) for r in rows]

    async def key_counts(
        self, user_ids: Sequence[str]
    ) -> tuple[dict[str, dict[str, dict[str, int]]], dict[str, dict[str, list[str]]]]:
        """One-time-key counts {user: {device: {algorithm: n}}} and unused fallback key
        types {user: {device: [algorithm]}} of these users' devices (every device, with
        zero counts for none left)."""
        if not user_ids:
            return {}, {}
        sql = self._db.sql
        users = sql.array(sorted(set(user_ids)))
        rows = await self._db.fetch_all(
            "SELECT 'd', user_id, device_id, '', 0 FROM devices"
            f" WHERE {sql.in_array('user_id')}"
            " UNION ALL SELECT 'o', user_id, device_id, algorithm, COUNT(*)"
            f" FROM e2e_one_time_keys WHERE {sql.in_array('user_id')}"
            " GROUP BY user_id, device_id, algorithm"
            " UNION ALL SELECT 'f', user_id, device_id, algorithm, 0 FROM e2e_fallback_keys"
            f" WHERE {sql.in_array('user_id')} AND NOT used",
            users,
            users,
            users,
        )
        counts: dict[str, dict[str, dict[str, int]]] = {}
        fallback: dict[str, dict[str, list[str]]] = {}
        for kind, user, device, algorithm, n in rows:
            if kind == "d":
                counts.setdefault(user, {}).setdefault(device, {})
                fallback.setdefault(user, {}).setdefault(device, [])
            elif kind == "o":
                counts.setdefault(user, {}).setdefault(device, {})[algorithm] = int(n)
            else:
                fallback.setdefault(user, {}).setdefault(device, []).append(algorithm)
        for by_device in fallback.values():
            for algorithms in by_device.values():
                algorithms.sort()
        return counts, fallback

    async def joined_rooms_of(self, user_ids: Sequence[str]) -> dict[str, set[str]]:
        """The rooms each of these users is joined to, in one query."""
        if not user_ids:
            return {}
        sql = self._db.sql
        rows = await self._db.fetch_all(
            "SELECT user_id, room_id FROM room_memberships"
            f" WHERE membership = 'join' AND {sql.in_array('user_id')}",
            sql.array(sorted(set(user_ids))),
        )
        out: dict[str, set[str]] = {}
        for user_id, room_id in rows:
            out.setdefault(user_id, set()).add(room_id)
        return out

    async def set_stream_positions(self, as_id: str, positions: Mapping[str, int]) -> None:
        """Move the service past to-device or device-list rows it had no use for."""
        async with self._db.transaction() as txn:
            for stream, position in positions.items():
                await txn.execute(
                    "UPDATE appservice_stream_positions SET position = ?"
                    " WHERE as_id = ? AND stream = ?",
                    position,
                    as_id,
                    stream,
                )

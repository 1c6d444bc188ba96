"""Presence rows of local users, on the "presence" stream.

The presence service keeps current state in memory; this store persists what it
announces (one row per user, with the stream position of the announcement), batches the
last-active refreshes that are not announced, and answers "who changed since" for /sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starling.storage.database import Database, Row
from starling.storage.streams import StreamIdGenerator


@dataclass(slots=True)
class PresenceRow:
    user_id: str
    state: str
    status_msg: str | None
    last_active_ts: int
    currently_active: bool
    stream_id: int = 0


def _row(r: Row) -> PresenceRow:
    return PresenceRow(
        str(r[0]),
        str(r[1]),
        None if r[2] is None else str(r[2]),
        int(r[3]),
        bool(r[4]),
        int(r[5]),
    )


_COLUMNS = "user_id, state, status_msg, last_active_ts, currently_active, stream_id"


class PresenceStore:
    def __init__(self, db: Database, stream: StreamIdGenerator) -> None:
        self._db = db
        self.stream = stream

    async def announce(self, rows: Sequence[PresenceRow]) -> int:
        """Persist new states with fresh stream positions (set on the rows); returns the
        last position."""
        async with self._db.transaction() as txn:
            ids = await self.stream.next_ids(txn, len(rows))
            for row, stream_id in zip(rows, ids, strict=True):
                row.stream_id = stream_id
            await txn.executemany(
                f"INSERT INTO presence ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET state = excluded.state,"
                " status_msg = excluded.status_msg, last_active_ts = excluded.last_active_ts,"
                " currently_active = excluded.currently_active, stream_id = excluded.stream_id",
                [
                    (
                        r.user_id,
                        r.state,
                        r.status_msg,
                        r.last_active_ts,
                        r.currently_active,
                        r.stream_id,
                    )
                    for r in rows
                ],
            )
        return ids[-1]

    async def save_last_active(self, updates: Sequence[tuple[str, int]]) -> None:
        """Refresh last_active_ts of already-announced users, without a stream position."""
        if not updates:
            return
        async with self._db.transaction() as txn:
            await txn.executemany(
                "UPDATE presence SET last_active_ts = ? WHERE user_id = ? AND last_active_ts < ?",
                [(ts, user_id, ts) for user_id, ts in updates],
            )

    async def get(self, user_ids: Sequence[str]) -> dict[str, PresenceRow]:
        if not user_ids:
            return {}
        rows = await self._db.fetch_all(
            f"SELECT {_COLUMNS} FROM presence WHERE {self._db.sql.in_array('user_id')}",
            self._db.sql.array(user_ids),
        )
        return {r[0]: _row(r) for r in rows}

    async def get_not_offline(self) -> list[PresenceRow]:
        rows = await self._db.fetch_all(f"SELECT {_COLUMNS} FROM presence WHERE state <> 'offline'")
        return [_row(r) for r in rows]

    async def changed_between(
        self, from_exclusive: int, to_inclusive: int, user_ids: Sequence[str]
    ) -> list[PresenceRow]:
        """Rows of these users announced in (from, to]."""
        if not user_ids:
            return []
        rows = await self._db.fetch_all(
            f"SELECT {_COLUMNS} FROM presence WHERE stream_id > ? AND stream_id <= ?"
            f" AND {self._db.sql.in_array('user_id')}",
            from_exclusive,
            to_inclusive,
            self._db.sql.array(user_ids),
        )
        return [_row(r) for r in rows]

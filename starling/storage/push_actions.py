"""Push actions: per local user, the events their push rules said `notify` for (table
event_push_actions, written by starling/push/evaluator.py), the evaluator's position in
the events stream, and each HTTP pusher's delivery position."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from starling.storage.database import Database

_POSITION_ROW = 1


@dataclass(frozen=True, slots=True)
class PushAction:
    user_id: str
    stream_ordering: int
    room_id: str
    event_id: str
    actions: list[Any]
    highlight: bool
    ts: int


@dataclass(frozen=True, slots=True)
class PusherBacklog:
    """An HTTP pusher with notifications after its delivery position."""

    user_id: str
    app_id: str
    pushkey: str


def _action(row: Any) -> PushAction:
    actions = orjson.loads(row[4])
    return PushAction(
        user_id=row[0],
        stream_ordering=int(row[1]),
        room_id=row[2],
        event_id=row[3],
        actions=actions if isinstance(actions, list) else [],
        highlight=bool(row[5]),
        ts=int(row[6]),
    )


_COLUMNS = "user_id, stream_ordering, room_id, event_id, actions, highlight, ts"


class PushActionStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- the evaluator -----------------------------------------------------------------

    async def evaluator_position(self, start_at: int) -> int:
        """Where the evaluator stopped; on the very first start, `start_at` (history
        before the feature existed is not evaluated)."""
        await self._db.execute(
            "INSERT INTO push_evaluator_position (id, stream_position) VALUES (?, ?)"
            " ON CONFLICT (id) DO NOTHING",
            _POSITION_ROW,
            start_at,
        )
        value = await self._db.fetch_val(
            "SELECT stream_position FROM push_evaluator_position WHERE id = ?", _POSITION_ROW
        )
        return int(value)

    async def timeline_after(self, after: int, upto: int, limit: int) -> list[tuple[str, int]]:
        """(event ID, position) of accepted timeline events in (after, upto], in stream
        order (backfilled history has negative positions and is never pushed), and of
        the out-of-band member events there (an invite from another server to a room
        this server is not in: an outlier, but with a stream position)."""
        rows = await self._db.fetch_all(
            "SELECT e.event_id, e.stream_ordering FROM events e"
            " WHERE e.stream_ordering > ? AND e.stream_ordering <= ?"
            " AND (NOT e.outlier OR e.type = 'm.room.member')"
            " AND NOT e.soft_failed AND e.rejected_reason IS NULL"
            " ORDER BY e.stream_ordering LIMIT ?",
            after,
            upto,
            limit,
        )
        return [(r[0], int(r[1])) for r in rows]

    async def add(self, actions: Sequence[PushAction], position: int) -> None:
        """Store a batch of notifications and move the evaluator past it, atomically: a
        crash re-evaluates the whole batch or none of it."""
        async with self._db.transaction() as txn:
            if actions:
                await txn.executemany(
                    f"INSERT INTO event_push_actions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (user_id, stream_ordering) DO NOTHING",
                    [
                        (
                            a.user_id,
                            a.stream_ordering,
                            a.room_id,
                            a.event_id,
                            orjson.dumps(a.actions).decode(),
                            a.highlight,
                            a.ts,
                        )
                        for a in actions
                    ],
                )
            # Queued: it goes with the INSERTs and the COMMIT (one round trip on
            # PostgreSQL, where an awaited statement was one more per batch).
            await txn.queue(
                "UPDATE push_evaluator_position SET stream_position = ? WHERE id = ?",
                position,
                _POSITION_ROW,
            )

    async def prune(self, older_than_ts: int) -> int:
        """Forget notifications made before `older_than_ts` (ms)."""
        return await self._db.execute("DELETE FROM event_push_actions WHERE ts < ?", older_than_ts)

    # --- readers -------------------------------------------------------------------------

    async def for_user(
        self, user_id: str, before: int | None, limit: int, only_highlight: bool
    ) -> list[PushAction]:
        """The user's notifications, newest first, below `before` (exclusive)."""
        clauses = ["user_id = ?"]
        args: list[Any] = [user_id]
        if before is not None:
            clauses.append("stream_ordering < ?")
            args.append(before)
        if only_highlight:
            clauses.append("highlight")
        rows = await self._db.fetch_all(
            f"SELECT {_COLUMNS} FROM event_push_actions WHERE {' AND '.join(clauses)}"
            " ORDER BY stream_ordering DESC LIMIT ?",
            *args,
            limit,
        )
        return [_action(r) for r in rows]

    async def after(self, user_id: str, position: int, limit: int) -> list[PushAction]:
        """The user's notifications after `position`, oldest first (a pusher's backlog)."""
        rows = await self._db.fetch_all(
            f"SELECT {_COLUMNS} FROM event_push_actions"
            " WHERE user_id = ? AND stream_ordering > ? ORDER BY stream_ordering LIMIT ?",
            user_id,
            position,
            limit,
        )
        return [_action(r) for r in rows]

    # --- pusher positions ------------------------------------------------------------------

    async def pusher_position(self, user_id: str, app_id: str, pushkey: str) -> int | None:
        """The pusher's delivery position; None when the pusher is gone."""
        value = await self._db.fetch_val(
            "SELECT last_stream_ordering FROM pushers"
            " WHERE user_id = ? AND app_id = ? AND pushkey = ?",
            user_id,
            app_id,
            pushkey,
        )
        return None if value is None else int(value)

    async def set_pusher_position(
        self, user_id: str, app_id: str, pushkey: str, position: int
    ) -> None:
        await self._db.execute(
            "UPDATE pushers SET last_stream_ordering = ?"
            " WHERE user_id = ? AND app_id = ? AND pushkey = ? AND last_stream_ordering < ?",
            position,
            user_id,
            app_id,
            pushkey,
            position,
        )

    async def pushers_with_backlog(self) -> list[PusherBacklog]:
        """Every pusher with notifications it has not delivered (at start: catch-up)."""
        rows = await self._db.fetch_all(
            "SELECT p.user_id, p.app_id, p.pushkey FROM pushers p WHERE EXISTS ("
            "  SELECT 1 FROM event_push_actions a"
            "  WHERE a.user_id = p.user_id AND a.stream_ordering > p.last_stream_ordering)"
            " ORDER BY p.user_id, p.app_id, p.pushkey"
        )
        return [PusherBacklog(r[0], r[1], r[2]) for r in rows]

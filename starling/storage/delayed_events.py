"""Delayed events (MSC4140): table delayed_events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from starling.storage.database import Database

_COLUMNS = (
    "delay_id, user_id, device_id, room_id, event_type, state_key, content, delay,"
    " running_since, send_ts, status, event_id, finalised_ts, error"
)


@dataclass(frozen=True, slots=True)
class DelayedEvent:
    delay_id: str
    user_id: str
    device_id: str | None
    room_id: str
    event_type: str
    state_key: str | None
    content: dict[str, Any]
    delay: int
    running_since: int
    send_ts: int
    status: str
    event_id: str | None = None
    finalised_ts: int | None = None
    error: dict[str, Any] | None = None


def _row(r: Any) -> DelayedEvent:
    return DelayedEvent(
        delay_id=r[0],
        user_id=r[1],
        device_id=r[2],
        room_id=r[3],
        event_type=r[4],
        state_key=r[5],
        content=orjson.loads(r[6]),
        delay=int(r[7]),
        running_since=int(r[8]),
        send_ts=int(r[9]),
        status=r[10],
        event_id=r[11],
        finalised_ts=None if r[12] is None else int(r[12]),
        error=None if r[13] is None else orjson.loads(r[13]),
    )


class DelayedEventStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, event: DelayedEvent, txn_key: str | None) -> str:
        """Schedule it; with a `txn_key` already used, the delay ID scheduled then."""
        async with self._db.transaction() as txn:
            if txn_key is not None:
                known = await txn.fetch_val(
                    "SELECT delay_id FROM delayed_events WHERE txn_key = ?", txn_key
                )
                if known is not None:
                    return str(known)
            await txn.execute(
                f"INSERT INTO delayed_events ({_COLUMNS}, txn_key)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                event.delay_id,
                event.user_id,
                event.device_id,
                event.room_id,
                event.event_type,
                event.state_key,
                orjson.dumps(event.content).decode(),
                event.delay,
                event.running_since,
                event.send_ts,
                event.status,
                None,
                None,
                None,
                txn_key,
            )
        return event.delay_id

    async def get(self, delay_id: str) -> DelayedEvent | None:
        row = await self._db.fetch_one(
            f"SELECT {_COLUMNS} FROM delayed_events WHERE delay_id = ?", delay_id
        )
        return None if row is None else _row(row)

    async def count_scheduled(self, user_id: str) -> int:
        return int(
            await self._db.fetch_val(
                "SELECT COUNT(*) FROM delayed_events WHERE user_id = ? AND status = 'scheduled'",
                user_id,
            )
        )

    async def for_user(self, user_id: str, status: str | None, limit: int) -> list[DelayedEvent]:
        clause = "" if status is None else " AND status = ?"
        args: list[Any] = [user_id] if status is None else [user_id, status]
        rows = await self._db.fetch_all(
            f"SELECT {_COLUMNS} FROM delayed_events WHERE user_id = ?{clause}"
            " ORDER BY send_ts, delay_id LIMIT ?",
            *args,
            limit,
        )
        return [_row(r) for r in rows]

    async def due(self, now_ms: int, limit: int) -> list[DelayedEvent]:
        rows = await self._db.fetch_all(
            f"SELECT {_COLUMNS} FROM delayed_events WHERE status = 'scheduled' AND send_ts <= ?"
            " ORDER BY send_ts LIMIT ?",
            now_ms,
            limit,
        )
        return [_row(r) for r in rows]

    async def next_send_ts(self) -> int | None:
        value = await self._db.fetch_val(
            "SELECT MIN(send_ts) FROM delayed_events WHERE status = 'scheduled'"
        )
        return None if value is None else int(value)

    async def restart(self, delay_id: str, now_ms: int) -> bool:
        """Run the delay again from now; False unless it is still scheduled."""
        return (
            await self._db.execute(
                "UPDATE delayed_events SET running_since = ?, send_ts = ? + delay"
                " WHERE delay_id = ? AND status = 'scheduled'",
                now_ms,
                now_ms,
                delay_id,
            )
        ) > 0

    async def cancel(self, delay_id: str, now_ms: int) -> bool:
        """Cancel it; False unless it was still scheduled."""
        return (
            await self._db.execute(
                "UPDATE delayed_events SET status = 'cancelled', finalised_ts = ?"
                " WHERE delay_id = ? AND status = 'scheduled'",
                now_ms,
                delay_id,
            )
        ) > 0

    async def claim(self, delay_id: str) -> bool:
        """Take a scheduled event for sending (scheduled -> sending): of a manual send and
        the timer racing, one sends it."""
        return (
            await self._db.execute(
                "UPDATE delayed_events SET status = 'sending'"
                " WHERE delay_id = ? AND status = 'scheduled'",
                delay_id,
            )
        ) > 0

    async def complete(
        self,
        delay_id: str,
        status: str,
        now_ms: int,
        event_id: str | None = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        """A claimed event sent, or cancelled by the error sending it met."""
        await self._db.execute(
            "UPDATE delayed_events SET status = ?, finalised_ts = ?, event_id = ?, error = ?"
            " WHERE delay_id = ? AND status = 'sending'",
            status,
            now_ms,
            event_id,
            None if error is None else orjson.dumps(error).decode(),
            delay_id,
        )

    async def unclaim(self, delay_id: str) -> None:
        await self._db.execute(
            "UPDATE delayed_events SET status = 'scheduled'"
            " WHERE delay_id = ? AND status = 'sending'",
            delay_id,
        )

    async def reset_claims(self) -> None:
        """At start: sends a previous run left unfinished are scheduled again."""
        await self._db.execute(
            "UPDATE delayed_events SET status = 'scheduled' WHERE status = 'sending'"
        )

    async def prune_finalised(self, before_ms: int) -> int:
        return await self._db.execute(
            "DELETE FROM delayed_events WHERE status <> 'scheduled' AND finalised_ts < ?",
            before_ms,
        )

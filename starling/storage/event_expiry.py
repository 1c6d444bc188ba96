"""Ephemeral messages' expiry times, and censoring an event: its stored JSON replaced by
its redacted form and its search entry dropped (rooms/ephemeral.py; Synapse's
expire_event)."""

from __future__ import annotations

from starling.storage.database import Database
from starling.storage.events import EventStore


class EventExpiryStore:
    def __init__(self, db: Database, events: EventStore) -> None:
        self._db = db
        self._events = events

    async def add(self, event_id: str, expiry_ts: int) -> None:
        await self._db.execute(
            "INSERT INTO event_expiry (event_id, expiry_ts) VALUES (?, ?)"
            " ON CONFLICT (event_id) DO NOTHING",
            event_id,
            expiry_ts,
        )

    async def next_expiry(self) -> int | None:
        value = await self._db.fetch_val("SELECT MIN(expiry_ts) FROM event_expiry")
        return None if value is None else int(value)

    async def due(self, now_ms: int, limit: int) -> list[str]:
        rows = await self._db.fetch_all(
            "SELECT event_id FROM event_expiry WHERE expiry_ts <= ?"
            " ORDER BY expiry_ts, event_id LIMIT ?",
            now_ms,
            limit,
        )
        return [str(r[0]) for r in rows]

    async def forget(self, event_id: str) -> None:
        await self._db.execute("DELETE FROM event_expiry WHERE event_id = ?", event_id)

    async def censor(self, event_id: str, pruned_json: str) -> None:
        """Replace the event's stored JSON by `pruned_json` (its redacted form), drop its
        search entry and its expiry row, in one transaction."""
        async with self._db.transaction() as txn:
            await txn.execute(
                "UPDATE events SET json = ? WHERE event_id = ?", pruned_json, event_id
            )
            await txn.execute("DELETE FROM event_search WHERE event_id = ?", event_id)
            await txn.execute("DELETE FROM event_expiry WHERE event_id = ?", event_id)
            txn.call_after_commit(lambda: self._events.invalidate(event_id))

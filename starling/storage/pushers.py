"""Pushers: one row per (user, app_id, pushkey), the pusher JSON as the client gave it."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson

from starling.storage.database import Database

_BATCH = 500  # users per IN (...) query
PushersByUser = dict[str, list[dict[str, Any]]]


class TooManyPushers(Exception):
    """The user already has the most pushers allowed."""


class PusherStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def list(self, user_id: str) -> list[dict[str, Any]]:
        rows = await self._db.fetch_all(
            "SELECT data FROM pushers WHERE user_id = ? ORDER BY created_ts, app_id, pushkey",
            user_id,
        )
        return [orjson.loads(r[0]) for r in rows]

    async def list_http_for_users(self, user_ids: Iterable[str]) -> PushersByUser:
        """User -> their HTTP pushers (with `pushkey_ts`), for those users that have any."""
        users = sorted(set(user_ids))
        out: PushersByUser = {}
        for start in range(0, len(users), _BATCH):
            chunk = users[start : start + _BATCH]
            marks = ", ".join("?" for _ in chunk)
            rows = await self._db.fetch_all(
                f"SELECT user_id, data, created_ts FROM pushers WHERE user_id IN ({marks})"
                " ORDER BY user_id, created_ts, app_id, pushkey",
                *chunk,
            )
            for user_id, data, created_ts in rows:
                pusher = orjson.loads(data)
                if pusher.get("kind") == "http":
                    pusher["pushkey_ts"] = int(created_ts)
                    out.setdefault(user_id, []).append(pusher)
        return out

    async def set(
        self,
        user_id: str,
        pusher: dict[str, Any],
        *,
        replace_others: bool,
        max_per_user: int,
        token_hash: bytes | None = None,
        start_position: int = 0,
    ) -> None:
        """Add or replace the user's pusher with this app_id and pushkey; with
        `replace_others`, other users' pushers with the same pair go (spec: `append`).
        A new pusher delivers notifications after `start_position` (the events stream's
        position now: nothing older); a replaced one keeps its position."""
        app_id, pushkey = pusher["app_id"], pusher["pushkey"]
        async with self._db.transaction() as txn:
            if replace_others:
                await txn.execute(
                    "DELETE FROM pushers WHERE app_id = ? AND pushkey = ? AND user_id <> ?",
                    app_id,
                    pushkey,
                    user_id,
                )
            count = await txn.fetch_val(
                "SELECT COUNT(*) FROM pushers WHERE user_id = ?"
                " AND NOT (app_id = ? AND pushkey = ?)",
                user_id,
                app_id,
                pushkey,
            )
            if int(count) >= max_per_user:
                raise TooManyPushers()
            await txn.execute(
                "INSERT INTO pushers (user_id, app_id, pushkey, access_token_hash, data,"
                " created_ts, last_stream_ordering) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET data = excluded.data,"
                " access_token_hash = excluded.access_token_hash",
                user_id,
                app_id,
                pushkey,
                token_hash,
                orjson.dumps(pusher).decode(),
                int(time.time() * 1000),
                start_position,
            )

    async def delete(self, user_id: str, app_id: str, pushkey: str) -> bool:
        return (
            await self._db.execute(
                "DELETE FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?",
                user_id,
                app_id,
                pushkey,
            )
        ) > 0

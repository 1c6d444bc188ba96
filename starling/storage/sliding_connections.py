"""Sliding sync connection snapshots (tables sliding_sync_connections and
sliding_sync_snapshots): the narrow storage API behind sync/sliding/connections.py.

A snapshot is written once and never changed; what it holds is opaque here (JSON text
the domain encodes). Every call is one short transaction, so several processes may serve
one connection: sequence numbers are allocated by the database.
"""

from __future__ import annotations

from starling.storage.database import Database, Transaction

ConnKey = tuple[str, str, str]  # user_id, device_id, conn_id


class SlidingConnectionStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def start(
        self, key: ConnKey, nonce: int, now_ms: int, max_per_device: int, expire_before_ms: int
    ) -> None:
        """A new connection under `key`, replacing any (and its snapshots); the device's
        least recently used connections beyond `max_per_device`, and every connection
        unused since `expire_before_ms`, go."""
        user_id, device_id, conn_id = key
        async with self._db.transaction() as txn:
            await txn.execute(
                "DELETE FROM sliding_sync_snapshots"
                " WHERE user_id = ? AND device_id = ? AND conn_id = ?",
                *key,
            )
            await txn.execute(
                "DELETE FROM sliding_sync_connections"
                " WHERE user_id = ? AND device_id = ? AND conn_id = ?",
                *key,
            )
            await txn.execute(
                "INSERT INTO sliding_sync_connections"
                " (user_id, device_id, conn_id, nonce, next_seq, last_used_ts)"
                " VALUES (?, ?, ?, ?, 1, ?)",
                user_id,
                device_id,
                conn_id,
                nonce,
                now_ms,
            )
            rows = await txn.fetch_all(
                "SELECT conn_id FROM sliding_sync_connections WHERE user_id = ? AND device_id = ?"
                " ORDER BY last_used_ts DESC, conn_id",
                user_id,
                device_id,
            )
            surplus = [r[0] for r in rows[max_per_device:] if r[0] != conn_id]
            expired = await txn.fetch_all(
                "SELECT user_id, device_id, conn_id FROM sliding_sync_connections"
                " WHERE last_used_ts < ? LIMIT 100",
                expire_before_ms,
            )
            victims = [(user_id, device_id, c) for c in surplus]
            victims += [(r[0], r[1], r[2]) for r in expired]
            for victim in victims:
                await self._drop(txn, victim)

    @staticmethod
    async def _drop(txn: Transaction, key: ConnKey) -> None:
        for table in ("sliding_sync_snapshots", "sliding_sync_connections"):
            await txn.execute(
                f"DELETE FROM {table} WHERE user_id = ? AND device_id = ? AND conn_id = ?", *key
            )

    async def load(self, key: ConnKey, nonce: int, seq: int, with_data: bool) -> tuple[bool, str]:
        """(whether the snapshot exists, its data when asked for, else "")."""
        column = "data" if with_data else "''"
        row = await self._db.fetch_one(
            f"SELECT {column} FROM sliding_sync_snapshots WHERE user_id = ? AND device_id = ?"
            " AND conn_id = ? AND nonce = ? AND seq = ?",
            *key,
            nonce,
            seq,
        )
        return (False, "") if row is None else (True, str(row[0]))

    async def save(
        self,
        key: ConnKey,
        nonce: int,
        data: str,
        base_seq: int | None,
        max_snapshots: int,
        now_ms: int,
    ) -> int | None:
        """Store the next snapshot of the connection; its sequence number, or None when
        the connection is gone (replaced, evicted or its device logged out). Snapshots
        older than `base_seq` go (the client has the base); beyond `max_snapshots`, the
        oldest but the base."""
        async with self._db.transaction() as txn:
            row = await txn.fetch_one(
                "UPDATE sliding_sync_connections SET next_seq = next_seq + 1, last_used_ts = ?"
                " WHERE user_id = ? AND device_id = ? AND conn_id = ? AND nonce = ?"
                " RETURNING next_seq",
                now_ms,
                *key,
                nonce,
            )
            if row is None:
                return None
            seq = int(row[0]) - 1
            if base_seq is not None:
                await txn.execute(
                    "DELETE FROM sliding_sync_snapshots WHERE user_id = ? AND device_id = ?"
                    " AND conn_id = ? AND nonce = ? AND seq < ?",
                    *key,
                    nonce,
                    base_seq,
                )
            await txn.execute(
                "INSERT INTO sliding_sync_snapshots"
                " (user_id, device_id, conn_id, nonce, seq, data) VALUES (?, ?, ?, ?, ?, ?)",
                *key,
                nonce,
                seq,
                data,
            )
            kept = [
                int(r[0])
                for r in await txn.fetch_all(
                    "SELECT seq FROM sliding_sync_snapshots WHERE user_id = ? AND device_id = ?"
                    " AND conn_id = ? AND nonce = ? ORDER BY seq",
                    *key,
                    nonce,
                )
            ]
            victims = [s for s in kept if s != base_seq][: max(0, len(kept) - max_snapshots)]
            for victim in victims:
                await txn.execute(
                    "DELETE FROM sliding_sync_snapshots WHERE user_id = ? AND device_id = ?"
                    " AND conn_id = ? AND nonce = ? AND seq = ?",
                    *key,
                    nonce,
                    victim,
                )
            return seq

    async def forget_device(self, user_id: str, device_id: str) -> None:
        async with self._db.transaction() as txn:
            for table in ("sliding_sync_snapshots", "sliding_sync_connections"):
                await txn.execute(
                    f"DELETE FROM {table} WHERE user_id = ? AND device_id = ?", user_id, device_id
                )

    async def count(self) -> int:
        return int(await self._db.fetch_val("SELECT COUNT(*) FROM sliding_sync_connections"))

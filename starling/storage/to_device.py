"""To-device messages: each device's inbox, the transaction IDs already served, and which
messages a limited /sync response actually carried.

A message is one row per recipient device, at the stream position of the request that sent
it (a request sends at most one message per device, so a device's messages are totally
ordered by position). Rows stay until a /sync acknowledges them.
"""

from __future__ import annotations

from collections.abc import Sequence

from starling.storage.database import Database, Transaction

InboxRow = tuple[str, str, str]  # (user_id, device_id, message_json)


class ToDeviceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def devices_of(self, user_ids: Sequence[str]) -> dict[str, set[str]]:
        """The existing device IDs of each of these users."""
        sql = self._db.sql
        rows = await self._db.fetch_all(
            f"SELECT user_id, device_id FROM devices WHERE {sql.in_array('user_id')}",
            sql.array(user_ids),
        )
        out: dict[str, set[str]] = {}
        for r in rows:
            out.setdefault(r[0], set()).add(r[1])
        return out

    @staticmethod
    async def claim_txn(
        txn: Transaction, user_id: str, device_id: str, txn_id: str, now_ms: int
    ) -> bool:
        """Record the transaction ID; False if it was already used (the request is a
        retry and must not deliver again)."""
        inserted = await txn.execute(
            "INSERT INTO to_device_txns (user_id, device_id, txn_id, added_ts)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, device_id, txn_id) DO NOTHING",
            user_id,
            device_id,
            txn_id,
            now_ms,
        )
        return bool(inserted)

    @staticmethod
    async def prune_txns(txn: Transaction, older_than_ms: int) -> None:
        await txn.execute("DELETE FROM to_device_txns WHERE added_ts < ?", older_than_ms)

    @staticmethod
    async def inbox_sizes(
        txn: Transaction, recipients: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        """Pending messages per (user, device), for the recipients that have any."""
        if not recipients:
            return {}
        sql = txn.sql
        users = sorted({u for u, _ in recipients})
        rows = await txn.fetch_all(
            "SELECT user_id, device_id, COUNT(*) FROM to_device_inbox"
            f" WHERE {sql.in_array('user_id')} GROUP BY user_id, device_id",
            sql.array(users),
        )
        wanted = set(recipients)
        return {(r[0], r[1]): int(r[2]) for r in rows if (r[0], r[1]) in wanted}

    @staticmethod
    async def pending_from(
        txn: Transaction, sender: str, recipients: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        """Pending messages from `sender` per (user, device), for the recipients that
        have any."""
        if not recipients:
            return {}
        sql = txn.sql
        users = sorted({u for u, _ in recipients})
        rows = await txn.fetch_all(
            "SELECT user_id, device_id, COUNT(*) FROM to_device_inbox"
            f" WHERE sender = ? AND {sql.in_array('user_id')} GROUP BY user_id, device_id",
            sender,
            sql.array(users),
        )
        wanted = set(recipients)
        return {(r[0], r[1]): int(r[2]) for r in rows if (r[0], r[1]) in wanted}

    @staticmethod
    async def add_messages(
        txn: Transaction, stream_id: int, rows: Sequence[InboxRow], sender: str = ""
    ) -> None:
        if not rows:
            return
        await txn.executemany(
            "INSERT INTO to_device_inbox (user_id, device_id, stream_id, message_json, sender)"
            " VALUES (?, ?, ?, ?, ?)",
            [(u, d, stream_id, m, sender) for u, d, m in rows],
        )

    async def acknowledge(self, user_id: str, device_id: str, token_position: int) -> int:
        """The device has the response whose token held ``token_position``: delete what
        that response (and every earlier one) carried. Returns the position acknowledged."""
        async with self._db.transaction() as txn:
            acked = await self._delivered_upto(txn, user_id, device_id, token_position)
            await txn.execute(
                "DELETE FROM to_device_inbox WHERE user_id = ? AND device_id = ?"
                " AND stream_id <= ?",
                user_id,
                device_id,
                acked,
            )
            # Records of older tokens are done with; this token's stays, for a retry of
            # the same request whose response was lost.
            await txn.execute(
                "DELETE FROM to_device_deliveries WHERE user_id = ? AND device_id = ?"
                " AND token_position < ?",
                user_id,
                device_id,
                token_position,
            )
        return acked

    async def delivered_upto(self, user_id: str, device_id: str, token_position: int) -> int:
        """What the response whose token held ``token_position`` carried up to (read
        only: nothing is acknowledged; the WebSocket's server-chained polls)."""
        return await self._delivered_upto(self._db, user_id, device_id, token_position)

    @staticmethod
    async def _delivered_upto(
        db: Transaction | Database, user_id: str, device_id: str, token_position: int
    ) -> int:
        delivered = await db.fetch_val(
            "SELECT delivered_upto FROM to_device_deliveries"
            " WHERE user_id = ? AND device_id = ? AND token_position = ?",
            user_id,
            device_id,
            token_position,
        )
        return token_position if delivered is None else int(delivered)

    async def get_messages(
        self, user_id: str, device_id: str, after: int, upto: int, limit: int
    ) -> list[tuple[int, str]]:
        """``(stream_id, message_json)`` in (after, upto], oldest first, at most ``limit``."""
        rows = await self._db.fetch_all(
            "SELECT stream_id, message_json FROM to_device_inbox"
            " WHERE user_id = ? AND device_id = ? AND stream_id > ? AND stream_id <= ?"
            " ORDER BY stream_id LIMIT ?",
            user_id,
            device_id,
            after,
            upto,
            limit,
        )
        return [(int(r[0]), r[1]) for r in rows]

    @staticmethod
    async def record_partial_delivery(
        txn: Transaction, user_id: str, device_id: str, token_position: int, delivered_upto: int
    ) -> None:
        await txn.execute(
            "INSERT INTO to_device_deliveries"
            " (user_id, device_id, token_position, delivered_upto) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id, device_id, token_position)"
            " DO UPDATE SET delivered_upto = excluded.delivered_upto",
            user_id,
            device_id,
            token_position,
            delivered_upto,
        )

    @staticmethod
    async def delete_inboxes(txn: Transaction, user_id: str, device_ids: Sequence[str]) -> None:
        """Deleted devices: drop their pending messages and delivery records."""
        if not device_ids:
            return
        sql = txn.sql
        for table in ("to_device_inbox", "to_device_deliveries"):
            await txn.execute(
                f"DELETE FROM {table} WHERE user_id = ? AND {sql.in_array('device_id')}",
                user_id,
                sql.array(device_ids),
            )

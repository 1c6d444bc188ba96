"""Device lists across servers (Server-Server API > Device Management).

Inbound: the cache of other servers' users' devices and cross-signing keys, for the users
sharing a room with one of ours (starling.e2ee.remote_device_lists decides what goes in).
Outbound: the head of each local user's `m.device_list_update` chain.

Key objects are stored as the canonical JSON their server sent, so what /keys/query
hands out is byte-for-byte what was signed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from starling.storage.database import Database, Transaction


@dataclass(frozen=True, slots=True)
class RemoteListState:
    stream_id: int
    stale: bool


@dataclass(frozen=True, slots=True)
class RemoteDevice:
    user_id: str
    device_id: str
    display_name: str | None
    key_json: str | None


class RemoteDeviceListStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- which users are tracked, and how fresh

    async def states(self, user_ids: Iterable[str]) -> dict[str, RemoteListState]:
        ids = sorted(set(user_ids))
        if not ids:
            return {}
        sql = self._db.sql
        rows = await self._db.fetch_all(
            "SELECT user_id, stream_id, stale FROM remote_device_list_users"
            f" WHERE {sql.in_array('user_id')}",
            sql.array(ids),
        )
        return {r[0]: RemoteListState(int(r[1]), bool(r[2])) for r in rows}

    async def state(self, user_id: str) -> RemoteListState | None:
        return (await self.states([user_id])).get(user_id)

    async def stale_users(self, limit: int) -> list[str]:
        rows = await self._db.fetch_all(
            "SELECT user_id FROM remote_device_list_users WHERE stale ORDER BY updated_ts LIMIT ?",
            limit,
        )
        return [r[0] for r in rows]

    async def track(self, user_id: str, now_ms: int) -> bool:
        """Start tracking ``user_id`` (stale: nothing is cached yet). False if already
        tracked."""
        changed = await self._db.execute(
            "INSERT INTO remote_device_list_users (user_id, stream_id, stale, updated_ts)"
            " VALUES (?, 0, TRUE, ?) ON CONFLICT (user_id) DO NOTHING",
            user_id,
            now_ms,
        )
        return changed > 0

    async def mark_stale(self, user_id: str, now_ms: int) -> None:
        await self._db.execute(
            "UPDATE remote_device_list_users SET stale = TRUE, updated_ts = ? WHERE user_id = ?",
            now_ms,
            user_id,
        )

    async def forget(self, user_ids: Sequence[str]) -> None:
        """Stop tracking these users: their cache is dropped."""
        if not user_ids:
            return
        async with self._db.transaction() as txn:
            sql = txn.sql
            ids = sql.array(sorted(set(user_ids)))
            for table in (
                "remote_device_list_users",
                "remote_devices",
                "remote_cross_signing_keys",
            ):
                await txn.execute(f"DELETE FROM {table} WHERE {sql.in_array('user_id')}", ids)

    # -- applying updates

    async def apply_update(
        self,
        user_id: str,
        expected_stream_id: int,
        stream_id: int,
        device_id: str,
        deleted: bool,
        display_name: str | None,
        key_json: str | None,
        now_ms: int,
    ) -> bool:
        """One `m.device_list_update` that follows on from ``expected_stream_id``: the
        device is replaced (or deleted) and the user's position moves to ``stream_id``.
        False (nothing written) if the user is no longer tracked and fresh at that
        position."""
        async with self._db.transaction() as txn:
            moved = await txn.execute(
                "UPDATE remote_device_list_users SET stream_id = ?, updated_ts = ?"
                " WHERE user_id = ? AND stream_id = ? AND NOT stale",
                stream_id,
                now_ms,
                user_id,
                expected_stream_id,
            )
            if not moved:
                return False
            if deleted:
                await txn.execute(
                    "DELETE FROM remote_devices WHERE user_id = ? AND device_id = ?",
                    user_id,
                    device_id,
                )
            else:
                await txn.execute(
                    "INSERT INTO remote_devices (user_id, device_id, display_name, key_json)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, device_id) DO UPDATE SET"
                    " display_name = excluded.display_name, key_json = excluded.key_json",
                    user_id,
                    device_id,
                    display_name,
                    key_json,
                )
        return True

    async def replace(
        self,
        user_id: str,
        stream_id: int,
        devices: Sequence[RemoteDevice],
        cross_signing: Mapping[str, str],
        now_ms: int,
    ) -> bool:
        """A whole snapshot (a /user/devices answer): the user's devices and cross-signing
        keys are replaced, and the cache is fresh at ``stream_id``. False (nothing
        written) if the user is no longer tracked."""
        async with self._db.transaction() as txn:
            moved = await txn.execute(
                "UPDATE remote_device_list_users SET stream_id = ?, stale = FALSE,"
                " updated_ts = ? WHERE user_id = ?",
                stream_id,
                now_ms,
                user_id,
            )
            if not moved:
                return False
            await txn.execute("DELETE FROM remote_devices WHERE user_id = ?", user_id)
            await txn.executemany(
                "INSERT INTO remote_devices (user_id, device_id, display_name, key_json)"
                " VALUES (?, ?, ?, ?)",
                [(user_id, d.device_id, d.display_name, d.key_json) for d in devices],
            )
            await txn.execute("DELETE FROM remote_cross_signing_keys WHERE user_id = ?", user_id)
            await self._insert_cross_signing(txn, user_id, cross_signing)
        return True

    async def set_cross_signing(self, user_id: str, keys: Mapping[str, str]) -> bool:
        """An `m.signing_key_update`: replace the user's keys of these types. False if the
        user is not tracked."""
        async with self._db.transaction() as txn:
            tracked = await txn.fetch_val(
                f"SELECT 1 FROM remote_device_list_users WHERE user_id = ?{txn.sql.for_update}",
                user_id,
            )
            if tracked is None:
                return False
            await self._insert_cross_signing(txn, user_id, keys)
        return True

    @staticmethod
    async def _insert_cross_signing(
        txn: Transaction, user_id: str, keys: Mapping[str, str]
    ) -> None:
        await txn.executemany(
            "INSERT INTO remote_cross_signing_keys (user_id, key_type, key_json)"
            " VALUES (?, ?, ?) ON CONFLICT (user_id, key_type)"
            " DO UPDATE SET key_json = excluded.key_json",
            [(user_id, t, js) for t, js in sorted(keys.items())],
        )

    # -- reading the cache

    async def devices(self, user_ids: Iterable[str]) -> list[RemoteDevice]:
        ids = sorted(set(user_ids))
        if not ids:
            return []
        sql = self._db.sql
        rows = await self._db.fetch_all(
            "SELECT user_id, device_id, display_name, key_json FROM remote_devices"
            f" WHERE {sql.in_array('user_id')} ORDER BY user_id, device_id",
            sql.array(ids),
        )
        return [RemoteDevice(r[0], r[1], r[2], r[3]) for r in rows]

    async def cross_signing(self, user_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        """``user_id -> key_type -> key_json``."""
        ids = sorted(set(user_ids))
        if not ids:
            return {}
        sql = self._db.sql
        rows = await self._db.fetch_all(
            "SELECT user_id, key_type, key_json FROM remote_cross_signing_keys"
            f" WHERE {sql.in_array('user_id')}",
            sql.array(ids),
        )
        out: dict[str, dict[str, str]] = {}
        for r in rows:
            out.setdefault(r[0], {})[r[1]] = r[2]
        return out

    # -- outbound: the head of each local user's update chain

    async def outbound_head(self, user_id: str) -> int | None:
        value = await self._db.fetch_val(
            "SELECT stream_id FROM device_list_outbound_heads WHERE user_id = ?", user_id
        )
        return None if value is None else int(value)

    async def set_outbound_head(self, user_id: str, stream_id: int) -> None:
        await self._db.execute(
            "INSERT INTO device_list_outbound_heads (user_id, stream_id) VALUES (?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id",
            user_id,
            stream_id,
        )


class DeviceListOutboxStore:
    """Outbound device-list EDUs kept until delivered (per destination, in stream
    order)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, rows: Sequence[tuple[str, int, str, str]]) -> None:
        """``(destination, stream_id, edu_type, edu_json)`` rows."""
        if not rows:
            return
        async with self._db.transaction() as txn:
            await txn.executemany(
                "INSERT INTO device_list_outbox (destination, stream_id, edu_type, edu_json)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (destination, stream_id) DO NOTHING",
                rows,
            )

    async def destinations_pending(self) -> list[str]:
        rows = await self._db.fetch_all("SELECT DISTINCT destination FROM device_list_outbox")
        return sorted(r[0] for r in rows)

    async def pending(self, destination: str, limit: int) -> list[tuple[int, str, str]]:
        """The oldest ``(stream_id, edu_type, edu_json)`` owed to ``destination``."""
        rows = await self._db.fetch_all(
            "SELECT stream_id, edu_type, edu_json FROM device_list_outbox"
            " WHERE destination = ? ORDER BY stream_id LIMIT ?",
            destination,
            limit,
        )
        return [(int(r[0]), r[1], r[2]) for r in rows]

    async def delete_delivered(self, destination: str, upto: int) -> None:
        await self._db.execute(
            "DELETE FROM device_list_outbox WHERE destination = ? AND stream_id <= ?",
            destination,
            upto,
        )

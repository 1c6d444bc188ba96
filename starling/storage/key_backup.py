"""Server-side key backups: backup versions (algorithm, auth_data, etag) and the encrypted
room keys stored in them.

Versions are numbered per user and never reused: deleting a version marks it deleted and
removes its keys. Writes that change keys lock the version row (``FOR UPDATE``) so the
etag moves once per change, also under concurrent uploads on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starling.storage.database import (
    Database,
    Row,
    StorageError,
    Transaction,
    UniqueViolation,
)


class BackupVersionGone(StorageError):
    """The version is not live (deleted meanwhile); the write rolled back."""


class BackupVersionSuperseded(StorageError):
    """A newer version became the current one meanwhile; the write rolled back."""

    def __init__(self, current: int | None) -> None:
        super().__init__(f"backup version superseded by {current}")
        self.current = current


# (the stored key or an earlier one of the same upload, the new key) -> keep the new one
KeepsNew = Callable[["RoomKey | None", "RoomKey"], bool]


@dataclass(frozen=True, slots=True)
class BackupVersion:
    version: int
    algorithm: str
    auth_data: str  # canonical JSON
    etag: int


@dataclass(frozen=True, slots=True)
class RoomKey:
    room_id: str
    session_id: str
    first_message_index: int
    forwarded_count: int
    is_verified: bool
    session_data: str  # canonical JSON


def _room_key(row: Row) -> RoomKey:
    return RoomKey(row[0], row[1], int(row[2]), int(row[3]), bool(row[4]), row[5])


_KEY_COLUMNS = (
    "room_id, session_id, first_message_index, forwarded_count, is_verified, session_data"
)


class KeyBackupStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_version(self, user_id: str, algorithm: str, auth_data: str) -> int:
        """A new backup version, which becomes the current one."""
        for attempt in range(5):
            try:
                async with self._db.transaction() as txn:
                    # Lock the current version first: a key upload holding it finishes
                    # before the new version exists, and one starting later sees it.
                    await self.current_version_in(txn, user_id)
                    last = await txn.fetch_val(
                        "SELECT MAX(version) FROM e2e_room_keys_versions WHERE user_id = ?",
                        user_id,
                    )
                    version = (int(last) if last is not None else 0) + 1
                    await txn.execute(
                        "INSERT INTO e2e_room_keys_versions"
                        " (user_id, version, algorithm, auth_data, etag, deleted)"
                        " VALUES (?, ?, ?, ?, 0, FALSE)",
                        user_id,
                        version,
                        algorithm,
                        auth_data,
                    )
                return version
            except UniqueViolation:
                # A concurrent create took the number (PostgreSQL); take the next one.
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    async def get_version(self, user_id: str, version: int | None = None) -> BackupVersion | None:
        """The given live version, or the current (latest live) one."""
        if version is None:
            row = await self._db.fetch_one(
                "SELECT version, algorithm, auth_data, etag FROM e2e_room_keys_versions"
                " WHERE user_id = ? AND NOT deleted ORDER BY version DESC LIMIT 1",
                user_id,
            )
        else:
            row = await self._db.fetch_one(
                "SELECT version, algorithm, auth_data, etag FROM e2e_room_keys_versions"
                " WHERE user_id = ? AND version = ? AND NOT deleted",
                user_id,
                version,
            )
        if row is None:
            return None
        return BackupVersion(int(row[0]), row[1], row[2], int(row[3]))

    async def update_auth_data(self, user_id: str, version: int, auth_data: str) -> bool:
        return bool(
            await self._db.execute(
                "UPDATE e2e_room_keys_versions SET auth_data = ?"
                " WHERE user_id = ? AND version = ? AND NOT deleted",
                auth_data,
                user_id,
                version,
            )
        )

    async def delete_version(self, user_id: str, version: int) -> bool:
        async with self._db.transaction() as txn:
            marked = await txn.execute(
                "UPDATE e2e_room_keys_versions SET deleted = TRUE"
                " WHERE user_id = ? AND version = ? AND NOT deleted",
                user_id,
                version,
            )
            if marked:
                await txn.execute(
                    "DELETE FROM e2e_room_keys WHERE user_id = ? AND version = ?",
                    user_id,
                    version,
                )
        return bool(marked)

    async def count_keys(self, user_id: str, version: int) -> int:
        return int(
            await self._db.fetch_val(
                "SELECT COUNT(*) FROM e2e_room_keys WHERE user_id = ? AND version = ?",
                user_id,
                version,
            )
        )

    async def get_keys(
        self,
        user_id: str,
        version: int,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> list[RoomKey]:
        sql = f"SELECT {_KEY_COLUMNS} FROM e2e_room_keys WHERE user_id = ? AND version = ?"
        args: list[object] = [user_id, version]
        if room_id is not None:
            sql += " AND room_id = ?"
            args.append(room_id)
            if session_id is not None:
                sql += " AND session_id = ?"
                args.append(session_id)
        rows = await self._db.fetch_all(sql + " ORDER BY room_id, session_id", *args)
        return [_room_key(r) for r in rows]

    async def put_keys(
        self, user_id: str, version: int, keys: Sequence[RoomKey], keeps_new: KeepsNew
    ) -> tuple[int, int]:
        """In one transaction: store the keys ``keeps_new`` prefers over the stored ones
        (and over earlier ones of the same upload) in the current version ``version``,
        moving its etag once if anything changed. Returns (etag, key count). Raises
        BackupVersionGone / BackupVersionSuperseded (nothing written)."""
        async with self._db.transaction() as txn:
            etag = await self.lock_version(txn, user_id, version)
            if etag is None:  # deleted meanwhile
                raise BackupVersionGone(f"backup version {version} is gone")
            # A new version created since the caller's check is the current one now: keys
            # must not land in the old one (create_version waits for this lock).
            latest = await self.current_version_in(txn, user_id)
            if latest != version:
                raise BackupVersionSuperseded(latest)
            current = await self.get_keys_for_rooms(
                txn, user_id, version, [k.room_id for k in keys]
            )
            winners: dict[tuple[str, str], RoomKey] = {}
            for key in keys:
                slot = (key.room_id, key.session_id)
                if keeps_new(winners.get(slot) or current.get(slot), key):
                    winners[slot] = key
            changed = [k for slot, k in winners.items() if current.get(slot) != k]
            if changed:
                await self.upsert_keys(txn, user_id, version, changed)
                await self.bump_etag(txn, user_id, version)
                etag += 1
            count = await self.count_keys_in(txn, user_id, version)
        return etag, count

    async def delete_keys_of_version(
        self,
        user_id: str,
        version: int,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> tuple[int, int]:
        """In one transaction: delete the version's keys (of a room, of a session),
        moving its etag if any went. Returns (etag, key count); raises BackupVersionGone."""
        async with self._db.transaction() as txn:
            etag = await self.lock_version(txn, user_id, version)
            if etag is None:
                raise BackupVersionGone(f"backup version {version} is gone")
            if await self.delete_keys(txn, user_id, version, room_id, session_id):
                await self.bump_etag(txn, user_id, version)
                etag += 1
            count = await self.count_keys_in(txn, user_id, version)
        return etag, count

    @staticmethod
    async def current_version_in(txn: Transaction, user_id: str) -> int | None:
        """The current (latest live) version number, its row locked (PostgreSQL)."""
        version = await txn.fetch_val(
            "SELECT version FROM e2e_room_keys_versions WHERE user_id = ? AND NOT deleted"
            f" ORDER BY version DESC LIMIT 1{txn.sql.for_update}",
            user_id,
        )
        return None if version is None else int(version)

    @staticmethod
    async def lock_version(txn: Transaction, user_id: str, version: int) -> int | None:
        """Lock the live version's row for a key write; its etag, or None if not live."""
        etag = await txn.fetch_val(
            "SELECT etag FROM e2e_room_keys_versions"
            f" WHERE user_id = ? AND version = ? AND NOT deleted{txn.sql.for_update}",
            user_id,
            version,
        )
        return None if etag is None else int(etag)

    @staticmethod
    async def get_keys_for_rooms(
        txn: Transaction, user_id: str, version: int, room_ids: Sequence[str]
    ) -> dict[tuple[str, str], RoomKey]:
        rows = await txn.fetch_all(
            f"SELECT {_KEY_COLUMNS} FROM e2e_room_keys WHERE user_id = ? AND version = ?"
            f" AND {txn.sql.in_array('room_id')}",
            user_id,
            version,
            txn.sql.array(sorted(set(room_ids))),
        )
        keys = [_room_key(r) for r in rows]
        return {(k.room_id, k.session_id): k for k in keys}

    @staticmethod
    async def upsert_keys(
        txn: Transaction, user_id: str, version: int, keys: Sequence[RoomKey]
    ) -> None:
        if not keys:
            return
        await txn.executemany(
            "INSERT INTO e2e_room_keys (user_id, version, room_id, session_id,"
            " first_message_index, forwarded_count, is_verified, session_data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET"
            " first_message_index = excluded.first_message_index,"
            " forwarded_count = excluded.forwarded_count,"
            " is_verified = excluded.is_verified, session_data = excluded.session_data",
            [
                (
                    user_id,
                    version,
                    k.room_id,
                    k.session_id,
                    k.first_message_index,
                    k.forwarded_count,
                    k.is_verified,
                    k.session_data,
                )
                for k in keys
            ],
        )

    @staticmethod
    async def delete_keys(
        txn: Transaction,
        user_id: str,
        version: int,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> int:
        sql = "DELETE FROM e2e_room_keys WHERE user_id = ? AND version = ?"
        args: list[object] = [user_id, version]
        if room_id is not None:
            sql += " AND room_id = ?"
            args.append(room_id)
            if session_id is not None:
                sql += " AND session_id = ?"
                args.append(session_id)
        return await txn.execute(sql, *args)

    @staticmethod
    async def bump_etag(txn: Transaction, user_id: str, version: int) -> None:
        await txn.execute(
            "UPDATE e2e_room_keys_versions SET etag = etag + 1 WHERE user_id = ? AND version = ?",
            user_id,
            version,
        )

    @staticmethod
    async def count_keys_in(txn: Transaction, user_id: str, version: int) -> int:
        return int(
            await txn.fetch_val(
                "SELECT COUNT(*) FROM e2e_room_keys WHERE user_id = ? AND version = ?",
                user_id,
                version,
            )
        )

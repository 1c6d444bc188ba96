"""The device_lists stream: who changed devices or cross-signing keys, and who joined or
left rooms, at which stream position.

One row per change, not one per observer: "who should hear about it" is worked out at
read time from the reader's rooms, so a user in many big rooms costs one row per change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from starling.storage.database import Database, Transaction


class DeviceListStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    @staticmethod
    async def add_changes(
        txn: Transaction, stream_id: int, user_ids: Sequence[str], observer: str | None
    ) -> None:
        await txn.executemany(
            "INSERT INTO device_list_changes (stream_id, user_id, observer) VALUES (?, ?, ?)",
            [(stream_id, u, observer) for u in user_ids],
        )

    @staticmethod
    async def add_memberships(
        txn: Transaction,
        stream_id: int,
        rows: Sequence[tuple[str, str, bool]],
        invites: Sequence[tuple[str, str]] = (),
    ) -> None:
        """``(room_id, user_id, joined)`` transitions, and ``(room_id, user_id)`` invites."""
        await txn.executemany(
            "INSERT INTO device_list_memberships (stream_id, room_id, user_id, joined, invited)"
            " VALUES (?, ?, ?, ?, ?)",
            [(stream_id, r, u, j, False) for r, u, j in rows]
            + [(stream_id, r, u, False, True) for r, u in invites],
        )

    async def changed_users(
        self, observer: str, candidates: Iterable[str], since: int, upto: int
    ) -> set[str]:
        """Which of ``candidates`` changed in (since, upto] in a way ``observer`` may see."""
        ids = sorted(set(candidates))
        if not ids or upto <= since:
            return set()
        sql = self._db.sql
        rows = await self._db.fetch_all(
            "SELECT DISTINCT user_id FROM device_list_changes"
            " WHERE stream_id > ? AND stream_id <= ? AND (observer IS NULL OR observer = ?)"
            f" AND {sql.in_array('user_id')}",
            since,
            upto,
            observer,
            sql.array(ids),
        )
        return {r[0] for r in rows}

    async def membership_changes(
        self, user_id: str, room_ids: Iterable[str], since: int, upto: int
    ) -> list[tuple[str, str, bool]]:
        """``(room_id, user_id, joined)`` in (since, upto], oldest first, for the user's own
        transitions and every transition in ``room_ids`` (invites left out)."""
        joins, _ = await self.membership_and_invite_changes(user_id, room_ids, since, upto)
        return joins

    async def membership_and_invite_changes(
        self, user_id: str, room_ids: Iterable[str], since: int, upto: int
    ) -> tuple[list[tuple[str, str, bool]], list[tuple[str, str]]]:
        """`membership_changes`, and the ``(room_id, user_id)`` invites into ``room_ids``
        in (since, upto]."""
        if upto <= since:
            return [], []
        sql = self._db.sql
        rows = await self._db.fetch_all(
            "SELECT room_id, user_id, joined, invited FROM device_list_memberships"
            " WHERE stream_id > ? AND stream_id <= ?"
            f" AND (user_id = ? OR {sql.in_array('room_id')}) ORDER BY stream_id",
            since,
            upto,
            user_id,
            sql.array(sorted(set(room_ids))),
        )
        joins = [(r[0], r[1], bool(r[2])) for r in rows if not r[3]]
        invites = [(r[0], r[1]) for r in rows if r[3]]
        return joins, invites

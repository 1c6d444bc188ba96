"""The user directory's query: users found by user ID and display name words.

The words of every local profile are indexed by migration 0010 (an FTS5 table kept
current by triggers on ``profiles`` on SQLite; a GIN expression index on ``profiles`` on
PostgreSQL), so a profile change is searchable as soon as it is committed; other
servers' users, as their member events show them, the same way in
``user_directory_remote`` (migration 0043). Who may be found is decided in the same
statement with joins over ``room_memberships``: users joined to a room the searcher is
joined to, or to one of the given public rooms. Two statements per search (local and
remote users), whatever the number of users.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starling.storage.database import Database


@dataclass(frozen=True, slots=True)
class DirectoryUser:
    user_id: str
    displayname: str | None
    avatar_url: str | None


class UserDirectoryStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def search(
        self,
        words: Sequence[str],
        limit: int,
        *,
        searcher: str,
        public_rooms: Sequence[str] | None,
    ) -> list[DirectoryUser]:
        """Up to `limit` users matching every word as a prefix, best first (then those
        with a display name and an avatar, then by user ID): active local users, and
        other servers' users joined to a room this server is in.

        `public_rooms` None: any of them but the searcher may be found. Otherwise only
        users sharing a joined room with `searcher` (the searcher not among them), or
        joined to one of `public_rooms` (the searcher too), as Synapse's
        users_who_share_private_rooms and users_in_public_rooms. A room this server
        has left shows none of its remote members.
        """
        if not words:
            return []
        found = [
            *await self._search(words, limit, searcher, public_rooms, remote=False),
            *await self._search(words, limit, searcher, public_rooms, remote=True),
        ]
        found.sort(
            key=lambda r: (-r[0], r[1].displayname is None, r[1].avatar_url is None, r[1].user_id)
        )
        return [user for _, user in found[:limit]]

    async def _search(
        self,
        words: Sequence[str],
        limit: int,
        searcher: str,
        public_rooms: Sequence[str] | None,
        *,
        remote: bool,
    ) -> list[tuple[float, DirectoryUser]]:
        sql = self._db.sql
        source, score = sql.user_directory_source(remote=remote)
        args: list[Any] = [sql.prefix_query(words)]
        if remote:
            # Joined to a room we are still in: one with a local member joined.
            where = (
                " WHERE p.user_id <> ? AND EXISTS (SELECT 1 FROM room_memberships m"
                " WHERE m.user_id = p.user_id AND m.membership = 'join'"
                " AND EXISTS (SELECT 1 FROM room_memberships l"
                "   JOIN users lu ON lu.user_id = l.user_id"
                "   WHERE l.room_id = m.room_id AND l.membership = 'join')"
            )
            args.append(searcher)
            if public_rooms is not None:
                where += (
                    " AND (m.room_id IN (SELECT mine.room_id FROM room_memberships mine"
                    "   WHERE mine.user_id = ? AND mine.membership = 'join')"
                    f" OR {sql.in_array('m.room_id')})"
                )
                args += [searcher, sql.array(list(public_rooms))]
            where += ")"
        else:
            source += " JOIN users u ON u.user_id = p.user_id"
            where = " WHERE NOT u.deactivated AND NOT u.is_guest"
            if public_rooms is None:
                where += " AND p.user_id <> ?"
                args.append(searcher)
            else:
                where += (
                    " AND EXISTS (SELECT 1 FROM room_memberships m"
                    " WHERE m.user_id = p.user_id AND m.membership = 'join' AND ("
                    " (m.user_id <> ? AND m.room_id IN (SELECT mine.room_id FROM"
                    "   room_memberships mine WHERE mine.user_id = ? AND mine.membership = 'join'))"
                    f" OR {sql.in_array('m.room_id')}))"
                )
                args += [searcher, searcher, sql.array(list(public_rooms))]
        rows = await self._db.fetch_all(
            f"SELECT p.user_id, p.displayname, p.avatar_url, {score} FROM {source}{where}"
            f" ORDER BY {score} DESC, p.displayname IS NULL, p.avatar_url IS NULL, p.user_id"
            " LIMIT ?",
            *args,
            limit,
        )
        return [(float(r[3]), DirectoryUser(r[0], r[1], r[2])) for r in rows]

    async def set_remote_profiles(
        self,
        profiles: Sequence[tuple[str, str | None, str | None]],
        user_ids_only: Sequence[str] = (),
    ) -> None:
        """Other servers' users: (user ID, display name, avatar URL) from their member
        events in public rooms, and users seen only in private rooms (found by user ID;
        a profile already known is kept). One transaction (a room joined over federation
        brings all its members at once)."""
        if not profiles and not user_ids_only:
            return
        async with self._db.transaction() as txn:
            if profiles:
                await txn.executemany(
                    "INSERT INTO user_directory_remote (user_id, displayname, avatar_url)"
                    " VALUES (?, ?, ?) ON CONFLICT (user_id) DO UPDATE"
                    " SET displayname = excluded.displayname, avatar_url = excluded.avatar_url",
                    profiles,
                )
            if user_ids_only:
                await txn.executemany(
                    "INSERT INTO user_directory_remote (user_id) VALUES (?)"
                    " ON CONFLICT (user_id) DO NOTHING",
                    [(u,) for u in user_ids_only],
                )

    async def public_room_candidates(
        self, room_ids: Sequence[str] | None = None
    ) -> list[tuple[str, str, Any]]:
        """(room_id, event type, event JSON) of the current join rules and history
        visibility of the given rooms (None: every room), to decide which are public."""
        sql = self._db.sql
        only = "" if room_ids is None else f" AND {sql.in_array('cs.room_id')}"
        rows = await self._db.fetch_all(
            "SELECT cs.room_id, sk.type, e.json FROM current_state cs"
            " JOIN state_keys sk ON sk.key_nid = cs.key_nid"
            " JOIN events e ON e.event_nid = cs.event_nid"
            " WHERE sk.state_key = ''"
            f" AND sk.type IN ('m.room.join_rules', 'm.room.history_visibility'){only}",
            *([] if room_ids is None else [sql.array(list(room_ids))]),
        )
        return [(r[0], r[1], r[2]) for r in rows]

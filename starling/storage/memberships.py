"""Current room memberships, denormalised from room state for fast lookups.

"Which rooms is this user in" and "who is joined to this room" are asked on every sync and
every sent event, so both are cached; the cache is updated after the commit that changes
a membership (only this process writes memberships).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import orjson

from starling.storage.change_cache import StreamChangeCache
from starling.storage.database import Database, Transaction


@dataclass(frozen=True, slots=True)
class Membership:
    room_id: str
    user_id: str
    membership: str
    event_id: str
    stream_ordering: int | None


@dataclass(frozen=True, slots=True)
class MembershipChange:
    """A change of a user's member event in a room's current state."""

    room_id: str
    event_id: str | None  # the member event now in the state (None: none any more)
    prev_event_id: str | None  # the one it replaced (None: the user had none)
    stream_ordering: int  # the events-stream position of the change


@dataclass(slots=True)
class RoomMemberSummary:
    joined: int
    invited: int
    # (user_id, membership), joined first, then invited, then departed; earliest first.
    members: list[tuple[str, str]]


class MembershipStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._joined: dict[str, frozenset[str]] = {}
        # Bumped by every invalidation: a read that began before a membership commit must
        # not put its (stale) answer into the cache after that commit's invalidation.
        self._joined_generation = 0
        self._user_rooms: dict[str, dict[str, Membership]] = {}
        self._member_changes: StreamChangeCache[str] | None = None
        # Set with workers (starling/cluster): tells the other processes (rooms, users).
        self.on_invalidate: Callable[[list[str], list[str]], None] | None = None

    def invalidate_all(self) -> None:
        """Forget every cached membership (news from other processes lost)."""
        self._joined_generation += 1
        self._joined.clear()
        self._user_rooms.clear()

    def invalidate_here(self, room_ids: Iterable[str], user_ids: Iterable[str]) -> None:
        """Forget the cached members of rooms and rooms of users (another process
        changed them, or may have)."""
        self._joined_generation += 1
        for room_id in room_ids:
            self._joined.pop(room_id, None)
        for user_id in user_ids:
            self._user_rooms.pop(user_id, None)

    def use_member_changes(self, changes: StreamChangeCache[str]) -> None:
        """Where the current-state-delta stream's membership changes are remembered
        (StateStore.member_changes): a user without one in a range needs no query."""
        self._member_changes = changes

    async def record(self, txn: Transaction, rows: Sequence[Membership]) -> None:
        if not rows:
            return
        await txn.executemany(
            "INSERT INTO room_memberships (room_id, user_id, membership, event_id,"
            " stream_ordering) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership,"
            " event_id = excluded.event_id, stream_ordering = excluded.stream_ordering",
            [(m.room_id, m.user_id, m.membership, m.event_id, m.stream_ordering) for m in rows],
        )
        if any(m.membership == "join" for m in rows):
            await txn.executemany(
                "DELETE FROM room_forgotten WHERE user_id = ? AND room_id = ?",
                [(m.user_id, m.room_id) for m in rows if m.membership == "join"],
            )

        def invalidate() -> None:
            self._joined_generation += 1
            for m in rows:
                self._joined.pop(m.room_id, None)
                self._user_rooms.pop(m.user_id, None)
            if self.on_invalidate is not None:
                self.on_invalidate(
                    sorted({m.room_id for m in rows}), sorted({m.user_id for m in rows})
                )

        txn.call_after_commit(invalidate)

    async def get_joined_users(self, room_id: str) -> frozenset[str]:
        hit = self._joined.get(room_id)
        if hit is not None:
            return hit
        return (await self.get_joined_users_for_rooms([room_id]))[room_id]

    async def get_members(self, room_id: str) -> list[Membership]:
        rows = await self._db.fetch_all(
            "SELECT room_id, user_id, membership, event_id, stream_ordering"
            " FROM room_memberships WHERE room_id = ?",
            room_id,
        )
        return [Membership(*r) for r in rows]

    async def get_rooms_for_user(self, user_id: str) -> dict[str, Membership]:
        """Every room where the user has a membership (any kind), keyed by room ID."""
        hit = self._user_rooms.get(user_id)
        if hit is None:
            # A membership committed while this reads (the user's createRoom or join
            # racing their /sync) drops the entry first: the older rows are then not
            # cached, or /sync would leave that room out until the next change.
            generation = self._joined_generation
            rows = await self._db.fetch_all(
                "SELECT room_id, user_id, membership, event_id, stream_ordering"
                " FROM room_memberships WHERE user_id = ?",
                user_id,
            )
            hit = {r[0]: Membership(*r) for r in rows}
            if generation == self._joined_generation:
                self._user_rooms[user_id] = hit
        return hit

    async def get_joined_rooms(self, user_id: str) -> list[str]:
        rooms = await self.get_rooms_for_user(user_id)
        return [r for r, m in rooms.items() if m.membership == "join"]

    async def get_membership(self, room_id: str, user_id: str) -> Membership | None:
        return (await self.get_rooms_for_user(user_id)).get(room_id)

    async def get_membership_changes(
        self, user_id: str, from_exclusive: int, to_inclusive: int
    ) -> list[MembershipChange]:
        """Changes of the user's membership in the room's current state in the range,
        oldest first: read from the current-state-delta stream, so a membership that
        state resolution flipped is there too, at the position where it changed."""
        if self._member_changes is not None:
            known = self._member_changes.changed_between([user_id], from_exclusive, to_inclusive)
            if known is not None and not known[0] and not known[1]:
                return []  # the stream has no change of this user's membership there
        rows = await self._db.fetch_all(
            "SELECT room_id, event_id, prev_event_id, stream_id"
            " FROM current_state_delta_stream"
            " WHERE type = 'm.room.member' AND state_key = ?"
            " AND stream_id > ? AND stream_id <= ? ORDER BY stream_id",
            user_id,
            from_exclusive,
            to_inclusive,
        )
        return [MembershipChange(r[0], r[1], r[2], int(r[3])) for r in rows]

    async def remove(self, txn: Transaction, room_id: str, user_ids: Sequence[str]) -> None:
        """Users whose member event left the room's current state (state resolution can
        drop a key): they have no membership any more."""
        if not user_ids:
            return
        await txn.execute(
            f"DELETE FROM room_memberships WHERE room_id = ? AND {txn.sql.in_array('user_id')}",
            room_id,
            txn.sql.array(sorted(user_ids)),
        )

        def invalidate() -> None:
            self._joined_generation += 1
            self._joined.pop(room_id, None)
            for user_id in user_ids:
                self._user_rooms.pop(user_id, None)
            if self.on_invalidate is not None:
                self.on_invalidate([room_id], list(user_ids))

        txn.call_after_commit(invalidate)

    async def get_joined_users_for_rooms(
        self, room_ids: Iterable[str]
    ) -> dict[str, frozenset[str]]:
        """Joined users of several rooms: cached rooms free, the rest in one query."""
        out: dict[str, frozenset[str]] = {}
        missing: list[str] = []
        for room_id in set(room_ids):
            hit = self._joined.get(room_id)
            if hit is None:
                missing.append(room_id)
            else:
                out[room_id] = hit
        if missing:
            generation = self._joined_generation
            rows = await self._db.fetch_all(
                "SELECT room_id, user_id FROM room_memberships"
                f" WHERE membership = 'join' AND {self._db.sql.in_array('room_id')}",
                self._db.sql.array(missing),
            )
            found: dict[str, set[str]] = {room_id: set() for room_id in missing}
            for room_id, user_id in rows:
                found[room_id].add(user_id)
            still_current = generation == self._joined_generation
            for room_id, users in found.items():
                frozen = frozenset(users)
                if still_current:
                    self._joined[room_id] = frozen
                out[room_id] = frozen
        return out

    async def users_sharing_a_room(self, user_id: str) -> set[str]:
        rooms = await self.get_joined_rooms(user_id)
        users: set[str] = set()
        for members in (await self.get_joined_users_for_rooms(rooms)).values():
            users |= members
        return users

    async def rooms_ever_joined(self, user_id: str, room_ids: Iterable[str]) -> set[str]:
        """Those of the rooms the user has ever joined (by their accepted member events)."""
        wanted = sorted(set(room_ids))
        if not wanted:
            return set()
        rows = await self._db.fetch_all(
            "SELECT room_id, json FROM events WHERE type = 'm.room.member' AND state_key = ?"
            f" AND {self._db.sql.in_array('room_id')}"
            " AND NOT soft_failed AND rejected_reason IS NULL"
            # Timeline events, or ones a history purge made outliers (they keep a state).
            " AND (NOT outlier OR state_before IS NOT NULL)",
            user_id,
            self._db.sql.array(wanted),
        )
        out: set[str] = set()
        for room_id, raw in rows:
            if room_id in out:
                continue
            content = orjson.loads(raw).get("content")
            if isinstance(content, dict) and content.get("membership") == "join":
                out.add(room_id)
        return out

    async def forget(self, user_id: str, room_id: str) -> None:
        await self._db.execute(
            "INSERT INTO room_forgotten (user_id, room_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            user_id,
            room_id,
        )

    async def forgotten_rooms(self, user_id: str) -> set[str]:
        rows = await self._db.fetch_all(
            "SELECT room_id FROM room_forgotten WHERE user_id = ?", user_id
        )
        return {r[0] for r in rows}

    async def count_joined(self, room_ids: Iterable[str]) -> dict[str, int]:
        ids = list(room_ids)
        if not ids:
            return {}
        if all(room_id in self._joined for room_id in ids):  # the joined-users cache
            return {room_id: len(self._joined[room_id]) for room_id in ids}
        rows = await self._db.fetch_all(
            "SELECT room_id, COUNT(*) FROM room_memberships"
            f" WHERE membership = 'join' AND {self._db.sql.in_array('room_id')}"
            " GROUP BY room_id",
            self._db.sql.array(ids),
        )
        return {r[0]: int(r[1]) for r in rows}

    async def get_room_summaries(
        self, room_ids: Iterable[str], hero_limit: int = 6
    ) -> dict[str, RoomMemberSummary]:
        """Joined and invited counts and hero candidates for several rooms, in two
        queries. Heroes: joined, then invited members, earliest first; where a room has
        neither, those who left or were banned (the spec's "Calculating the display name
        for a room")."""
        ids = list(room_ids)
        out = {r: RoomMemberSummary(0, 0, []) for r in ids}
        if not ids:
            return out
        rows = await self._db.fetch_all(
            "SELECT room_id, membership, COUNT(*) FROM room_memberships"
            f" WHERE {self._db.sql.in_array('room_id')} AND membership IN ('join', 'invite')"
            " GROUP BY room_id, membership",
            self._db.sql.array(ids),
        )
        for room_id, membership, count in rows:
            if membership == "join":
                out[room_id].joined = int(count)
            else:
                out[room_id].invited = int(count)
        rows = await self._db.fetch_all(
            "SELECT room_id, user_id, membership FROM ("
            "  SELECT room_id, user_id, membership, ROW_NUMBER() OVER ("
            "    PARTITION BY room_id ORDER BY"
            "    CASE membership WHEN 'join' THEN 0 WHEN 'invite' THEN 1 ELSE 2 END,"
            "    stream_ordering, user_id) AS rn"
            f"  FROM room_memberships WHERE {self._db.sql.in_array('room_id')}"
            "    AND membership IN ('join', 'invite', 'leave', 'ban')"
            ") m WHERE rn <= ? ORDER BY room_id, rn",
            self._db.sql.array(ids),
            hero_limit + 1,
        )
        for room_id, user_id, membership in rows:
            out[room_id].members.append((user_id, membership))
        return out

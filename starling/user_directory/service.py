"""POST /user_directory/search: find users by user ID or display name.

Matching is by word prefix, case-insensitive, over the user ID and display name (as
Synapse does): "ali sm" finds "Alice Smith". Who can be found follows Synapse's
`user_directory.search_all_users`: by default only users who share a room with the
searcher or are joined to a public room — one whose join rule is `public` or whose
history is `world_readable` (the rooms the spec lists for profile look-up). The searcher
finds themselves only through a public room. With it on, every active local user but
the searcher (Synapse's rules, which SyTest checks). Other servers' users are found the
same way while they are joined to a room this server is in (one with a local member):
a room the server left shows none of them.

The set of public rooms is kept in memory: read once in one query, then refreshed for
the rooms whose join rules or history visibility changed (a new-event listener marks
them), so a search costs one statement.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import orjson

from starling.protocol.event import Event, StateKey
from starling.storage.events import EventStore
from starling.storage.search import search_words
from starling.storage.user_directory import UserDirectoryStore

logger = logging.getLogger(__name__)

# What of a remote member event's profile is indexed.
MAX_NAME = 256
MAX_URL = 1000

_PUBLICITY_TYPES = frozenset({"m.room.join_rules", "m.room.history_visibility"})


def _is_public(states: dict[str, Any]) -> bool:
    join_rules = states.get("m.room.join_rules") or {}
    visibility = states.get("m.room.history_visibility") or {}
    return (
        join_rules.get("join_rule") == "public"
        or visibility.get("history_visibility") == "world_readable"
    )


class UserDirectoryService:
    def __init__(
        self,
        store: UserDirectoryStore,
        *,
        search_all_users: bool,
        enabled: bool = True,
        server_name: str = "",
        events: EventStore | None = None,
    ) -> None:
        self._store = store
        self._search_all_users = search_all_users
        # `user_directory.enabled` off: every search answers no results (as Synapse does).
        self._enabled = enabled
        self._public: set[str] | None = None
        self._stale: set[str] = set()
        # Other servers' users come from member events (read through `events`).
        self._remote_suffix = ":" + server_name
        self._events = events
        self._tasks: set[asyncio.Task[None]] = set()

    def on_new_event(self, event: Event, position: int) -> None:
        if event.type in _PUBLICITY_TYPES and event.state_key == "":
            self._stale.add(event.room_id)

    def on_state_change(
        self, room_id: str, changed: Mapping[StateKey, str | None], position: int
    ) -> None:
        """RoomEventService state listener: a room's publicity may have changed (also
        when its state arrives whole, joining over federation), and other servers'
        users joined or changed their profile. (With workers every process hears each
        change and writes the same rows: idempotent upserts.)"""
        members: list[str] = []
        for (etype, key), eid in changed.items():
            if etype in _PUBLICITY_TYPES and key == "":
                self._stale.add(room_id)
            elif (
                etype == "m.room.member"
                and eid is not None
                and self._events is not None
                and not key.endswith(self._remote_suffix)
            ):
                members.append(eid)
        if members:
            task = asyncio.get_running_loop().create_task(self._remote_members(room_id, members))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _remote_members(self, room_id: str, event_ids: list[str]) -> None:
        """Index other servers' joined users: with the display name and avatar of a
        public room's member event; from a private room by user ID only (a per-room
        nickname there is not for everyone to search, as in Synapse)."""
        assert self._events is not None
        try:
            events = await self._events.get_events(event_ids)
            joined = [e for e in events.values() if e.membership == "join" and e.state_key]
            if not joined:
                return
            public = room_id in await self._public_rooms()
            profiles: list[tuple[str, str | None, str | None]] = []
            for event in joined:
                assert event.state_key is not None
                name = event.content.get("displayname")
                avatar = event.content.get("avatar_url")
                profiles.append(
                    (
                        event.state_key,
                        name[:MAX_NAME] if isinstance(name, str) else None,
                        avatar if isinstance(avatar, str) and len(avatar) <= MAX_URL else None,
                    )
                )
            if public:
                await self._store.set_remote_profiles(profiles)
            else:
                await self._store.set_remote_profiles([], [p[0] for p in profiles])
        except Exception:
            logger.exception("user directory: could not index the members of %s", room_id)

    async def _public_rooms(self) -> set[str]:
        if self._public is None:
            self._stale.clear()
            self._public = self._decide(await self._store.public_room_candidates(), set())
        elif self._stale:
            rooms = list(self._stale)
            self._stale.difference_update(rooms)
            self._public = self._decide(
                await self._store.public_room_candidates(rooms), self._public - set(rooms)
            )
        return self._public

    @staticmethod
    def _decide(rows: list[tuple[str, str, Any]], public: set[str]) -> set[str]:
        states: dict[str, dict[str, Any]] = {}
        for room_id, event_type, raw in rows:
            content = orjson.loads(raw).get("content")
            states.setdefault(room_id, {})[event_type] = (
                content if isinstance(content, dict) else {}
            )
        public |= {room_id for room_id, s in states.items() if _is_public(s)}
        return public

    async def search(self, searcher: str, term: str, limit: int) -> dict[str, Any]:
        if not self._enabled or limit == 0:
            return {"results": [], "limited": False}
        words = search_words(term)
        public = None if self._search_all_users else sorted(await self._public_rooms())
        users = await self._store.search(words, limit + 1, searcher=searcher, public_rooms=public)
        results = []
        for user in users[:limit]:
            entry: dict[str, Any] = {"user_id": user.user_id}
            if user.displayname is not None:
                entry["display_name"] = user.displayname
            if user.avatar_url is not None:
                entry["avatar_url"] = user.avatar_url
            results.append(entry)
        return {"results": results, "limited": len(users) > limit}

"""POST /user_directory/search: find local users by user ID or display name.

Matching is by word prefix, case-insensitive, over the user ID and display name (as
Synapse does): "ali sm" finds "Alice Smith". Who can be found follows Synapse's
`user_directory.search_all_users`: by default only users who share a room with the
searcher or are joined to a public room — one whose join rule is `public` or whose
history is `world_readable` (the rooms the spec lists for profile look-up). The searcher
finds themselves only through a public room. With it on, every active local user but
the searcher (Synapse's rules, which SyTest checks).

The set of public rooms is kept in memory: read once in one query, then refreshed for
the rooms whose join rules or history visibility changed (a new-event listener marks
them), so a search costs one statement.
"""

from __future__ import annotations

from typing import Any

import orjson

from starling.protocol.event import Event
from starling.storage.search import search_words
from starling.storage.user_directory import UserDirectoryStore

_PUBLICITY_TYPES = frozenset({"m.room.join_rules", "m.room.history_visibility"})


def _is_public(states: dict[str, Any]) -> bool:
    join_rules = states.get("m.room.join_rules") or {}
    visibility = states.get("m.room.history_visibility") or {}
    return (
        join_rules.get("join_rule") == "public"
        or visibility.get("history_visibility") == "world_readable"
    )


class UserDirectoryService:
    def __init__(self, store: UserDirectoryStore, *, search_all_users: bool) -> None:
        self._store = store
        self._search_all_users = search_all_users
        self._public: set[str] | None = None
        self._stale: set[str] = set()

    def on_new_event(self, event: Event, position: int) -> None:
        if event.type in _PUBLICITY_TYPES and event.state_key == "":
            self._stale.add(event.room_id)

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

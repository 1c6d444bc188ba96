"""Account data, tags and ignored users (spec: client-server-api modules/account_data.md,
tags.md, ignore_users.md).

Account data is per user, global or per room, delivered through /sync (stream
"account_data"): on an initial sync everything, afterwards what changed since the token.
Types the server manages (m.fully_read, m.push_rules) cannot be written by clients
(405); the server writes them with `set_account_data`. Room tags are the m.tag room
account data: {"tags": {tag: {"order": 0..1}}}. The m.ignored_user_list is plain account
data; `get_ignored_users` reads it (cached) for the sync service to filter events.
"""

from __future__ import annotations

from typing import Any

import orjson

from starling.errors import MatrixError, bad_json, invalid_param, too_large
from starling.locks import KeyedLock
from starling.notifier import Notifier
from starling.protocol.identifiers import is_valid_user_id
from starling.storage.account_data import GLOBAL, AccountDataStore
from starling.sync.extension import SyncContext
from starling.sync.sections import add_global_events, add_room_events, section_matcher

MAX_CONTENT_BYTES = 64 * 1024
MAX_TYPE_BYTES = 255
MAX_TAG_BYTES = 255
MAX_TAGS_PER_ROOM = 100
SERVER_MANAGED_TYPES = frozenset({"m.fully_read", "m.push_rules"})
IGNORED_USERS = "m.ignored_user_list"
TAGS = "m.tag"


def check_type(data_type: str) -> None:
    if not data_type or len(data_type.encode()) > MAX_TYPE_BYTES:
        raise invalid_param("Account data type must be 1-255 bytes")


def check_size(content: dict[str, Any]) -> None:
    if len(orjson.dumps(content)) > MAX_CONTENT_BYTES:
        raise too_large(f"Account data content is larger than {MAX_CONTENT_BYTES} bytes")


def _ignored_from(content: dict[str, Any] | None, owner: str) -> frozenset[str]:
    if not content:
        return frozenset()
    ignored = content.get("ignored_users")
    if not isinstance(ignored, dict):
        return frozenset()
    return frozenset(u for u in ignored if isinstance(u, str) and u != owner)


class AccountDataService:
    """Account data reads and writes, and the account-data SyncExtension."""

    stream_name = "account_data"

    def __init__(self, store: AccountDataStore, notifier: Notifier) -> None:
        self._store = store
        self._notifier = notifier
        self._ignored: dict[str, frozenset[str]] = {}
        # Bumped by every write of an ignored-users list: a read begun before it must
        # not put the older list back over the one the write cached.
        self._ignored_generation = 0
        self._locks: KeyedLock[str] = KeyedLock()

    def current_position(self) -> int:
        return self._store.stream.current_position()

    # --- reads and writes ------------------------------------------------------------

    async def get(self, user_id: str, room_id: str | None, data_type: str) -> dict[str, Any] | None:
        """The content, or None; room_id None for global data."""
        return await self._store.get(user_id, room_id or GLOBAL, data_type)

    async def put_from_client(
        self, user_id: str, room_id: str | None, data_type: str, content: dict[str, Any]
    ) -> None:
        """A client's PUT: refuses the types the server manages (405) and oversized data."""
        check_type(data_type)
        if data_type in SERVER_MANAGED_TYPES:
            raise MatrixError(405, "M_BAD_JSON", f"Cannot set {data_type} through this API")
        check_size(content)
        if data_type == IGNORED_USERS and room_id is None:
            ignored = content.get("ignored_users")
            if ignored is not None and not isinstance(ignored, dict):
                raise bad_json("'ignored_users' must be an object")
            if isinstance(ignored, dict):
                if user_id in ignored:
                    raise invalid_param("You cannot ignore yourself")
                for other in ignored:
                    if not is_valid_user_id(other):
                        raise invalid_param(f"{other!r} is not a user ID")
        await self.set_account_data(user_id, room_id, data_type, content)

    async def set_account_data(
        self, user_id: str, room_id: str | None, data_type: str, content: dict[str, Any]
    ) -> int:
        """Write any type (server-side callers: m.fully_read, m.push_rules...); returns
        the stream position."""
        position = await self._store.put(user_id, room_id or GLOBAL, data_type, content)
        if data_type == IGNORED_USERS and room_id is None:
            self._ignored_generation += 1
            self._ignored[user_id] = _ignored_from(content, user_id)
        self._notifier.notify(users=[user_id])
        return position

    async def get_ignored_users(self, user_id: str) -> frozenset[str]:
        """The users this user ignores (from m.ignored_user_list), cached."""
        hit = self._ignored.get(user_id)
        if hit is None:
            generation = self._ignored_generation
            hit = _ignored_from(await self._store.get(user_id, GLOBAL, IGNORED_USERS), user_id)
            if generation == self._ignored_generation:
                self._ignored[user_id] = hit
        return hit

    # --- tags ------------------------------------------------------------------------

    async def get_tags(self, user_id: str, room_id: str) -> dict[str, Any]:
        content = await self._store.get(user_id, room_id, TAGS)
        tags = content.get("tags") if content else None
        return tags if isinstance(tags, dict) else {}

    async def add_tag(self, user_id: str, room_id: str, tag: str, data: dict[str, Any]) -> None:
        if not tag or len(tag.encode()) > MAX_TAG_BYTES:
            raise invalid_param(f"Tags must be 1-{MAX_TAG_BYTES} bytes")
        order = data.get("order")
        if order is not None and (
            isinstance(order, bool) or not isinstance(order, (int, float)) or not 0 <= order <= 1
        ):
            raise invalid_param("'order' must be a number between 0 and 1")
        check_size(data)

        def modify(current: dict[str, Any] | None) -> dict[str, Any] | None:
            tags = dict(current.get("tags") or {}) if current else {}
            if not isinstance(tags, dict):
                tags = {}
            if tags.get(tag) == data:
                return None
            if tag not in tags and len(tags) >= MAX_TAGS_PER_ROOM:
                raise invalid_param(f"A room can have at most {MAX_TAGS_PER_ROOM} tags")
            tags[tag] = data
            new = {**(current or {}), "tags": tags}
            check_size(new)
            return new

        await self._modify_tags(user_id, room_id, modify)

    async def remove_tag(self, user_id: str, room_id: str, tag: str) -> None:
        def modify(current: dict[str, Any] | None) -> dict[str, Any] | None:
            tags = current.get("tags") if current else None
            if not isinstance(tags, dict) or tag not in tags:
                return None
            return {**(current or {}), "tags": {k: v for k, v in tags.items() if k != tag}}

        await self._modify_tags(user_id, room_id, modify)

    async def _modify_tags(self, user_id: str, room_id: str, modify: Any) -> None:
        # One writer per user in this process, so two tag edits never lose each other's
        # change (the row may not exist yet, so a row lock alone would not do).
        async with self._locks(user_id):
            position, _ = await self._store.modify(user_id, room_id, TAGS, modify)
        if position is not None:
            self._notifier.notify(users=[user_id])

    # --- SyncExtension ---------------------------------------------------------------

    async def contribute(self, ctx: SyncContext, response: dict[str, Any]) -> bool:
        """Global changes in `account_data`, room changes in each joined room's
        `account_data` (everything on an initial sync)."""
        changes = (
            []  # the stream has not moved: nothing to read
            if ctx.since is not None and ctx.since == ctx.upto
            else await self._store.get_changes(ctx.user_id, ctx.since, ctx.upto)
        )
        global_allowed = section_matcher(ctx, "account_data")
        room_allowed = section_matcher(ctx, "room_account_data")
        global_events: list[dict[str, Any]] = []
        added = False
        for change in changes:
            event = {"type": change.data_type, "content": change.content}
            if change.room_id == GLOBAL:
                if global_allowed(event, None):
                    global_events.append(event)
            elif change.room_id in ctx.joined_rooms and room_allowed(event, change.room_id):
                add_room_events(response, change.room_id, "account_data", [event])
                added = True
        add_global_events(response, "account_data", global_events)
        return added or bool(global_events)

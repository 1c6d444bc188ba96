"""Presence across servers (Server-Server API > Presence): the `m.presence` EDU, both
ways, only while presence is enabled.

Outbound: each batch of visible changes to local users' presence becomes one EDU per
other server sharing a room with any of them, listing those of the batch it may see.
A server that comes to share a room with our users is told their presence at once (it
would otherwise hear of them only at their next change): when another server's user
joins a room, that server gets the presence of our users in it (but those offline and
inactive for a week); when
one of our users joins, every other server in the room gets theirs.
Inbound: each entry of `push` (the registry has checked that every user is the
origin's) is taken for a user sharing a room with one of ours; malformed entries are
skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from starling.protocol.event import Event
from starling.protocol.power_levels import server_of

logger = logging.getLogger(__name__)

MAX_PUSH = 100
# Seconds between another server's user joining and telling that server of our users.
JOIN_PRESENCE_DELAY = 1.0


class EduSender(Protocol):
    def send_edu(self, destination: str, edu_type: str, content: dict[str, Any]) -> None: ...


class PresenceSink(Protocol):
    enabled: bool

    async def presence_to_share(self, user_ids: Iterable[str]) -> dict[str, dict[str, Any]]: ...

    async def remote_update(
        self,
        user_id: str,
        presence: str,
        status_msg: str | None,
        last_active_ago: int,
        currently_active: bool,
    ) -> None: ...


UsersSharing = Callable[[str], Awaitable[set[str]]]
JoinedUsers = Callable[[str], Awaitable[frozenset[str]]]


class PresenceFederation:
    def __init__(
        self,
        server_name: str,
        sender: EduSender,
        users_sharing: UsersSharing,
        presence: PresenceSink,
        joined_users: JoinedUsers | None = None,
        *,
        join_delay: float = JOIN_PRESENCE_DELAY,
    ) -> None:
        self._server_name = server_name
        self._sender = sender
        self._users_sharing = users_sharing
        self._presence = presence
        self._joined_users = joined_users
        self._join_delay = join_delay
        self._tasks: set[asyncio.Task[None]] = set()

    def on_new_event(self, event: Event, position: int) -> None:
        """RoomEventService listener: a join may bring a server into a room with ours."""
        if (
            self._presence.enabled
            and self._joined_users is not None
            and event.type == "m.room.member"
            and event.membership == "join"
            and event.state_key is not None
        ):
            task = asyncio.create_task(self._joined(event.room_id, event.state_key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _joined(self, room_id: str, user_id: str) -> None:
        try:
            assert self._joined_users is not None
            joined = await self._joined_users(room_id)
            ours = sorted(u for u in joined if server_of(u) == self._server_name)
            if server_of(user_id) != self._server_name:
                # Another server's user: that server hears of ours in the room — a moment
                # later, as a join made through our send_join is persisted there only
                # once our answer arrives, and presence of users it shares no room with
                # yet would be dropped.
                await asyncio.sleep(self._join_delay)
                joined = await self._joined_users(room_id)
                ours = sorted(u for u in joined if server_of(u) == self._server_name)
                destinations = {server_of(user_id)}
                users = ours
            else:
                # One of ours: every other server in the room hears of them.
                destinations = {server_of(u) for u in joined} - {self._server_name}
                users = [user_id]
            if not destinations or not users:
                return
            formatted = await self._presence.presence_to_share(users)
            push = [_entry(u, f) for u, f in sorted(formatted.items())]
            for server in sorted(destinations):
                for start in range(0, len(push), MAX_PUSH):
                    self._sender.send_edu(
                        server, "m.presence", {"push": push[start : start + MAX_PUSH]}
                    )
        except Exception:
            logger.exception("presence for a join in %s failed", room_id)

    async def local_changes(self, changes: dict[str, dict[str, Any]]) -> None:
        """PresenceService listener: {user_id: formatted presence} of local users."""
        if not self._presence.enabled:
            return
        per_server: dict[str, list[dict[str, Any]]] = {}
        for user_id, formatted in sorted(changes.items()):
            servers = {server_of(u) for u in await self._users_sharing(user_id)}
            servers.discard(self._server_name)
            entry = _entry(user_id, formatted)
            for server in servers:
                per_server.setdefault(server, []).append(entry)
        for server, push in sorted(per_server.items()):
            for start in range(0, len(push), MAX_PUSH):
                self._sender.send_edu(
                    server, "m.presence", {"push": push[start : start + MAX_PUSH]}
                )

    async def on_edu(self, origin: str, content: dict[str, Any]) -> None:
        if not self._presence.enabled:
            return
        push = content.get("push")
        if not isinstance(push, list):
            return
        for item in push[:MAX_PUSH]:
            if not isinstance(item, dict):
                continue
            user_id = item.get("user_id")
            presence = item.get("presence")
            ago = item.get("last_active_ago", 0)
            status_msg = item.get("status_msg")
            active = item.get("currently_active", False)
            if not isinstance(user_id, str) or not isinstance(presence, str):
                continue
            if not isinstance(ago, int) or isinstance(ago, bool) or ago < 0:
                ago = 0
            if status_msg is not None and not isinstance(status_msg, str):
                status_msg = None
            sharing = await self._users_sharing(user_id)
            if not any(server_of(u) == self._server_name for u in sharing):
                continue
            await self._presence.remote_update(user_id, presence, status_msg, ago, active is True)


def _entry(user_id: str, formatted: dict[str, Any]) -> dict[str, Any]:
    """One `push` entry of an m.presence EDU from a formatted presence."""
    entry = {
        "user_id": user_id,
        "presence": formatted["presence"],
        "last_active_ago": formatted.get("last_active_ago", 0),
        "currently_active": bool(formatted.get("currently_active", False)),
    }
    if formatted.get("status_msg") is not None:
        entry["status_msg"] = formatted["status_msg"]
    return entry

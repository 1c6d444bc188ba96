"""Presence across servers (Server-Server API > Presence): the `m.presence` EDU, both
ways, only while presence is enabled.

Outbound: each batch of visible changes to local users' presence becomes one EDU per
other server sharing a room with any of them, listing those of the batch it may see.
Inbound: each entry of `push` (the registry has checked that every user is the
origin's) is taken for a user sharing a room with one of ours; malformed entries are
skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starling.protocol.power_levels import server_of

logger = logging.getLogger(__name__)

MAX_PUSH = 100


class EduSender(Protocol):
    def send_edu(self, destination: str, edu_type: str, content: dict[str, Any]) -> None: ...


class PresenceSink(Protocol):
    enabled: bool

    async def remote_update(
        self,
        user_id: str,
        presence: str,
        status_msg: str | None,
        last_active_ago: int,
        currently_active: bool,
    ) -> None: ...


UsersSharing = Callable[[str], Awaitable[set[str]]]


class PresenceFederation:
    def __init__(
        self,
        server_name: str,
        sender: EduSender,
        users_sharing: UsersSharing,
        presence: PresenceSink,
    ) -> None:
        self._server_name = server_name
        self._sender = sender
        self._users_sharing = users_sharing
        self._presence = presence

    async def local_changes(self, changes: dict[str, dict[str, Any]]) -> None:
        """PresenceService listener: {user_id: formatted presence} of local users."""
        if not self._presence.enabled:
            return
        per_server: dict[str, list[dict[str, Any]]] = {}
        for user_id, formatted in sorted(changes.items()):
            servers = {server_of(u) for u in await self._users_sharing(user_id)}
            servers.discard(self._server_name)
            entry = {
                "user_id": user_id,
                "presence": formatted["presence"],
                "last_active_ago": formatted.get("last_active_ago", 0),
                "currently_active": bool(formatted.get("currently_active", False)),
            }
            if formatted.get("status_msg") is not None:
                entry["status_msg"] = formatted["status_msg"]
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

"""Inbound EDUs (Server-Server API > EDUs): dispatch by `edu_type` to the handler each
feature registers (typing, receipts, presence, device lists, to-device...).

Unknown types are ignored, as the spec asks of anything a server does not implement. An
EDU that names a user of another server than the origin is dropped here, before any
handler sees it: a server speaks only for its own users. Which fields name users is
known per type for the spec's EDUs (`USER_FIELDS`); handlers registered for other types
say it themselves. Room-local EDUs pass the room's server ACL here too (Server-Server
API > Server Access Control Lists): a typing notification for a room that denies the
origin is dropped, and a receipts EDU loses the rooms that deny it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from starling.protocol.power_levels import server_of

logger = logging.getLogger(__name__)

EduHandler = Callable[[str, dict[str, Any]], Awaitable[None]]
"""(origin, content) -> None."""

UsersNamed = Callable[[dict[str, Any]], Iterator[Any]]
"""The user IDs an EDU's content speaks for (anything not a string counts as foreign)."""


def _field(name: str) -> UsersNamed:
    def users(content: dict[str, Any]) -> Iterator[Any]:
        yield content.get(name)

    return users


def _presence_users(content: dict[str, Any]) -> Iterator[Any]:
    push = content.get("push")
    for item in push if isinstance(push, list) else [None]:
        yield item.get("user_id") if isinstance(item, dict) else None


def _receipt_users(content: dict[str, Any]) -> Iterator[Any]:
    # {room_id: {"m.read": {user_id: {...}}}}
    for per_room in content.values():
        if not isinstance(per_room, dict):
            yield None
            continue
        for per_type in per_room.values():
            if not isinstance(per_type, dict):
                yield None
                continue
            yield from per_type.keys()


USER_FIELDS: dict[str, UsersNamed] = {
    "m.typing": _field("user_id"),
    "m.presence": _presence_users,
    "m.receipt": _receipt_users,
    "m.device_list_update": _field("user_id"),
    "m.signing_key_update": _field("user_id"),
    "m.direct_to_device": _field("sender"),
}


ServerAllowed = Callable[[str, str], Awaitable[bool]]
"""(room_id, server_name) -> whether the room's server ACL lets that server in."""


class EduRegistry:
    def __init__(self, server_allowed: ServerAllowed | None = None) -> None:
        self._handlers: dict[str, tuple[EduHandler, UsersNamed | None]] = {}
        self._server_allowed = server_allowed

    def register(
        self, edu_type: str, handler: EduHandler, *, users: UsersNamed | None = None
    ) -> None:
        """Handle EDUs of `edu_type`; `users` names the users they speak for (defaults
        to the spec's fields for the spec's EDU types)."""
        self._handlers[edu_type] = (handler, users or USER_FIELDS.get(edu_type))

    def handles(self, edu_type: str) -> bool:
        return edu_type in self._handlers

    async def dispatch(self, origin: str, edu: Any) -> None:
        """One EDU of a transaction from `origin`; never raises."""
        if not isinstance(edu, dict):
            return
        edu_type = edu.get("edu_type")
        content = edu.get("content")
        if not isinstance(edu_type, str) or not isinstance(content, dict):
            return
        entry = self._handlers.get(edu_type)
        if entry is None:
            return
        handler, users = entry
        if users is not None:
            for user_id in users(content):
                if not isinstance(user_id, str) or server_of(user_id) != origin:
                    logger.info("dropped %s EDU from %s naming %r", edu_type, origin, user_id)
                    return
        acl_checked = await self._apply_acl(origin, edu_type, content)
        if acl_checked is None:
            logger.info("dropped %s EDU from %s: denied by the room's ACL", edu_type, origin)
            return
        try:
            await handler(origin, acl_checked)
        except Exception:
            logger.exception("%s EDU from %s failed", edu_type, origin)

    async def _apply_acl(
        self, origin: str, edu_type: str, content: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The content with what the rooms' ACLs deny removed; None if nothing is left."""
        allowed = self._server_allowed
        if allowed is None:
            return content
        if edu_type == "m.typing":
            room_id = content.get("room_id")
            if not isinstance(room_id, str) or not await allowed(room_id, origin):
                return None
            return content
        if edu_type == "m.receipt":
            kept = {r: v for r, v in content.items() if await allowed(r, origin)}
            return kept or None
        return content

"""Membership changes requested by local users: join, leave, invite, kick, ban, unban, knock.

Spec: client-server-api "Room membership". Each change is an m.room.member event sent
through RoomEventService, so the auth rules decide who may do what; this module adds
what the client API asks beyond them (the reason field, profile fields on joins, the
idempotent re-join) and turns a denial into M_FORBIDDEN with the rule's reason.

Joining a room this server is not in needs federation (make_join/send_join), which the
federation layer provides through `remote_join`; without it such joins are M_NOT_FOUND.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starling.errors import MatrixError, forbidden
from starling.protocol.event import Event
from starling.rooms.event_service import RoomEventService
from starling.storage.memberships import MembershipStore

ProfileLookup = Callable[[str], Awaitable[dict[str, Any]]]
RemoteJoin = Callable[[str, str, Sequence[str], dict[str, Any]], Awaitable[Event]]

MAX_REASON_LENGTH = 1024


def _reason(content: dict[str, Any], reason: str | None) -> dict[str, Any]:
    if reason is not None:
        if not isinstance(reason, str):
            raise MatrixError(400, "M_BAD_JSON", "'reason' must be a string")
        content["reason"] = reason[:MAX_REASON_LENGTH]
    return content


class MembershipService:
    def __init__(
        self,
        events: RoomEventService,
        memberships: MembershipStore,
        profile_lookup: ProfileLookup,
        remote_join: RemoteJoin | None = None,
    ) -> None:
        self._events = events
        self._memberships = memberships
        self._profile = profile_lookup
        self._remote_join = remote_join

    async def _room_known(self, room_id: str) -> bool:
        return bool(await self._events.current_state_ids(room_id))

    async def join(
        self,
        room_id: str,
        user_id: str,
        *,
        reason: str | None = None,
        via: Sequence[str] = (),
        guest: bool = False,
    ) -> Event | None:
        """Join; returns the new member event, or None when already joined unchanged.
        A guest may only join a room whose ``m.room.guest_access`` is ``can_join`` (spec:
        Guest access, server behaviour)."""
        profile = await self._profile(user_id)
        content = _reason({"membership": "join", **profile}, reason)
        if not await self._room_known(room_id):
            if self._remote_join is not None:
                if guest:  # the room's guest_access cannot be checked before joining
                    raise MatrixError(
                        403, "M_GUEST_ACCESS_FORBIDDEN", "Guests cannot join this room"
                    )
                return await self._remote_join(room_id, user_id, via, content)
            raise MatrixError(404, "M_NOT_FOUND", f"No known room {room_id}")
        if guest:
            key = ("m.room.guest_access", "")
            access = (await self._events.current_state_events(room_id, [key])).get(key)
            if access is None or access.content.get("guest_access") != "can_join":
                raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guests cannot join this room")
        current = await self._memberships.get_membership(room_id, user_id)
        if current is not None and current.membership == "join" and reason is None:
            state = await self._events.current_state_events(room_id, [("m.room.member", user_id)])
            existing = state.get(("m.room.member", user_id))
            if existing is not None and all(
                existing.content.get(k) == v for k, v in content.items()
            ):
                return None
        return await self._events.send(room_id, user_id, "m.room.member", content, user_id)

    async def leave(self, room_id: str, user_id: str, reason: str | None = None) -> Event | None:
        if not await self._room_known(room_id):
            raise MatrixError(404, "M_NOT_FOUND", f"No known room {room_id}")
        current = await self._memberships.get_membership(room_id, user_id)
        if current is None or current.membership in ("leave", "ban"):
            if current is not None and current.membership == "leave":
                return None  # already left: leaving again is a no-op, as in Synapse
            raise forbidden("You are not a member of this room")
        content = _reason({"membership": "leave"}, reason)
        return await self._events.send(room_id, user_id, "m.room.member", content, user_id)

    async def invite(
        self,
        room_id: str,
        sender: str,
        target: str,
        *,
        reason: str | None = None,
        is_direct: bool = False,
    ) -> Event:
        await self._require_room(room_id)
        current = await self._memberships.get_membership(room_id, target)
        if current is not None and current.membership == "join":
            raise forbidden(f"{target} is already in the room")
        if current is not None and current.membership == "ban":
            raise forbidden(f"{target} is banned from the room")
        content: dict[str, Any] = {"membership": "invite"}
        if is_direct:
            content["is_direct"] = True
        content.update(await self._profile(target))
        return await self._events.send(
            room_id, sender, "m.room.member", _reason(content, reason), target
        )

    async def kick(
        self, room_id: str, sender: str, target: str, reason: str | None = None
    ) -> Event:
        await self._require_room(room_id)
        current = await self._memberships.get_membership(room_id, target)
        if current is None or current.membership in ("leave", "ban"):
            raise forbidden(f"{target} is not in the room")
        content = _reason({"membership": "leave"}, reason)
        return await self._events.send(room_id, sender, "m.room.member", content, target)

    async def ban(self, room_id: str, sender: str, target: str, reason: str | None = None) -> Event:
        await self._require_room(room_id)
        content = _reason({"membership": "ban"}, reason)
        return await self._events.send(room_id, sender, "m.room.member", content, target)

    async def unban(
        self, room_id: str, sender: str, target: str, reason: str | None = None
    ) -> Event:
        await self._require_room(room_id)
        current = await self._memberships.get_membership(room_id, target)
        if current is None or current.membership != "ban":
            raise forbidden(f"{target} is not banned")
        content = _reason({"membership": "leave"}, reason)
        return await self._events.send(room_id, sender, "m.room.member", content, target)

    async def knock(self, room_id: str, user_id: str, reason: str | None = None) -> Event:
        if not await self._room_known(room_id):
            raise MatrixError(404, "M_NOT_FOUND", f"No known room {room_id}")
        content = _reason({"membership": "knock", **(await self._profile(user_id))}, reason)
        return await self._events.send(room_id, user_id, "m.room.member", content, user_id)

    async def forget(self, room_id: str, user_id: str) -> None:
        current = await self._memberships.get_membership(room_id, user_id)
        if current is not None and current.membership in ("join", "invite", "knock"):
            raise MatrixError(400, "M_UNKNOWN", "You must leave the room before forgetting it")
        if current is None:
            raise MatrixError(404, "M_NOT_FOUND", "You have never been in this room")
        await self._memberships.forget(user_id, room_id)

    async def _require_room(self, room_id: str) -> None:
        if not await self._room_known(room_id):
            raise MatrixError(404, "M_NOT_FOUND", f"No known room {room_id}")

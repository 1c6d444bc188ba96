"""Membership changes requested by local users: join, leave, invite, kick, ban, unban, knock.

Spec: client-server-api "Room membership". Each change is an m.room.member event sent
through RoomEventService, so the auth rules decide who may do what; this module adds
what the client API asks beyond them (the reason field, profile fields on joins, the
idempotent re-join, guest access, the `rc_joins` and `rc_invites` rate limits, and the
allow conditions of restricted rooms, whose authorising user this server picks itself)
and turns a denial into M_FORBIDDEN with the rule's reason.

Every way a client changes a membership ends here: the /join, /invite, ... endpoints and
a raw `PUT /rooms/{roomId}/state/m.room.member/{userId}` (`set_membership`), so the state
endpoint can never skip a rule the dedicated endpoints apply.

Rooms this server is not in are reached over federation through `remote`
(`starling.federation.remote_membership`): joining and knocking through a resident server
(make_join/send_join, make_knock/send_knock), rejecting an invite or retracting a knock
(make_leave/send_leave), and inviting another server's user (invite v2, signed by that
server before the invite is persisted). Without it such requests are M_NOT_FOUND.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from starling.errors import MatrixError, bad_json, forbidden
from starling.protocol.event import Event, StateKey
from starling.protocol.power_levels import PowerLevels
from starling.protocol.restricted_joins import (
    AUTHORISER_KEY,
    allowed_room_ids,
    choose_authoriser,
    is_restricted,
)
from starling.ratelimit import RateLimits
from starling.rooms.event_service import RoomEventService
from starling.storage.memberships import MembershipStore

ProfileLookup = Callable[[str], Awaitable[dict[str, Any]]]


class RemoteRooms(Protocol):
    """Membership changes in rooms this server is not in, made through other servers."""

    async def join_room(
        self, room_id: str, user_id: str, via: Sequence[str], content: dict[str, Any]
    ) -> Event: ...

    async def knock_room(
        self, room_id: str, user_id: str, via: Sequence[str], content: dict[str, Any]
    ) -> Event: ...

    async def leave_room(self, room_id: str, user_id: str, content: dict[str, Any]) -> Event: ...

    async def countersigned_invite(self, event: Event) -> Event: ...


MAX_REASON_LENGTH = 1024
MEMBERSHIPS = ("join", "leave", "invite", "ban", "knock")
logger = logging.getLogger(__name__)

_JOIN_KEYS: list[StateKey] = [
    ("m.room.create", ""),
    ("m.room.join_rules", ""),
    ("m.room.power_levels", ""),
    ("m.room.guest_access", ""),
]


def _guest_forbidden() -> MatrixError:
    return MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guests cannot join this room")


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
        remote: RemoteRooms | None = None,
        *,
        server_name: str,
        rate_limits: RateLimits | None = None,
    ) -> None:
        self._events = events
        self._memberships = memberships
        self._profile = profile_lookup
        self._remote = remote
        self._server_name = server_name
        self._rate_limits = rate_limits
        self._is_blocked: Callable[[str], Awaitable[bool]] | None = None
        # Server modules' verdict on a local user's invite (inviter, invitee, room):
        # None allows, a reason refuses (modules/api.py user_may_invite).
        self._invite_policy: Callable[[str, str, str], Awaitable[str | None]] | None = None
        # (room_id, sender, target, signed): a join's `third_party_signed` checked against
        # the room's m.room.third_party_invite and sent as the invite (identity/service.py).
        self._accept_signed: Callable[[str, str, str, dict[str, Any]], Awaitable[None]] | None = (
            None
        )
        self._after_remote_join: Callable[[str], Awaitable[None]] | None = None

    def use_room_blocks(self, is_blocked: Callable[[str], Awaitable[bool]]) -> None:
        """Refuse local joins to rooms an admin blocked (set once, at start)."""
        self._is_blocked = is_blocked

    def use_after_remote_join(self, after: Callable[[str], Awaitable[None]]) -> None:
        """Run after a local user joined a room through another server (set once, at
        start): room upgrades carry this server's state over (RoomUpgrader)."""
        self._after_remote_join = after

    def use_remote(self, remote: RemoteRooms) -> None:
        """Reach rooms this server is not in through other servers (set once, at start)."""
        self._remote = remote

    async def _room_known(self, room_id: str) -> bool:
        return bool(await self._events.current_state_ids(room_id))

    async def _reach_through_others(self, room_id: str) -> list[str] | None:
        """None when this server can act in the room itself; else the other servers in
        it (empty if unknown): the room is not known here, or none of our users is joined
        any more while other servers' users are (our copy of its state may be stale)."""
        if self._remote is None:
            return None
        if not await self._room_known(room_id):
            return []
        joined = await self._memberships.get_joined_users(room_id)
        servers = {u.partition(":")[2] for u in joined}
        if not joined or self._server_name in servers:
            return None
        return sorted(servers)

    async def set_membership(
        self,
        room_id: str,
        sender: str,
        target: str,
        content: dict[str, Any],
        *,
        guest: bool = False,
    ) -> Event | None:
        """PUT /rooms/{roomId}/state/m.room.member/{target}: the change `content` asks
        for, by the same rules as the endpoint made for it. The client's other content
        keys (display name, avatar, reason, ...) are kept; None when nothing changed."""
        membership = content.get("membership")
        if membership not in MEMBERSHIPS:
            raise bad_json(f"'membership' must be one of {', '.join(MEMBERSHIPS)}")
        extra = {k: v for k, v in content.items() if k not in ("membership", "reason")}
        reason = content.get("reason")
        if guest and not (sender == target and membership in ("join", "leave")):
            raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guests may only join or leave")
        if "third_party_invite" in content:
            # Only the server builds these, from an identity server's signed invite.
            raise forbidden("Third-party invites cannot be sent as member events")
        if membership in ("join", "knock") and sender != target:
            raise forbidden(f"Cannot {membership} on behalf of another user")
        if membership == "join":
            return await self.join(room_id, sender, reason=reason, guest=guest, content=extra)
        if membership == "knock":
            return await self.knock(room_id, sender, reason, content=extra)
        if membership == "invite":
            return await self.invite(room_id, sender, target, reason=reason, content=extra)
        if membership == "ban":
            return await self.ban(room_id, sender, target, reason, content=extra)
        if sender == target:
            return await self.leave(room_id, sender, reason)
        current = await self._memberships.get_membership(room_id, target)
        if current is not None and current.membership == "ban":
            return await self.unban(room_id, sender, target, reason)
        return await self.kick(room_id, sender, target, reason)

    def use_signed_invites(
        self, accept: Callable[[str, str, str, dict[str, Any]], Awaitable[None]]
    ) -> None:
        self._accept_signed = accept

    async def join_by_request(
        self,
        room_id: str,
        user_id: str,
        body: dict[str, Any],
        *,
        reason: str | None,
        via: Sequence[str],
        guest: bool,
    ) -> None:
        """A client's join (POST /join, /rooms/{roomId}/join) with its request body. With
        `third_party_signed` (spec: "Third-party invites"), the signed invite must match a
        pending m.room.third_party_invite, with key validity checked; it becomes the
        invite this join then follows. The body's other keys go into the member event's
        content, as Synapse does (`join` drops those only it may set)."""
        signed = body.get("third_party_signed")
        if signed is not None:
            if not isinstance(signed, dict) or not isinstance(signed.get("sender"), str):
                raise bad_json("'third_party_signed' must be an object with a 'sender'")
            if self._accept_signed is None:
                raise forbidden("Third-party invites are not available on this server")
            await self._accept_signed(room_id, signed["sender"], user_id, signed)
        extra = {
            k: v
            for k, v in body.items()
            if k not in ("reason", "third_party_signed", "third_party_invite", "membership")
        }
        await self.join(room_id, user_id, reason=reason, via=via, guest=guest, content=extra)

    async def join(
        self,
        room_id: str,
        user_id: str,
        *,
        reason: str | None = None,
        via: Sequence[str] = (),
        guest: bool = False,
        content: dict[str, Any] | None = None,
    ) -> Event | None:
        """Join; returns the new member event, or None when already joined unchanged.
        A guest may only join a room whose ``m.room.guest_access`` is ``can_join`` (spec:
        Guest access, server behaviour). A restricted room admits a user without an
        invite only if they are joined to one of the rooms its allow conditions name;
        this server then names a local member who can invite as the authoriser."""
        if self._is_blocked is not None and await self._is_blocked(room_id):
            raise forbidden("This room has been blocked on this server")
        given = {k: v for k, v in (content or {}).items() if k != AUTHORISER_KEY}
        new_content = _reason(
            {**(await self._profile(user_id)), **given, "membership": "join"}, reason
        )
        others = await self._reach_through_others(room_id)
        if others is not None and self._remote is not None:
            if guest and not await self._invited_guest_admitted(room_id, user_id):
                raise _guest_forbidden()
            if self._rate_limits is not None:
                await self._rate_limits.check_join(user_id, room_id, local=False)
            joined = await self._remote.join_room(room_id, user_id, [*via, *others], new_content)
            if self._after_remote_join is not None:
                try:
                    await self._after_remote_join(room_id)
                except Exception:  # the join itself succeeded
                    logger.exception("after joining %s", room_id)
            return joined
        if not await self._room_known(room_id):
            raise MatrixError(404, "M_NOT_FOUND", f"No known room {room_id}")
        state = await self._events.current_state_events(
            room_id, [*_JOIN_KEYS, ("m.room.member", user_id)]
        )
        if guest:
            access = state.get(("m.room.guest_access", ""))
            if access is None or access.content.get("guest_access") != "can_join":
                raise _guest_forbidden()
        existing = state.get(("m.room.member", user_id))
        current = existing.content.get("membership") if existing is not None else None
        if current == "join" and reason is None:
            if existing is not None and all(
                existing.content.get(k) == v for k, v in new_content.items()
            ):
                return None
        if current not in ("join", "invite"):
            authoriser = await self._restricted_join_authoriser(room_id, user_id, state)
            if authoriser is not None:
                new_content[AUTHORISER_KEY] = authoriser
        if current != "join" and self._rate_limits is not None:
            # Only a new join is limited: a profile change of a member is not a join.
            await self._rate_limits.check_join(user_id, room_id, local=True)
        return await self._events.send(room_id, user_id, "m.room.member", new_content, user_id)

    async def _invited_guest_admitted(self, room_id: str, user_id: str) -> bool:
        """Whether a guest may join a room of other servers: this server cannot read the
        room's state before joining, so only a pending invite whose stripped state (from the
        inviting server) has m.room.guest_access `can_join` admits them (Starling's invites
        carry it; an invite without it leaves the guest out)."""
        mine = await self._memberships.get_membership(room_id, user_id)
        if mine is None or mine.membership != "invite":
            return False
        invite = await self._events.get_event(mine.event_id)
        unsigned = invite.pdu.get("unsigned") if invite is not None else None
        stripped = unsigned.get("invite_room_state") if isinstance(unsigned, dict) else None
        if not isinstance(stripped, list):
            return False
        for event in stripped:
            if (
                isinstance(event, dict)
                and event.get("type") == "m.room.guest_access"
                and event.get("state_key") == ""
                and isinstance(event.get("content"), dict)
            ):
                return bool(event["content"].get("guest_access") == "can_join")
        return False

    async def _restricted_join_authoriser(
        self, room_id: str, user_id: str, state: dict[StateKey, Event]
    ) -> str | None:
        """For a join without an invite: None if the join rule is not restricted, the
        authorising user if the user meets an allow condition, else M_FORBIDDEN."""
        join_rules = state.get(("m.room.join_rules", ""))
        create = state.get(("m.room.create", ""))
        if join_rules is None or create is None:
            return None
        rules = create.room_version
        if not is_restricted(join_rules.content.get("join_rule"), rules):
            return None
        allowed = allowed_room_ids(join_rules.content)
        mine = await self._memberships.get_rooms_for_user(user_id)
        if not any(r in mine and mine[r].membership == "join" for r in allowed):
            raise forbidden("You are not joined to any of the rooms that admit members here")
        levels = PowerLevels.from_state(create, state.get(("m.room.power_levels", "")), rules)
        joined = await self._memberships.get_joined_users(room_id)
        authoriser = choose_authoriser(joined, levels, self._server_name)
        if authoriser is None:
            raise forbidden("No user of this server can authorise joining this room")
        return authoriser

    async def leave(self, room_id: str, user_id: str, reason: str | None = None) -> Event | None:
        if not await self._room_known(room_id):
            current = await self._memberships.get_membership(room_id, user_id)
            if (
                self._remote is not None
                and current is not None
                and current.membership in ("invite", "knock")
            ):
                # An invite from, or a knock through, another server: tell it.
                content = _reason({"membership": "leave"}, reason)
                return await self._remote.leave_room(room_id, user_id, content)
            raise MatrixError(404, "M_NOT_FOUND", f"No known room {room_id}")
        current = await self._memberships.get_membership(room_id, user_id)
        if current is None or current.membership in ("leave", "ban"):
            if current is not None and current.membership == "leave":
                return None  # already left: leaving again is a no-op, as in Synapse
            raise forbidden("You are not a member of this room")
        content = _reason({"membership": "leave"}, reason)
        return await self._events.send(room_id, user_id, "m.room.member", content, user_id)

    def use_invite_policy(self, policy: Callable[[str, str, str], Awaitable[str | None]]) -> None:
        self._invite_policy = policy

    async def invite_by_request(
        self, room_id: str, sender: str, target: str, reason: str | None, *, shadow_banned: bool
    ) -> None:
        """A client's invite (POST /invite). A shadow-banned sender's reaches nobody; they
        are told it worked (Synapse)."""
        if not shadow_banned:
            await self.invite(room_id, sender, target, reason=reason)

    async def invite(
        self,
        room_id: str,
        sender: str,
        target: str,
        *,
        reason: str | None = None,
        is_direct: bool = False,
        content: dict[str, Any] | None = None,
        ratelimit: bool = True,
    ) -> Event:
        """`ratelimit=False` for the invites of createRoom (as in Synapse)."""
        await self._require_room(room_id)
        current = await self._memberships.get_membership(room_id, target)
        if current is not None and current.membership == "join":
            raise forbidden(f"{target} is already in the room")
        if current is not None and current.membership == "ban":
            raise forbidden(f"{target} is banned from the room")
        if ratelimit and self._rate_limits is not None:
            await self._rate_limits.check_invite(sender, room_id, target)
        if self._invite_policy is not None and sender.endswith(":" + self._server_name):
            reason = await self._invite_policy(sender, target, room_id)
            if reason is not None:
                raise forbidden(reason)
        content = {**(await self._profile(target)), **(content or {}), "membership": "invite"}
        if is_direct:
            content["is_direct"] = True
        countersign = None
        if target.partition(":")[2] != self._server_name and self._remote is not None:
            # The invitee's server signs the invite before it is persisted (invite v2).
            countersign = self._remote.countersigned_invite
        return await self._events.send(
            room_id,
            sender,
            "m.room.member",
            _reason(content, reason),
            target,
            countersign=countersign,
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

    async def ban(
        self,
        room_id: str,
        sender: str,
        target: str,
        reason: str | None = None,
        *,
        content: dict[str, Any] | None = None,
    ) -> Event:
        await self._require_room(room_id)
        content = _reason({**(content or {}), "membership": "ban"}, reason)
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

    async def knock(
        self,
        room_id: str,
        user_id: str,
        reason: str | None = None,
        *,
        content: dict[str, Any] | None = None,
        via: Sequence[str] = (),
    ) -> Event:
        profile = await self._profile(user_id)
        content = _reason({**profile, **(content or {}), "membership": "knock"}, reason)
        others = await self._reach_through_others(room_id)
        if others is not None and self._remote is not None:
            return await self._remote.knock_room(room_id, user_id, [*via, *others], content)
        if not await self._room_known(room_id):
            raise MatrixError(404, "M_NOT_FOUND", f"No known room {room_id}")
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

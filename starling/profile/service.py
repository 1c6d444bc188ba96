"""Profiles (spec: client-server-api "Profiles").

Local users' display name and avatar URL live in the profiles table. Changing either
also updates the user's m.room.member event in every room they are joined to (one new
join event per room, carrying the new fields), as the spec's "Events on Change of
Profile Information" asks; a room where that fails is logged and skipped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starling.errors import MatrixError, forbidden, invalid_param, not_found
from starling.protocol.identifiers import is_valid_user_id
from starling.rooms.event_service import RoomEventService
from starling.storage.accounts import AccountStore
from starling.storage.memberships import MembershipStore
from starling.storage.profiles import ProfileStore

logger = logging.getLogger(__name__)

FIELDS = ("displayname", "avatar_url")
MAX_DISPLAYNAME_LENGTH = 256
MAX_AVATAR_URL_LENGTH = 1024
# Member-event keys a profile update does not copy from the current join event: the
# profile itself, and what belonged to that join only.
_NOT_CARRIED_OVER = frozenset({*FIELDS, "reason", "join_authorised_via_users_server"})
_MXC = re.compile(r"mxc://[A-Za-z0-9.:\[\]-]+/[A-Za-z0-9_-]+", re.ASCII)

# Looks up a remote user's profile over federation: (user_id, field or None) -> profile.
RemoteProfileLookup = Callable[[str, str | None], Awaitable[dict[str, Any]]]


def validate_field(field: str, value: Any) -> str | None:
    """The value to store for a field (None clears it), or M_INVALID_PARAM / M_BAD_JSON."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise MatrixError(400, "M_BAD_JSON", f"'{field}' must be a string")
    if field == "displayname":
        if len(value) > MAX_DISPLAYNAME_LENGTH:
            raise invalid_param(
                f"'displayname' must be at most {MAX_DISPLAYNAME_LENGTH} characters"
            )
        return value
    if len(value) > MAX_AVATAR_URL_LENGTH or not _MXC.fullmatch(value):
        raise invalid_param("'avatar_url' must be an mxc:// URI")
    return value


class ProfileService:
    def __init__(
        self,
        server_name: str,
        profiles: ProfileStore,
        accounts: AccountStore,
        memberships: MembershipStore,
        room_events: RoomEventService,
        remote_lookup: RemoteProfileLookup | None = None,
    ) -> None:
        self._server_name = server_name
        self._profiles = profiles
        self._accounts = accounts
        self._memberships = memberships
        self._room_events = room_events
        self._remote_lookup = remote_lookup

    def is_local(self, user_id: str) -> bool:
        return user_id.endswith(":" + self._server_name)

    async def get_profile(self, user_id: str) -> dict[str, Any]:
        """GET /profile/{userId}: the set fields; 404 for an unknown user."""
        if not is_valid_user_id(user_id):
            raise invalid_param(f"{user_id!r} is not a user ID")
        if not self.is_local(user_id):
            if self._remote_lookup is None:
                raise not_found("Profile not found")
            return await self._remote_lookup(user_id, None)
        profile = await self._profiles.get_profile(user_id)
        if profile is None and not await self._accounts.user_exists(user_id):
            raise not_found("Profile not found")
        return profile or {}

    async def get_field(self, user_id: str, field: str) -> dict[str, Any]:
        """GET /profile/{userId}/{field}: {field: value}; 404 when unset or unknown."""
        if field not in FIELDS:
            raise not_found(f"Profile field {field!r} not found")
        if not self.is_local(user_id) and self._remote_lookup is not None:
            profile = await self._remote_lookup(user_id, field)
        else:
            profile = await self.get_profile(user_id)
        if profile.get(field) is None:
            raise not_found(f"Profile field {field!r} not set")
        return {field: profile[field]}

    async def set_field(self, requester: str, user_id: str, field: str, raw_value: Any) -> None:
        """PUT /profile/{userId}/{field}: only for yourself; then update your rooms."""
        if field not in FIELDS:
            raise invalid_param(f"Profile field {field!r} cannot be set on this server")
        if requester != user_id:
            raise forbidden("You can only change your own profile")
        value = validate_field(field, raw_value)
        current = await self._profiles.get_profile(user_id)
        if current is None and not await self._accounts.user_exists(user_id):
            raise not_found("Profile not found")
        await self._profiles.set_field(user_id, field, value)
        if (current or {}).get(field) != value:
            await self.propagate(user_id)

    async def member_fields(self, user_id: str) -> dict[str, Any]:
        """The profile fields a new m.room.member join event carries."""
        return await self._profiles.get_profile(user_id) or {}

    async def propagate(self, user_id: str) -> int:
        """A new join event with the current profile in each joined room whose member
        event differs; returns how many were sent. Failures are logged, not raised."""
        profile = await self.member_fields(user_id)
        sent = 0
        for room_id in sorted(await self._memberships.get_joined_rooms(user_id)):
            try:
                state = await self._room_events.current_state_events(
                    room_id, [("m.room.member", user_id)]
                )
                member = state.get(("m.room.member", user_id))
                if member is None or member.membership != "join":
                    continue
                content = {k: v for k, v in member.content.items() if k not in _NOT_CARRIED_OVER}
                content.update({k: v for k, v in profile.items() if k in FIELDS})
                if content == member.content:
                    continue
                await self._room_events.send(room_id, user_id, "m.room.member", content, user_id)
                sent += 1
            except Exception:
                logger.exception("updating %s's member event in %s failed", user_id, room_id)
        return sent

"""Other servers' queries about this server's names (Server-Server API > Querying for
information): `/query/directory` (one of our room aliases) and `/query/profile` (one of
our users). Only local names are answered: a server never relays questions about names
it does not own (that would turn it into an amplifier of lookups elsewhere).
"""

from __future__ import annotations

from typing import Any, Protocol

from starling.errors import MatrixError, invalid_param, not_found
from starling.protocol.power_levels import server_of


class _Directory(Protocol):
    async def resolve_alias(self, alias: str) -> dict[str, Any]: ...


class _Profiles(Protocol):
    async def get_profile(self, user_id: str) -> dict[str, Any]: ...


PROFILE_FIELDS = ("displayname", "avatar_url")


class FederationQueries:
    def __init__(self, server_name: str, directory: _Directory, profiles: _Profiles) -> None:
        self._server_name = server_name
        self._directory = directory
        self._profiles = profiles

    async def directory(self, room_alias: str) -> dict[str, Any]:
        """{room_id, servers} for one of our aliases; 404 M_NOT_FOUND otherwise."""
        if server_of(room_alias) != self._server_name:
            raise not_found(f"Room alias {room_alias} is not on this server")
        return await self._directory.resolve_alias(room_alias)

    async def profile(self, user_id: str, field: str | None) -> dict[str, Any]:
        """One of our users' profile (or one field of it; `{}` when that field is not set,
        as Synapse answers); 404 M_NOT_FOUND for a user we do not have."""
        if field is not None and field not in PROFILE_FIELDS:
            raise invalid_param(f"Unknown profile field {field!r}")
        if server_of(user_id) != self._server_name:
            raise not_found(f"User {user_id} is not on this server")
        try:
            profile = await self._profiles.get_profile(user_id)
        except MatrixError as e:
            if e.status == 400:
                raise not_found(f"User {user_id} not found") from None
            raise
        if field is None:
            return {k: v for k, v in profile.items() if v is not None}
        if profile.get(field) is None:
            return {}
        return {field: profile[field]}

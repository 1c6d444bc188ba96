"""Restricted joins (room versions 8+, `knock_restricted` 10+): which rooms admit a user,
and which joined user may authorise the join.

Spec: client-server-api "Restricted rooms" (the `m.room_membership` allow condition),
server-server-api "Restricted rooms", and auth rule 4.3.5 of room version 8: the
`join_authorised_via_users_server` of a join must be a joined member who can invite.
The server that accepts such a join checks the conditions itself and names the
authoriser itself; a client's choice is never taken. Pure: callers supply the state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from starling.protocol.power_levels import PowerLevels, server_of
from starling.protocol.room_versions import RoomVersion

AUTHORISER_KEY = "join_authorised_via_users_server"
# The allow list is read from room state any member with the power may set: bound the
# work one join does with it.
MAX_ALLOW_CONDITIONS = 64


def is_restricted(join_rule: Any, rules: RoomVersion) -> bool:
    """Whether a join under this join rule needs the allow conditions (or an invite)."""
    return (join_rule == "restricted" and rules.restricted_joins) or (
        join_rule == "knock_restricted" and rules.knock_restricted
    )


def allowed_room_ids(join_rules_content: Mapping[str, Any]) -> list[str]:
    """The rooms whose joined members may join, from the `m.room_membership` conditions
    of `allow`; conditions of unknown type or shape are skipped (they admit nobody)."""
    allow = join_rules_content.get("allow")
    if not isinstance(allow, list):
        return []
    rooms: list[str] = []
    for condition in allow[:MAX_ALLOW_CONDITIONS]:
        if not isinstance(condition, dict) or condition.get("type") != "m.room_membership":
            continue
        room_id = condition.get("room_id")
        if isinstance(room_id, str) and room_id.startswith("!") and room_id not in rooms:
            rooms.append(room_id)
    return rooms


def choose_authoriser(
    joined_users: Iterable[str], levels: PowerLevels, server_name: str
) -> str | None:
    """A joined user of `server_name` who can invite: the most powerful, ties broken by
    user ID so the choice is stable. None if this server has nobody who can."""
    candidates = [
        u
        for u in joined_users
        if server_of(u) == server_name and levels.user_level(u) >= levels.invite
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda u: (-levels.user_level(u), u))

"""Which rooms and events another server may touch.

* Server ACLs (`m.room.server_acl`, Client-Server API > Server Access Control Lists;
  Server-Server API > Server Access Control Lists): applied to every inbound path that
  names a room, against the room's current state. Matching ignores the port; globs are
  matched in linear time (`*`, `?`), so a hostile ACL cannot make a check expensive.
* Taking part in a room: a server is in a room when one of its users is joined.
* History visibility for a server (what Synapse calls filter_events_for_server): an
  event is visible to a server when the room's history_visibility at the event is
  `shared` or `world_readable`, or one of the server's users was joined (or, for
  `invited`, invited) at that point. Events a server may not see are served to it
  redacted where the DAG needs them (backfill, missing events) and not at all by /event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from starling.errors import MatrixError
from starling.protocol.event import Event, StateKey
from starling.protocol.power_levels import server_of
from starling.protocol.server_acl import server_allowed

ACL_KEY: StateKey = ("m.room.server_acl", "")
HISTORY_KEY: StateKey = ("m.room.history_visibility", "")


def acl_allows(content: Mapping[str, Any] | None, server_name: str) -> bool:
    """Whether an `m.room.server_acl` content (None: no ACL) lets `server_name` in
    (`protocol/server_acl.py` holds the rules)."""
    return server_allowed(content, server_name)


class _Events(Protocol):
    async def get_events(
        self, event_ids: Iterable[str], allow_rejected: bool = False
    ) -> Mapping[str, Event]: ...

    async def get_state_ids_before(self, event_id: str) -> Mapping[StateKey, str] | None: ...


class _State(Protocol):
    async def get_current_state_ids(self, room_id: str) -> Mapping[StateKey, str]: ...


class _Members(Protocol):
    async def get_joined_users(self, room_id: str) -> frozenset[str]: ...


class RoomAccess:
    def __init__(self, events: _Events, state: _State, memberships: _Members) -> None:
        self._events = events
        self._state = state
        self._memberships = memberships

    async def server_allowed(self, room_id: str, server_name: str) -> bool:
        """The room's current server ACL lets `server_name` in (no ACL: yes)."""
        current = await self._state.get_current_state_ids(room_id)
        acl_id = current.get(ACL_KEY)
        if acl_id is None:
            return True
        acl = (await self._events.get_events([acl_id])).get(acl_id)
        return acl_allows(acl.content if acl is not None else None, server_name)

    async def server_in_room(self, room_id: str, server_name: str) -> bool:
        joined = await self._memberships.get_joined_users(room_id)
        return any(server_of(u) == server_name for u in joined)

    async def check_origin(self, room_id: str, origin: str) -> None:
        """403 M_FORBIDDEN unless `origin` passes the room's ACL and is in the room."""
        if not await self.server_allowed(room_id, origin):
            raise MatrixError(403, "M_FORBIDDEN", f"Server {origin} is denied by the room's ACL")
        if not await self.server_in_room(room_id, origin):
            raise MatrixError(403, "M_FORBIDDEN", f"Server {origin} is not in room {room_id}")

    async def visible_to_server(self, server_name: str, events: Sequence[Event]) -> set[str]:
        """IDs of the `events` whose history `server_name` may see."""
        visible: set[str] = set()
        for event in events:
            state = await self._events.get_state_ids_before(event.event_id)
            if state is None:
                # An outlier: we hold no state at it. It reached us as auth or state
                # of a room the server is in (callers check that), so it is shared.
                visible.add(event.event_id)
                continue
            if await self._visible_at(server_name, event, state):
                visible.add(event.event_id)
        return visible

    async def _visible_at(
        self, server_name: str, event: Event, state: Mapping[StateKey, str]
    ) -> bool:
        hv_id = state.get(HISTORY_KEY)
        visibility = "shared"
        wanted = [hv_id] if hv_id is not None else []
        members = [
            eid
            for (etype, sk), eid in state.items()
            if etype == "m.room.member" and server_of(sk) == server_name
        ]
        loaded = await self._events.get_events([*wanted, *members])
        if hv_id is not None and hv_id in loaded:
            value = loaded[hv_id].content.get("history_visibility")
            if isinstance(value, str):
                visibility = value
        if visibility in ("shared", "world_readable"):
            return True
        memberships = {loaded[m].membership for m in members if m in loaded}
        if (
            event.type == "m.room.member"
            and event.state_key is not None
            and server_of(event.state_key) == server_name
        ):
            memberships.add(event.membership)
        if "join" in memberships:
            return True
        return visibility == "invited" and "invite" in memberships

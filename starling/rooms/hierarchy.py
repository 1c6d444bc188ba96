"""GET /rooms/{roomId}/hierarchy: the tree of a space (spec: client-server-api "Spaces",
#get_matrixclientv1roomsroomidhierarchy).

The walk is depth first from the requested room, following the `m.space.child` state
events (those with a non-empty `via`) of space rooms, each space's children in the
spec's order ("Ordering of children within a space"): a valid `order` first, then the
child event's origin_server_ts, then the room ID. A room appears once. Rooms the user
can neither see nor join are left out (with their subtree); the requested room itself
answers 403 then. Which rooms a user may see follows the spec's list: joined or
invited, a public join rule, a restricted rule the user meets, a knockable room, or
world-readable history — and never a room they are banned from.

Only rooms this server is in are walked: remote children need federation, and are
skipped. Pagination keeps the rest of the walk (the stack of rooms to visit and the
rooms seen) in memory under a random token for a while, as Synapse keeps its sessions;
a token from another request, or one that has expired, is 400 M_INVALID_PARAM.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starling.errors import MatrixError, forbidden, invalid_param
from starling.protocol.event import Event, StateKey
from starling.rooms.event_service import RoomEventService
from starling.storage.events import EventStore
from starling.storage.memberships import MembershipStore

JsonDict = dict[str, Any]

SPACE_CHILD = "m.space.child"
SPACE = "m.space"
DEFAULT_LIMIT = 50
MAX_LIMIT = 50
SESSION_SECONDS = 300
MAX_SESSIONS = 1000
MAX_ORDER_LENGTH = 50


@dataclass
class _Walk:
    """A paginated walk: who asked, with which parameters, and what is left."""

    user_id: str
    root: str
    suggested_only: bool
    max_depth: int | None
    stack: list[tuple[str, int]]
    seen: set[str] = field(default_factory=set)
    created: float = field(default_factory=time.monotonic)


def _valid_order(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= MAX_ORDER_LENGTH
        and all(0x20 <= ord(c) <= 0x7E for c in value)
    )


def _child_sort_key(event: Event) -> tuple[int, str, int, str]:
    order = event.content.get("order")
    if _valid_order(order):
        return (0, str(order), event.origin_server_ts, event.state_key or "")
    return (1, "", event.origin_server_ts, event.state_key or "")


def _valid_via(event: Event) -> bool:
    via = event.content.get("via")
    return isinstance(via, list) and bool(via) and all(isinstance(s, str) and s for s in via)


def _text(state: Mapping[StateKey, Event], event_type: str, key: str) -> str | None:
    event = state.get((event_type, ""))
    value = event.content.get(key) if event is not None else None
    return value if isinstance(value, str) and value else None


class SpaceHierarchy:
    def __init__(
        self,
        room_events: RoomEventService,
        events: EventStore,
        memberships: MembershipStore,
    ) -> None:
        self._room_events = room_events
        self._events = events
        self._memberships = memberships
        self._walks: OrderedDict[str, _Walk] = OrderedDict()

    async def hierarchy(
        self,
        user_id: str,
        room_id: str,
        *,
        suggested_only: bool,
        max_depth: int | None,
        limit: int,
        from_token: str | None,
    ) -> JsonDict:
        if from_token is not None:
            walk = self._take_walk(from_token)
            if walk is None or walk.user_id != user_id or walk.root != room_id:
                raise invalid_param("Unknown pagination token")
            if walk.suggested_only != suggested_only or walk.max_depth != max_depth:
                raise invalid_param(
                    "suggested_only and max_depth cannot change on paginated requests"
                )
        else:
            state = await self._local_state(room_id)
            if state is None or not await self._accessible(user_id, room_id, state):
                raise forbidden(f"You cannot view room {room_id}")
            walk = _Walk(user_id, room_id, suggested_only, max_depth, [(room_id, 0)])

        rooms: list[JsonDict] = []
        while walk.stack and len(rooms) < limit:
            current, depth = walk.stack.pop()
            if current in walk.seen:
                continue
            walk.seen.add(current)
            state = await self._local_state(current)
            if state is None:
                continue  # a remote room: needs federation
            if current != walk.root and not await self._accessible(user_id, current, state):
                continue
            children = self._children(state, walk.suggested_only)
            rooms.append(await self._entry(current, state, children))
            if walk.max_depth is None or depth < walk.max_depth:
                for child in reversed(children):
                    child_id = child.state_key or ""
                    if child_id not in walk.seen:
                        walk.stack.append((child_id, depth + 1))

        body: JsonDict = {"rooms": rooms}
        if walk.stack:
            body["next_batch"] = self._keep_walk(walk)
        return body

    # --- sessions ------------------------------------------------------------------------

    def _keep_walk(self, walk: _Walk) -> str:
        token = secrets.token_urlsafe(16)
        self._walks[token] = walk
        while len(self._walks) > MAX_SESSIONS:
            self._walks.popitem(last=False)
        return token

    def _take_walk(self, token: str) -> _Walk | None:
        now = time.monotonic()
        while self._walks:
            oldest = next(iter(self._walks.values()))
            if now - oldest.created <= SESSION_SECONDS:
                break
            self._walks.popitem(last=False)
        # Left in place: a client may repeat a request (each page gets a new token).
        walk = self._walks.get(token)
        if walk is None:
            return None
        return _Walk(
            walk.user_id,
            walk.root,
            walk.suggested_only,
            walk.max_depth,
            list(walk.stack),
            set(walk.seen),
            walk.created,
        )

    # --- rooms ---------------------------------------------------------------------------

    async def _local_state(self, room_id: str) -> dict[StateKey, Event] | None:
        if not room_id.startswith("!") or await self._events.get_room_version(room_id) is None:
            return None
        try:
            state = await self._room_events.current_state_events(room_id)
        except MatrixError:
            return None
        return state if ("m.room.create", "") in state else None

    async def _accessible(
        self, user_id: str, room_id: str, state: Mapping[StateKey, Event]
    ) -> bool:
        member = state.get(("m.room.member", user_id))
        membership = member.membership if member is not None else None
        if membership == "ban":
            return False
        if membership in ("join", "invite"):
            return True
        if _text(state, "m.room.history_visibility", "history_visibility") == "world_readable":
            return True
        join_rule = _text(state, "m.room.join_rules", "join_rule")
        if join_rule in ("public", "knock", "knock_restricted"):
            return True
        if join_rule == "restricted":
            allowed = self._allowed_rooms(state)
            if allowed:
                joined = set(await self._memberships.get_joined_rooms(user_id))
                return any(r in joined for r in allowed)
        return False

    @staticmethod
    def _allowed_rooms(state: Mapping[StateKey, Event]) -> list[str]:
        event = state.get(("m.room.join_rules", ""))
        allow = event.content.get("allow") if event is not None else None
        if not isinstance(allow, list):
            return []
        return [
            a["room_id"]
            for a in allow
            if isinstance(a, dict)
            and a.get("type") == "m.room_membership"
            and isinstance(a.get("room_id"), str)
        ]

    @staticmethod
    def _children(state: Mapping[StateKey, Event], suggested_only: bool) -> list[Event]:
        create = state[("m.room.create", "")]
        if create.content.get("type") != SPACE:
            return []  # only spaces have children (spec: children_state)
        children = [
            event
            for (event_type, _), event in state.items()
            if event_type == SPACE_CHILD
            and _valid_via(event)
            and (not suggested_only or event.content.get("suggested") is True)
        ]
        children.sort(key=_child_sort_key)
        return children

    async def _entry(
        self, room_id: str, state: Mapping[StateKey, Event], children: list[Event]
    ) -> JsonDict:
        joined = await self._memberships.count_joined([room_id])
        create = state[("m.room.create", "")]
        entry: JsonDict = {
            "room_id": room_id,
            "num_joined_members": joined.get(room_id, 0),
            "world_readable": _text(state, "m.room.history_visibility", "history_visibility")
            == "world_readable",
            "guest_can_join": _text(state, "m.room.guest_access", "guest_access") == "can_join",
            "join_rule": _text(state, "m.room.join_rules", "join_rule") or "invite",
            "room_version": create.room_version.identifier,
            "children_state": [
                {
                    "type": e.type,
                    "state_key": e.state_key,
                    "content": e.content,
                    "sender": e.sender,
                    "origin_server_ts": e.origin_server_ts,
                }
                for e in children
            ],
        }
        for key, (event_type, field_name) in {
            "name": ("m.room.name", "name"),
            "topic": ("m.room.topic", "topic"),
            "canonical_alias": ("m.room.canonical_alias", "alias"),
            "avatar_url": ("m.room.avatar", "url"),
            "encryption": ("m.room.encryption", "algorithm"),
        }.items():
            value = _text(state, event_type, field_name)
            if value is not None:
                entry[key] = value
        room_type = create.content.get("type")
        if isinstance(room_type, str):
            entry["room_type"] = room_type
        if entry["join_rule"] in ("restricted", "knock_restricted"):
            entry["allowed_room_ids"] = self._allowed_rooms(state)
        return entry

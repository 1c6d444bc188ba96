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

Children this server is not in are asked of the servers their `m.space.child` event
names in `via` (server-server-api GET /hierarchy/{roomId}): the answer's room is shown if
the user may see it by what the answer says (a public or knockable join rule, world-
readable history, a restricted rule naming a room the user is in) or by their own
invite; the children summarised in one answer serve the walk without asking again
(unless they are spaces whose children are still needed); children an answer calls
inaccessible are not asked about. What one server says is used only for that room and
its own children, never for rooms met elsewhere in the walk. The walk's root must be a room this server is in.

Pagination keeps the rest of the walk (the stack of rooms to visit, the rooms seen and
what other servers said) in memory under a random token for a while, as Synapse keeps
its sessions; a token from another request, or one that has expired, is 400
M_INVALID_PARAM.

Other servers get `for_server`: one level of the tree (the room and its children that
this server is in), for a server that passes the room's ACL and could see the room
(public, knockable or world-readable, or one of its users joined or invited, or in a
room a restricted join rule names); the rest is 404 as for an unknown room.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starling.errors import MatrixError, forbidden, invalid_param, not_found
from starling.protocol.event import Event, StateKey
from starling.protocol.power_levels import server_of
from starling.rooms.event_service import RoomEventService
from starling.rooms.hierarchy_remote import RemoteHierarchyFetcher, parse_answer
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
# Servers of a child's `via` asked about it, and children summarised for a server.
MAX_VIA = 3
MAX_CHILDREN_FOR_SERVER = 50
VISIBLE_JOIN_RULES = ("public", "knock", "knock_restricted")


@dataclass
class _Walk:
    """A paginated walk: who asked, with which parameters, and what is left."""

    user_id: str
    root: str
    suggested_only: bool
    max_depth: int | None
    # (room ID, depth, the servers to ask about it if this server is not in it, and the
    # summary of it its parent's server gave, if any)
    stack: list[tuple[str, int, tuple[str, ...], JsonDict | None]]
    seen: set[str] = field(default_factory=set)
    created: float = field(default_factory=time.monotonic)


def _valid_order(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= MAX_ORDER_LENGTH
        and all(0x20 <= ord(c) <= 0x7E for c in value)
    )


def _child_sort_key(event: Event) -> tuple[int, str, int, str]:
    return _order_key(event.content.get("order"), event.origin_server_ts, event.state_key or "")


def _order_key(order: object, ts: int, state_key: str) -> tuple[int, str, int, str]:
    if _valid_order(order):
        return (0, str(order), ts, state_key)
    return (1, "", ts, state_key)


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
        *,
        server_name: str = "",
        remote: RemoteHierarchyFetcher | None = None,
        server_allowed: Callable[[str, str], Awaitable[bool]] | None = None,
    ) -> None:
        self._room_events = room_events
        self._events = events
        self._memberships = memberships
        self._server_name = server_name
        # Asks another server about a room we are not in (None: never).
        self._remote = remote
        # The room's server ACL lets a server in (room ID, server name).
        self._server_allowed = server_allowed
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
            walk = _Walk(user_id, room_id, suggested_only, max_depth, [(room_id, 0, (), None)])

        rooms: list[JsonDict] = []
        while walk.stack and len(rooms) < limit:
            current, depth, via, known = walk.stack.pop()
            if current in walk.seen:
                continue
            walk.seen.add(current)
            state = await self._local_state(current)
            # What the server of a remote room said about its children (theirs only: one
            # server's answer never speaks for rooms elsewhere in the walk).
            child_summaries: dict[str, JsonDict] = {}
            inaccessible: set[str] = set()
            if state is None:
                found = await self._remote_entry(walk, current, depth, via, known)
                if found is None:
                    continue
                entry, child_summaries, inaccessible = found
            else:
                if current != walk.root and not await self._accessible(user_id, current, state):
                    continue
                entry = await self._entry(
                    current, state, self._children(state, walk.suggested_only)
                )
            rooms.append(entry)
            if walk.max_depth is None or depth < walk.max_depth:
                for child in reversed(entry["children_state"]):
                    child_id = child["state_key"]
                    if child_id not in walk.seen and child_id not in inaccessible:
                        walk.stack.append(
                            (
                                child_id,
                                depth + 1,
                                tuple(child["content"]["via"]),
                                child_summaries.get(child_id),
                            )
                        )

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

    # --- rooms of other servers ----------------------------------------------------------

    async def _remote_entry(
        self,
        walk: _Walk,
        room_id: str,
        depth: int,
        via: tuple[str, ...],
        known: JsonDict | None,
    ) -> tuple[JsonDict, dict[str, JsonDict], set[str]] | None:
        """A room this server is not in, as its servers describe it, if the user may see
        it (with the summaries of its children and the children not to ask about, from
        the same answer); None otherwise. `known`: its parent's server's summary of it,
        enough unless it is a space whose children are still wanted."""
        if self._remote is None:
            return None
        summary: JsonDict | None = None
        children: dict[str, JsonDict] = {}
        inaccessible: set[str] = set()
        at_max_depth = walk.max_depth is not None and depth >= walk.max_depth
        if known is not None and (known.get("room_type") != SPACE or at_max_depth):
            summary = {**known, "children_state": []}
        else:
            asked = [s for s in dict.fromkeys(via) if s != self._server_name][:MAX_VIA]
            for server in asked:
                parsed = parse_answer(
                    await self._remote(server, room_id, walk.suggested_only), room_id
                )
                if parsed is None:
                    continue
                summary, children, inaccessible = parsed
                break
        if summary is None or not await self._remote_accessible(walk.user_id, summary):
            return None
        children_state = summary.get("children_state", [])
        if summary.get("room_type") != SPACE:
            children_state = []
        children_state = [
            c
            for c in children_state
            if not walk.suggested_only or c["content"].get("suggested") is True
        ]
        children_state.sort(
            key=lambda c: _order_key(
                c["content"].get("order"), c["origin_server_ts"], c["state_key"]
            )
        )
        named = {c["state_key"] for c in children_state}
        return (
            {**summary, "children_state": children_state},
            {k: v for k, v in children.items() if k in named},
            inaccessible & named,
        )

    async def _remote_accessible(self, user_id: str, summary: JsonDict) -> bool:
        if summary.get("join_rule") in VISIBLE_JOIN_RULES or summary.get("world_readable"):
            return True
        allowed = summary.get("allowed_room_ids") or []
        if allowed:
            joined = set(await self._memberships.get_joined_rooms(user_id))
            if any(r in joined for r in allowed):
                return True
        member = await self._memberships.get_membership(summary["room_id"], user_id)
        return member is not None and member.membership in ("join", "invite")

    # --- room summaries (spec v1.15 /room_summary, MSC3266) ---------------------------------

    async def summary(self, user_id: str | None, room_id: str, via: Sequence[str]) -> JsonDict:
        """One room's summary, as the hierarchy's entry for it (without children): from
        the local state when this server is in the room, else from the first of `via`
        that describes it (server-server /hierarchy). Shown to whoever may see the room
        in a hierarchy; without a user (unauthenticated), only for public, knockable or
        world-readable rooms. Anything else is 404, as for an unknown room."""
        state = await self._local_state(room_id)
        entry: JsonDict | None = None
        if state is not None:
            if user_id is None:
                visible = _text(
                    state, "m.room.history_visibility", "history_visibility"
                ) == "world_readable" or _text(state, "m.room.join_rules", "join_rule") in (
                    VISIBLE_JOIN_RULES
                )
            else:
                visible = await self._accessible(user_id, room_id, state)
            if visible:
                entry = await self._entry(room_id, state, [])
        elif self._remote is not None:
            for server in [s for s in dict.fromkeys(via) if s != self._server_name][:MAX_VIA]:
                parsed = parse_answer(await self._remote(server, room_id, False), room_id)
                if parsed is None:
                    continue
                remote = parsed[0]
                if user_id is None:
                    visible = remote.get("join_rule") in VISIBLE_JOIN_RULES or bool(
                        remote.get("world_readable")
                    )
                else:
                    visible = await self._remote_accessible(user_id, remote)
                if visible:
                    entry = dict(remote)
                break
        if entry is None:
            raise not_found("Room not found or not accessible")
        entry.pop("children_state", None)
        if user_id is not None:
            member = await self._memberships.get_membership(room_id, user_id)
            entry["membership"] = member.membership if member is not None else "leave"
        return entry

    # --- for other servers ---------------------------------------------------------------

    async def for_server(self, origin: str, room_id: str, suggested_only: bool) -> JsonDict:
        """GET /_matrix/federation/v1/hierarchy/{roomId}: the room and the children this
        server is in, as far as `origin` may see them."""
        state = await self._local_state(room_id)
        if state is None or not await self._server_may_see(origin, room_id, state):
            raise not_found(f"Unknown room: {room_id}")
        children = self._children(state, suggested_only)
        room = await self._entry(room_id, state, children)
        summaries: list[JsonDict] = []
        inaccessible: list[str] = []
        for child in children[:MAX_CHILDREN_FOR_SERVER]:
            child_id = child.state_key or ""
            child_state = await self._local_state(child_id)
            if child_state is None:
                continue  # not ours to describe
            if await self._server_may_see(origin, child_id, child_state):
                summary = await self._entry(child_id, child_state, [])
                del summary["children_state"]
                summaries.append(summary)
            else:
                inaccessible.append(child_id)
        return {"room": room, "children": summaries, "inaccessible_children": inaccessible}

    async def _server_may_see(
        self, server: str, room_id: str, state: Mapping[StateKey, Event]
    ) -> bool:
        if self._server_allowed is not None and not await self._server_allowed(room_id, server):
            return False
        if _text(state, "m.room.join_rules", "join_rule") in VISIBLE_JOIN_RULES:
            return True
        if _text(state, "m.room.history_visibility", "history_visibility") == "world_readable":
            return True
        for (event_type, state_key), event in state.items():
            if (
                event_type == "m.room.member"
                and server_of(state_key) == server
                and event.membership in ("join", "invite")
            ):
                return True
        if _text(state, "m.room.join_rules", "join_rule") in ("restricted", "knock_restricted"):
            for allowed in self._allowed_rooms(state):
                joined = await self._memberships.get_joined_users(allowed)
                if any(server_of(u) == server for u in joined):
                    return True
        return False

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

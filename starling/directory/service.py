"""Room aliases and the room directory (spec: client-server-api "Room aliases",
"Listing rooms").

Aliases: only this server's aliases can be created here; the creator must be in the
room (server admins and application services need not be). An alias in an application
service's exclusive namespace is that service's alone (M_EXCLUSIVE for anyone else), and
an unknown alias in a service's namespace is asked of the service before it is 404. An alias may be deleted by its creator, a server
admin, or anyone allowed to change the room's m.room.canonical_alias; the canonical
alias event is then updated if it named the alias (as Synapse does).

Publishing: room moderators (whoever may send m.room.canonical_alias, as in Synapse)
and server admins can publish or unpublish a room. The published list is kept as an
in-memory index of directory entries, filled in one batch query for all rooms it lacks
and refreshed for rooms whose directory state or membership changed (a new-event
listener marks them), so /publicRooms costs no database work when nothing changed.
Rooms are listed largest first, then by room ID; tokens are positions in that order.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from starling.accounts.auth import Requester
from starling.appservice.registry import AppServiceRegistry, exclusive_error
from starling.directory.publication import PublicationRules
from starling.errors import MatrixError, bad_json, forbidden, invalid_param, not_found
from starling.protocol.event import Event
from starling.protocol.identifiers import is_valid_room_alias, is_valid_room_id
from starling.protocol.numbers import parse_int
from starling.protocol.power_levels import PowerLevels
from starling.rooms.event_service import RoomEventService, user_power
from starling.storage.aliases import AliasExists, AliasStore
from starling.storage.directory import DIRECTORY_STATE_TYPES, DirectoryStore
from starling.storage.events import EventStore
from starling.storage.memberships import MembershipStore

logger = logging.getLogger(__name__)

MAX_ALIAS_LENGTH = 255
DEFAULT_PUBLIC_ROOMS_LIMIT = 100
MAX_PUBLIC_ROOMS_LIMIT = 500
MAX_SEARCH_TERM_LENGTH = 256
_RELEVANT = frozenset({*DIRECTORY_STATE_TYPES, "m.room.member"})


@dataclass(frozen=True, slots=True)
class PublicRoomsFilter:
    """The `filter` of a POST /publicRooms (client or federation)."""

    search: str | None = None  # generic_search_term, stripped; None for none
    room_types: list[str | None] | None = None

    @classmethod
    def from_body(cls, raw: Any, max_term_length: int) -> PublicRoomsFilter:
        """Parses the filter object (None: no filter); 400 for a malformed one."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise bad_json("'filter' must be an object")
        term = raw.get("generic_search_term")
        if term is not None and not isinstance(term, str):
            raise bad_json("'generic_search_term' must be a string")
        if term is not None and len(term) > max_term_length:
            raise invalid_param(f"The search term is longer than {max_term_length}")
        room_types = raw.get("room_types")
        if room_types is not None and (
            not isinstance(room_types, list)
            or not all(t is None or isinstance(t, str) for t in room_types)
        ):
            raise bad_json("'room_types' must be a list of strings or nulls")
        return cls(term.strip() if term else None, room_types)


# Fetches another server's directory: (server, limit, since, filter) -> response.
RemotePublicRooms = Callable[
    [str, int | None, str | None, dict[str, Any]], Awaitable[dict[str, Any]]
]


# Resolves another server's room alias over federation: alias -> (room ID, servers).
class RemoteAliasLookup(Protocol):
    """Asks the alias's server (`fresh`: not from a recent answer)."""

    def __call__(self, alias: str, *, fresh: bool = False) -> Awaitable[tuple[str, list[str]]]: ...


# Asks the application services whose namespace holds a local alias to create it.
AliasQuery = Callable[[str], Awaitable[bool]]


def _entry(room_id: str, state: dict[str, dict[str, Any]], joined: int) -> dict[str, Any]:
    """A publicRooms chunk entry from the room's directory state."""
    entry: dict[str, Any] = {"room_id": room_id, "num_joined_members": joined}

    def text(event_type: str, key: str) -> str | None:
        value = state.get(event_type, {}).get(key)
        return value if isinstance(value, str) and value else None

    for key, (event_type, field) in {
        "name": ("m.room.name", "name"),
        "topic": ("m.room.topic", "topic"),
        "canonical_alias": ("m.room.canonical_alias", "alias"),
        "avatar_url": ("m.room.avatar", "url"),
        "room_type": ("m.room.create", "type"),
    }.items():
        value = text(event_type, field)
        if value is not None:
            entry[key] = value
    entry["join_rule"] = text("m.room.join_rules", "join_rule") or "invite"
    entry["world_readable"] = (
        text("m.room.history_visibility", "history_visibility") == "world_readable"
    )
    entry["guest_can_join"] = text("m.room.guest_access", "guest_access") == "can_join"
    return entry


def _sort_key(entry: dict[str, Any]) -> tuple[int, str]:
    return (-int(entry["num_joined_members"]), str(entry["room_id"]))


def _token(direction: str, entry: dict[str, Any]) -> str:
    return f"{direction}{entry['num_joined_members']}_{entry['room_id']}"


def _parse_token(token: str) -> tuple[str, tuple[int, str]]:
    direction, rest = token[:1], token[1:]
    count, sep, room_id = rest.partition("_")
    members = parse_int(count, minimum=0)
    if direction not in ("n", "p") or not sep or members is None or not room_id:
        raise invalid_param("Invalid pagination token")
    return direction, (-members, room_id)


def _matches(entry: dict[str, Any], term: str) -> bool:
    return any(
        term in str(entry.get(key, "")).casefold() for key in ("name", "topic", "canonical_alias")
    )


class DirectoryService:
    def __init__(
        self,
        server_name: str,
        aliases: AliasStore,
        directory: DirectoryStore,
        memberships: MembershipStore,
        events: EventStore,
        room_events: RoomEventService,
        remote_public_rooms: RemotePublicRooms | None = None,
        remote_alias_lookup: RemoteAliasLookup | None = None,
        publication_rules: PublicationRules | None = None,
    ) -> None:
        self._server_name = server_name
        self._publication_rules = publication_rules or PublicationRules(None)
        self._aliases = aliases
        self._directory = directory
        self._memberships = memberships
        self._events = events
        self._room_events = room_events
        self._remote_public_rooms = remote_public_rooms
        self._remote_alias_lookup = remote_alias_lookup
        self._public: set[str] | None = None
        # Application services' network lists: "<service id>|<network id>" -> room IDs.
        self._networks: dict[str, set[str]] = {}
        self._entries: dict[str, dict[str, Any]] = {}
        self._stale: set[str] = set()
        self._app_services = AppServiceRegistry()
        self._query_alias: AliasQuery | None = None

    def use_app_services(self, registry: AppServiceRegistry, query_alias: AliasQuery) -> None:
        """Aliases in exclusive namespaces are the services' own; an unknown alias in a
        namespace is asked of its services (spec: application service API, "Querying")."""
        self._app_services = registry
        self._query_alias = query_alias

    # --- aliases ---------------------------------------------------------------------

    def _check_local_alias(self, alias: str) -> None:
        if len(alias) > MAX_ALIAS_LENGTH or not is_valid_room_alias(alias):
            raise invalid_param(f"{alias!r} is not a valid room alias")
        localpart, _, server = alias[1:].partition(":")
        if any(c.isspace() for c in localpart):
            raise invalid_param("Room alias localparts cannot contain whitespace")
        if server != self._server_name:
            raise invalid_param("Room alias must be local")

    async def _room_state(self, room_id: str) -> dict[tuple[str, str], Event]:
        state = await self._room_events.current_state_events(
            room_id,
            [
                ("m.room.create", ""),
                ("m.room.power_levels", ""),
                ("m.room.history_visibility", ""),
            ],
        )
        if ("m.room.create", "") not in state:
            raise not_found(f"Unknown room {room_id}")
        return state

    async def _can_moderate(self, requester: Requester, room_id: str) -> bool:
        """Server admins, and users who may send m.room.canonical_alias (Synapse's rule
        for editing the room list and deleting others' aliases)."""
        if requester.is_admin:
            return True
        state = await self._room_state(room_id)
        create = state[("m.room.create", "")]
        levels = PowerLevels.from_state(
            create, state.get(("m.room.power_levels", "")), create.room_version
        )
        needed = levels.event_level("m.room.canonical_alias", True)
        return user_power(state, requester.user_id) >= needed

    async def create_alias(self, requester: Requester, alias: str, room_id: str) -> None:
        """PUT /directory/room/{roomAlias}."""
        self._check_local_alias(alias)
        if not is_valid_room_id(room_id):
            raise invalid_param(f"{room_id!r} is not a room ID")
        service = requester.app_service
        if service is not None and not service.alias_in_namespace(alias):
            raise exclusive_error(f"{alias} is not in this application service's namespace")
        if self._app_services.alias_reserved(alias, allowed=service):
            raise exclusive_error(f"{alias} is reserved by an application service")
        if await self._events.get_room_version(room_id) is None:
            raise not_found(f"Unknown room {room_id}")
        # An application service manages the aliases of its namespace (as in Synapse).
        if not requester.is_admin and service is None:
            membership = await self._memberships.get_membership(room_id, requester.user_id)
            if membership is None or membership.membership != "join":
                raise forbidden("You must be in the room to create an alias for it")
        try:
            await self._aliases.create_alias(alias, room_id, requester.user_id)
        except AliasExists:
            raise MatrixError(409, "M_UNKNOWN", f"Room alias {alias} already exists") from None

    async def resolve_alias(self, alias: str, *, fresh: bool = False) -> dict[str, Any]:
        """GET /directory/room/{roomAlias}: room ID and servers to join through. Another
        server's answer may come from a recent lookup unless `fresh` (joins ask anew: an
        alias may have been pointed at another room a moment ago)."""
        if len(alias) > MAX_ALIAS_LENGTH or not is_valid_room_alias(alias):
            raise invalid_param(f"{alias!r} is not a valid room alias")
        if alias.partition(":")[2] != self._server_name and self._remote_alias_lookup is not None:
            # Another server's alias: ask it (server-server API /query/directory).
            remote_id, servers = await self._remote_alias_lookup(alias, fresh=fresh)
            return {"room_id": remote_id, "servers": servers}
        room_id = await self._aliases.get_alias(alias)
        if room_id is None and self._query_alias is not None and await self._query_alias(alias):
            room_id = await self._aliases.get_alias(alias)  # the service has created it
        if room_id is None:
            raise not_found(f"Room alias {alias} not found")
        return {"room_id": room_id, "servers": await self._servers_in_room(room_id)}

    async def _servers_in_room(self, room_id: str) -> list[str]:
        joined = await self._memberships.get_joined_users(room_id)
        servers = {u.split(":", 1)[1] for u in joined if ":" in u}
        servers.discard(self._server_name)
        return [self._server_name, *sorted(servers)]

    async def delete_alias(self, requester: Requester, alias: str) -> None:
        """DELETE /directory/room/{roomAlias}."""
        self._check_local_alias(alias)
        room_id = await self._aliases.get_alias(alias)
        if room_id is None:
            raise not_found(f"Room alias {alias} not found")
        creator = await self._aliases.get_alias_creator(alias)
        service = requester.app_service
        own = creator == requester.user_id or (
            service is not None and service.alias_in_namespace(alias, exclusive=True)
        )
        if not own and not await self._can_moderate(requester, room_id):
            raise forbidden("You don't have permission to delete the alias")
        if not await self._aliases.delete_alias(alias):
            raise not_found(f"Room alias {alias} not found")
        try:
            await self._remove_from_canonical_alias(requester.user_id, room_id, alias)
        except MatrixError as e:
            logger.info("could not update the canonical alias of %s: %s", room_id, e)

    async def _remove_from_canonical_alias(self, user_id: str, room_id: str, alias: str) -> None:
        state = await self._room_events.current_state_events(
            room_id, [("m.room.canonical_alias", "")]
        )
        event = state.get(("m.room.canonical_alias", ""))
        if event is None:
            return
        content = dict(event.content)
        changed = False
        if content.get("alias") == alias:
            del content["alias"]
            changed = True
        alt = content.get("alt_aliases")
        if isinstance(alt, list) and alias in alt:
            remaining = [a for a in alt if a != alias]
            if remaining:
                content["alt_aliases"] = remaining
            else:
                del content["alt_aliases"]
            changed = True
        if changed:
            await self._room_events.send(room_id, user_id, "m.room.canonical_alias", content, "")

    async def room_aliases(self, requester: Requester, room_id: str) -> list[str]:
        """GET /rooms/{roomId}/aliases: for members, admins, or world-readable rooms."""
        state = await self._room_state(room_id)
        if not requester.is_admin:
            membership = await self._memberships.get_membership(room_id, requester.user_id)
            if membership is None or membership.membership != "join":
                visibility = state.get(("m.room.history_visibility", ""))
                if (
                    visibility is None
                    or visibility.content.get("history_visibility") != "world_readable"
                ):
                    raise forbidden("You are not in this room")
        return await self._aliases.aliases_for_room(room_id)

    # --- publishing ------------------------------------------------------------------

    async def get_visibility(self, room_id: str) -> str:
        """GET /directory/list/room/{roomId}."""
        public = await self._directory.is_public(room_id)
        if public is None:
            raise not_found(f"Unknown room {room_id}")
        return "public" if public else "private"

    async def set_visibility(self, requester: Requester, room_id: str, visibility: str) -> None:
        """PUT /directory/list/room/{roomId}."""
        if visibility not in ("public", "private"):
            raise invalid_param("'visibility' must be 'public' or 'private'")
        if requester.is_guest:
            raise forbidden("Guests cannot edit the room directory")
        if await self._directory.is_public(room_id) is None:
            raise not_found(f"Unknown room {room_id}")
        if not await self._can_moderate(requester, room_id):
            raise forbidden("You need to be a moderator of the room to change its listing")
        if visibility == "public" and not await self.may_publish(
            requester.user_id, room_id, admin=requester.is_admin
        ):
            raise forbidden("Not allowed to publish room")
        await self.publish(room_id, visibility == "public")

    async def may_publish(self, user_id: str, room_id: str, *, admin: bool) -> bool:
        """Whether room_list_publication_rules let `user_id` list the room."""
        aliases = await self._aliases.aliases_for_room(room_id)
        return self._publication_rules.allows(user_id, room_id, aliases, admin=admin)

    async def publish(self, room_id: str, public: bool) -> None:
        """Publish or unpublish without permission checks (createRoom, upgrades)."""
        if not await self._directory.set_public(room_id, public):
            raise not_found(f"Unknown room {room_id}")
        if self._public is not None:
            if public:
                self._public.add(room_id)
                self._stale.add(room_id)
            else:
                self._public.discard(room_id)
                self._forget_unlisted(room_id)

    async def set_network_visibility(
        self, requester: Requester, network_id: str, room_id: str, visibility: str
    ) -> None:
        """PUT (and Synapse's DELETE) /directory/list/appservice/{networkId}/{roomId}: an
        application service lists a room in its network's directory."""
        service = requester.app_service
        if service is None:
            raise forbidden("Only an application service can edit its network's room list")
        if visibility not in ("public", "private"):
            raise invalid_param("'visibility' must be 'public' or 'private'")
        if not network_id or len(network_id) > MAX_ALIAS_LENGTH or "|" in network_id:
            raise invalid_param("Invalid network ID")
        if await self._directory.is_public(room_id) is None:
            raise not_found(f"Unknown room {room_id}")
        public = visibility == "public"
        await self._directory.set_network_room(service.id, network_id, room_id, public)
        if self._public is not None:
            rooms = self._networks.setdefault(f"{service.id}|{network_id}", set())
            if public:
                rooms.add(room_id)
                self._stale.add(room_id)
            else:
                rooms.discard(room_id)
                self._forget_unlisted(room_id)

    def _listed(self) -> set[str]:
        """Every room some list shows: the main one and the services' networks."""
        listed = set(self._public or ())
        for rooms in self._networks.values():
            listed |= rooms
        return listed

    def _forget_unlisted(self, room_id: str) -> None:
        if room_id not in self._listed():
            self._entries.pop(room_id, None)

    async def is_public(self, room_id: str) -> bool:
        return bool(await self._directory.is_public(room_id))

    def on_new_event(self, event: Event, position: int) -> None:
        """RoomEventService listener: a published room's entry may have changed."""
        if (
            self._public is not None
            and event.type in _RELEVANT
            and (
                event.room_id in self._public
                or any(event.room_id in rooms for rooms in self._networks.values())
            )
        ):
            self._stale.add(event.room_id)

    async def _all_entries(self) -> dict[str, dict[str, Any]]:
        """The entries of every listed room (main list and networks), refreshed."""
        if self._public is None:
            self._public = set(await self._directory.public_room_ids())
            self._networks = {}
            for as_id, network_id, room_id in await self._directory.network_rooms():
                self._networks.setdefault(f"{as_id}|{network_id}", set()).add(room_id)
            self._stale.clear()
            self._entries.clear()
        listed = self._listed()
        refresh = (listed - self._entries.keys()) | (self._stale & listed)
        self._stale -= refresh
        if refresh:
            await self._refresh(sorted(refresh), listed)
        return {r: e for r, e in self._entries.items() if r in listed}

    async def _refresh(self, room_ids: Sequence[str], listed: set[str]) -> None:
        state = await self._directory.directory_state(room_ids)
        counts = await self._memberships.count_joined(room_ids)
        for room_id in room_ids:
            if room_id in listed:
                self._entries[room_id] = _entry(room_id, state[room_id], counts.get(room_id, 0))

    async def public_rooms(
        self,
        *,
        limit: int | None,
        since: str | None,
        search: str | None = None,
        room_types: Sequence[str | None] | None = None,
        server: str | None = None,
        network: str | None = None,
        all_networks: bool = False,
    ) -> dict[str, Any]:
        """GET/POST /publicRooms: a page of the published rooms, filtered. `network` (a
        ``third_party_instance_id``) lists one application service network's rooms
        instead; `all_networks` the main list and every network's."""
        if server is not None and server != self._server_name:
            if self._remote_public_rooms is None:
                raise MatrixError(
                    400, "M_INVALID_PARAM", "Listing another server's rooms is not supported"
                )
            body: dict[str, Any] = {}
            if search:
                body["generic_search_term"] = search
            if room_types is not None:
                body["room_types"] = list(room_types)
            remote: dict[str, Any] = await self._remote_public_rooms(server, limit, since, body)
            return remote
        page_size = min(limit or DEFAULT_PUBLIC_ROOMS_LIMIT, MAX_PUBLIC_ROOMS_LIMIT)
        everything = await self._all_entries()
        if all_networks:
            chosen = set(everything)
        elif network is not None:
            chosen = self._networks.get(network, set())
        else:
            chosen = self._public or set()
        entries = [e for r, e in everything.items() if r in chosen and e["num_joined_members"] > 0]
        if search:
            term = search.casefold()
            entries = [e for e in entries if _matches(e, term)]
        if room_types is not None:
            wanted = set(room_types)
            entries = [e for e in entries if e.get("room_type") in wanted]
        entries.sort(key=_sort_key)
        start, end = 0, len(entries)
        if since:
            direction, key = _parse_token(since)
            if direction == "n":
                start = next((i for i, e in enumerate(entries) if _sort_key(e) > key), end)
                end = min(end, start + page_size)
            else:
                end = next((i for i, e in enumerate(entries) if _sort_key(e) >= key), end)
                start = max(0, end - page_size)
        else:
            end = min(end, page_size)
        chunk = entries[start:end]
        response: dict[str, Any] = {"chunk": chunk, "total_room_count_estimate": len(entries)}
        if chunk and end < len(entries):
            response["next_batch"] = _token("n", chunk[-1])
        if chunk and start > 0:
            response["prev_batch"] = _token("p", chunk[0])
        return response

"""Creating rooms: POST /createRoom's sequence of initial events.

Spec: client-server-api "Creation" — the create event, the creator's join, power levels
(with power_level_content_override), the canonical alias, the preset's join rules, history
visibility and guest access, initial_state, name, topic, then the invites (users, then
third-party ones through the identity service). Defaults follow Synapse where the spec
leaves them open.
"""

from __future__ import annotations

import copy
import dataclasses
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starling.errors import MatrixError, bad_json, forbidden, invalid_param
from starling.protocol.event import Event
from starling.protocol.identifiers import is_valid_room_alias, is_valid_user_id
from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion, get_room_version
from starling.rooms.event_service import RoomEventService

PRESETS = ("private_chat", "public_chat", "trusted_private_chat")
MAX_INITIAL_STATE = 100
MAX_INVITES = 100
INVITE_3PID_KEYS = ("id_server", "id_access_token", "medium", "address")

# Events whose initial values the preset or request sets; initial_state may not override
# the ones createRoom itself decides.
_CONTROLLED = {"m.room.create", "m.room.member", "m.room.power_levels"}

ProfileLookup = Callable[[str], Awaitable[dict[str, Any]]]


@dataclass
class CreateRoomRequest:
    creator: str
    preset: str | None = None
    visibility: str = "private"
    room_version: str | None = None
    name: str | None = None
    topic: str | None = None
    room_alias_name: str | None = None
    invite: list[str] = field(default_factory=list)
    # Sent by the caller once the room exists (starling.identity: identity-server calls).
    invite_3pid: list[dict[str, Any]] = field(default_factory=list)
    is_direct: bool = False
    initial_state: list[dict[str, Any]] = field(default_factory=list)
    creation_content: dict[str, Any] = field(default_factory=dict)
    power_level_content_override: dict[str, Any] | None = None

    @classmethod
    def from_body(cls, creator: str, body: dict[str, Any]) -> CreateRoomRequest:
        """Validate a /createRoom body; M_BAD_JSON / M_INVALID_PARAM naming the field."""

        def opt_str(key: str) -> str | None:
            v = body.get(key)
            if v is not None and not isinstance(v, str):
                raise bad_json(f"'{key}' must be a string")
            return v

        def opt_obj(key: str) -> dict[str, Any] | None:
            v = body.get(key)
            if v is not None and not isinstance(v, dict):
                raise bad_json(f"'{key}' must be an object")
            return v

        preset = opt_str("preset")
        if preset is not None and preset not in PRESETS:
            raise invalid_param(f"'preset' must be one of {', '.join(PRESETS)}")
        visibility = opt_str("visibility") or "private"
        if visibility not in ("public", "private"):
            raise invalid_param("'visibility' must be 'public' or 'private'")
        invite = body.get("invite", [])
        if not isinstance(invite, list) or not all(isinstance(u, str) for u in invite):
            raise bad_json("'invite' must be a list of user IDs")
        if len(invite) > MAX_INVITES:
            raise invalid_param(f"at most {MAX_INVITES} invites")
        for u in invite:
            if not is_valid_user_id(u):
                raise invalid_param(f"invalid user ID in 'invite': {u!r}")
        initial_state = body.get("initial_state", [])
        if not isinstance(initial_state, list) or len(initial_state) > MAX_INITIAL_STATE:
            raise bad_json(f"'initial_state' must be a list of at most {MAX_INITIAL_STATE}")
        for ev in initial_state:
            if (
                not isinstance(ev, dict)
                or not isinstance(ev.get("type"), str)
                or not isinstance(ev.get("content"), dict)
                or not isinstance(ev.get("state_key", ""), str)
            ):
                raise bad_json("each initial_state entry needs a 'type' and 'content' object")
        is_direct = body.get("is_direct", False)
        if not isinstance(is_direct, bool):
            raise bad_json("'is_direct' must be a boolean")
        invite_3pid = body.get("invite_3pid") or []
        if (
            not isinstance(invite_3pid, list)
            or len(invite_3pid) > MAX_INVITES
            or not all(
                isinstance(i, dict) and all(isinstance(i.get(k), str) for k in INVITE_3PID_KEYS)
                for i in invite_3pid
            )
        ):
            raise bad_json(
                f"'invite_3pid' must be a list of at most {MAX_INVITES} objects with "
                + ", ".join(INVITE_3PID_KEYS)
            )
        return cls(
            creator=creator,
            preset=preset,
            visibility=visibility,
            room_version=opt_str("room_version"),
            name=opt_str("name"),
            topic=opt_str("topic"),
            room_alias_name=opt_str("room_alias_name"),
            invite=list(dict.fromkeys(invite)),
            invite_3pid=invite_3pid,
            is_direct=is_direct,
            initial_state=initial_state,
            creation_content=opt_obj("creation_content") or {},
            power_level_content_override=opt_obj("power_level_content_override"),
        )


def default_power_levels(
    req: CreateRoomRequest, rv: RoomVersion, invitees_as_admins: bool, private: bool = False
) -> dict[str, Any]:
    """The spec leaves the defaults to the server: Synapse's, including its private
    presets' `invite: 0` (in an invite-only chat every member may invite others)."""
    users: dict[str, int] = {}
    if not rv.privileged_creators:
        users[req.creator] = 100
        if invitees_as_admins:
            for u in req.invite:
                users[u] = 100
    return {
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            # Room version 12: above state_default so that only creators can upgrade.
            "m.room.tombstone": 150 if rv.privileged_creators else 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0 if private else 50,
    }


class RoomCreator:
    def __init__(
        self,
        server_name: str,
        events: RoomEventService,
        default_room_version: str,
        profile_lookup: ProfileLookup,
        alias_creator: Callable[[str, str, str], Awaitable[None]] | None = None,
        publish_room: Callable[[str, bool], Awaitable[None]] | None = None,
        may_publish: Callable[[str, str], Awaitable[bool]] | None = None,
        invite: Callable[[str, str, str, bool], Awaitable[Event]] | None = None,
        alias_taken: Callable[[str], Awaitable[bool]] | None = None,
        *,
        admins_only: bool = False,
    ) -> None:
        self._alias_taken = alias_taken
        # `restrict_room_creation_to_admins`: a client's createRoom only for server admins
        # and application services (whose bridges make rooms).
        self._admins_only = admins_only
        self._server_name = server_name
        self._events = events
        self._default_room_version = default_room_version
        self._profile = profile_lookup
        self._create_alias = alias_creator
        self._publish = publish_room
        self._may_publish = may_publish
        self._invite = invite
        # Server modules' verdict on a room creation (creator, request): None allows.
        self._policy: Callable[[str, dict[str, Any]], Awaitable[str | None]] | None = None
        # (room_id, sender, invite_3pid entry): a 3PID invite (the identity service's).
        self._invite_3pid: Callable[[str, str, dict[str, Any]], Awaitable[None]] | None = None

    def use_policy(self, policy: Callable[[str, dict[str, Any]], Awaitable[str | None]]) -> None:
        self._policy = policy

    def use_third_party_invites(
        self, invite: Callable[[str, str, dict[str, Any]], Awaitable[None]]
    ) -> None:
        """How `invite_3pid` entries are invited (identity/service.py; set in app.py, which
        builds it later)."""
        self._invite_3pid = invite

    async def create(
        self, req: CreateRoomRequest, *, shadow_banned: bool = False, privileged: bool = True
    ) -> tuple[str, Event]:
        """Create the room; returns (room_id, create event). `privileged=False`: a client's
        request from someone neither a server admin nor an application service (refused
        under `admins_only`). A shadow-banned creator's room is made, but its invites reach
        nobody (Synapse)."""
        if self._admins_only and not privileged:
            raise forbidden("Only server admins may create rooms on this server")
        if shadow_banned:
            req = dataclasses.replace(req, invite=[], invite_3pid=[])
        if self._policy is not None:
            request = dataclasses.asdict(req)
            del request["creator"]
            reason = await self._policy(req.creator, request)
            if reason is not None:
                raise forbidden(reason)
        version_id = req.room_version or self._default_room_version
        if version_id not in KNOWN_ROOM_VERSIONS:
            raise MatrixError(
                400, "M_UNSUPPORTED_ROOM_VERSION", f"Room version {version_id!r} is not supported"
            )
        rv = get_room_version(version_id)
        preset = req.preset or ("public_chat" if req.visibility == "public" else "private_chat")
        alias = None
        if req.room_alias_name is not None:
            alias = f"#{req.room_alias_name}:{self._server_name}"
            if (
                not req.room_alias_name
                or ":" in req.room_alias_name
                or any(c.isspace() for c in req.room_alias_name)
                or not is_valid_room_alias(alias)
            ):
                raise invalid_param(
                    "'room_alias_name' must be a non-empty localpart without ':', spaces or "
                    "control characters"
                )
            if self._alias_taken is not None and await self._alias_taken(alias):
                raise MatrixError(400, "M_ROOM_IN_USE", f"Room alias {alias} already exists")

        creation = copy.deepcopy(req.creation_content)
        creation["room_version"] = rv.identifier
        if rv.create_event_has_creator:
            creation["creator"] = req.creator
        if preset == "trusted_private_chat" and rv.privileged_creators and req.invite:
            extra = creation.get("additional_creators", [])
            if not isinstance(extra, list):
                raise bad_json("'creation_content.additional_creators' must be a list")
            creation["additional_creators"] = list(dict.fromkeys([*extra, *req.invite]))
        room_id = None if rv.room_id_from_create_event else self._new_room_id()
        # The initial state events, in the spec's order; all of them are persisted with
        # the create event in one transaction, except that with an alias the events after
        # the power levels wait for the alias to be created (then sent one by one).
        member = {"membership": "join", **(await self._profile(req.creator))}
        pl = default_power_levels(
            req, rv, preset == "trusted_private_chat", private=preset != "public_chat"
        )
        if req.power_level_content_override:
            pl.update(copy.deepcopy(req.power_level_content_override))
        initial: list[tuple[str, dict[str, Any], str]] = [
            ("m.room.member", member, req.creator),
            ("m.room.power_levels", pl, ""),
        ]
        later: list[tuple[str, dict[str, Any], str]] = []
        if alias is not None and self._create_alias is not None:
            later.append(("m.room.canonical_alias", {"alias": alias}, ""))
        rest = later if later else initial

        state_keys_set = {(e["type"], e.get("state_key", "")) for e in req.initial_state}
        join_rule = "public" if preset == "public_chat" else "invite"
        if ("m.room.join_rules", "") not in state_keys_set:
            rest.append(("m.room.join_rules", {"join_rule": join_rule}, ""))
        if ("m.room.history_visibility", "") not in state_keys_set:
            rest.append(("m.room.history_visibility", {"history_visibility": "shared"}, ""))
        if preset != "public_chat" and ("m.room.guest_access", "") not in state_keys_set:
            # public_chat's "forbidden" (the spec's preset table) is the absence of the
            # event, as in Synapse (SyTest checks a public room's exact state).
            rest.append(("m.room.guest_access", {"guest_access": "can_join"}, ""))
        for ev in req.initial_state:
            if ev["type"] in _CONTROLLED:
                continue
            rest.append((ev["type"], ev["content"], ev.get("state_key", "")))
        if req.name is not None:
            rest.append(("m.room.name", {"name": req.name}, ""))
        if req.topic is not None:
            topic = {
                "topic": req.topic,
                "m.topic": {"m.text": [{"mimetype": "text/plain", "body": req.topic}]},
            }
            rest.append(("m.room.topic", topic, ""))

        chain = await self._events.create_room(rv, room_id, req.creator, creation, initial)
        create = chain[0]
        room_id = create.room_id
        if later:
            assert alias is not None and self._create_alias is not None
            await self._create_alias(alias, room_id, req.creator)
            for event_type, content, state_key in later:
                await self._events.send(room_id, req.creator, event_type, content, state_key)
        if req.visibility == "public" and self._publish is not None:
            # Refused by room_list_publication_rules: created, but not listed (Synapse).
            if self._may_publish is None or await self._may_publish(req.creator, room_id):
                await self._publish(room_id, True)
        if self._invite is not None:
            for user_id in req.invite:
                await self._invite(room_id, req.creator, user_id, req.is_direct)
        if self._invite_3pid is not None:
            for invite in req.invite_3pid:  # the spec's step 8, after the other invites
                await self._invite_3pid(room_id, req.creator, invite)
        return room_id, create

    def _new_room_id(self) -> str:
        return f"!{secrets.token_urlsafe(18)}:{self._server_name}"

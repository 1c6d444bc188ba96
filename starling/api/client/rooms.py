"""Client-Server API: creating rooms, membership, and sending events.

Spec: client-server-api "Rooms" (createRoom, membership: join, leave, forget, invite,
kick, ban, unban, knock, joined_rooms) and "Events" (send, state, redact).
Reads of room data (event, state, members, messages, context) live in `room_reads`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from starling.api.client.common import body_str
from starling.api.http import json_response, read_json_object
from starling.api.routing import requester_of
from starling.api.services import Services
from starling.errors import MatrixError, forbidden, invalid_param
from starling.protocol.event import Event, StateKey
from starling.protocol.identifiers import is_valid_room_alias, is_valid_user_id
from starling.protocol.power_levels import PowerLevels
from starling.protocol.room_versions import RoomVersion
from starling.rooms.creation import CreateRoomRequest
from starling.rooms.event_service import user_power

MAX_TYPE_BYTES = 255
MAX_TXN_ID_BYTES = 255


def _event_type(raw: str) -> str:
    if not raw or len(raw.encode()) > MAX_TYPE_BYTES:
        raise invalid_param("Event type must be 1-255 bytes")
    return raw


def _target_user(body: dict[str, Any]) -> str:
    user_id = body_str(body, "user_id", required=True)
    assert user_id is not None
    if not is_valid_user_id(user_id):
        raise invalid_param(f"{user_id!r} is not a valid user ID")
    return user_id


class RoomRoutes:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    async def _resolve_room(self, room_id_or_alias: str) -> tuple[str, list[str]]:
        """A room ID for a room ID or alias, with the alias's servers for joining."""
        if room_id_or_alias.startswith("!"):
            return room_id_or_alias, []
        if room_id_or_alias.startswith("#") and is_valid_room_alias(room_id_or_alias):
            # A local alias, or another server's asked over federation.
            found = await self.svc.directory.resolve_alias(room_id_or_alias)
            return found["room_id"], list(found["servers"])
        raise invalid_param(f"{room_id_or_alias!r} is not a room ID or alias")

    # POST /_matrix/client/v3/createRoom  (spec: #post_matrixclientv3createroom)
    async def create_room(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        req = CreateRoomRequest.from_body(requester.user_id, body)
        room_id, _ = await self.svc.room_creator.create(req)
        return json_response({"room_id": room_id})

    # POST /join/{roomIdOrAlias} and /rooms/{roomId}/join  (spec: #post_matrixclientv3joinroomidoralias)
    async def join(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request, allow_empty=True)
        target = request.match_info.get("roomIdOrAlias") or request.match_info["roomId"]
        room_id, servers = await self._resolve_room(target)
        via = request.query.getall("via", []) or request.query.getall("server_name", [])
        await self.svc.membership.join(
            room_id,
            requester.user_id,
            reason=body_str(body, "reason"),
            via=[*via, *servers],
            guest=requester.is_guest,
        )
        return json_response({"room_id": room_id})

    # POST /knock/{roomIdOrAlias}  (spec: #post_matrixclientv3knockroomidoralias)
    async def knock(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request, allow_empty=True)
        room_id, servers = await self._resolve_room(request.match_info["roomIdOrAlias"])
        via = request.query.getall("via", []) or request.query.getall("server_name", [])
        await self.svc.membership.knock(
            room_id, requester.user_id, body_str(body, "reason"), via=[*via, *servers]
        )
        return json_response({"room_id": room_id})

    # POST /rooms/{roomId}/leave
    async def leave(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request, allow_empty=True)
        await self.svc.membership.leave(
            request.match_info["roomId"], requester.user_id, body_str(body, "reason")
        )
        return json_response({})

    # POST /rooms/{roomId}/forget
    async def forget(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        await self.svc.membership.forget(request.match_info["roomId"], requester.user_id)
        return json_response({})

    # POST /rooms/{roomId}/invite
    async def invite(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        if "id_server" in body or "medium" in body:
            raise MatrixError(
                400, "M_UNRECOGNIZED", "Third-party invites are not supported by this server"
            )
        await self.svc.membership.invite(
            request.match_info["roomId"],
            requester.user_id,
            _target_user(body),
            reason=body_str(body, "reason"),
        )
        return json_response({})

    # POST /rooms/{roomId}/kick, /ban, /unban
    async def kick(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        await self.svc.membership.kick(
            request.match_info["roomId"],
            requester.user_id,
            _target_user(body),
            body_str(body, "reason"),
        )
        return json_response({})

    async def ban(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        await self.svc.membership.ban(
            request.match_info["roomId"],
            requester.user_id,
            _target_user(body),
            body_str(body, "reason"),
        )
        return json_response({})

    async def unban(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        await self.svc.membership.unban(
            request.match_info["roomId"],
            requester.user_id,
            _target_user(body),
            body_str(body, "reason"),
        )
        return json_response({})

    # POST /rooms/{roomId}/upgrade  (spec: #post_matrixclientv3roomsroomidupgrade)
    async def upgrade(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        new_version = body_str(body, "new_version", required=True)
        assert new_version is not None
        new_room = await self.svc.room_upgrader.upgrade(
            request.match_info["roomId"], requester.user_id, new_version
        )
        return json_response({"replacement_room": new_room})

    # GET /joined_rooms
    async def joined_rooms(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        rooms = await self.svc.membership_store.get_joined_rooms(requester.user_id)
        return json_response({"joined_rooms": sorted(rooms)})

    # PUT /rooms/{roomId}/send/{eventType}/{txnId}  (spec: #put_matrixclientv3roomsroomidsendeventtypetxnid)
    async def send(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        room_id = request.match_info["roomId"]
        event_type = _event_type(request.match_info["eventType"])
        txn_id = request.match_info["txnId"]
        if not txn_id or len(txn_id.encode()) > MAX_TXN_ID_BYTES:
            raise invalid_param("Transaction ID must be 1-255 bytes")
        content = await read_json_object(request)
        redacts = None
        if event_type == "m.room.redaction":
            redacts = body_str(content, "redacts", required=True)
        event = await self.svc.room_events.send(
            room_id,
            requester.user_id,
            event_type,
            content,
            device_id=requester.device_id,
            txn_id=txn_id,
            redacts=redacts,
            check=self._redaction_check(room_id, requester.user_id, redacts) if redacts else None,
        )
        return json_response({"event_id": event.event_id})

    # PUT /rooms/{roomId}/state/{eventType}/{stateKey}
    async def put_state(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        room_id = request.match_info["roomId"]
        event_type = _event_type(request.match_info["eventType"])
        state_key = request.match_info.get("stateKey", "")
        if len(state_key.encode()) > MAX_TYPE_BYTES:
            raise invalid_param("State key must be at most 255 bytes")
        content = await read_json_object(request)
        if event_type == "m.room.member":
            # A membership change obeys the membership rules, whichever endpoint asks.
            changed = await self.svc.membership.set_membership(
                room_id, requester.user_id, state_key, content, guest=requester.is_guest
            )
            if changed is None:  # nothing changed: the member event in place stands
                current = await self.svc.room_events.current_state_events(
                    room_id, [(event_type, state_key)]
                )
                changed = current[(event_type, state_key)]
            return json_response({"event_id": changed.event_id})
        if event_type == "m.room.canonical_alias":
            await self._check_canonical_alias(room_id, content)
        current = await self.svc.room_events.current_state_events(
            room_id, [(event_type, state_key)]
        )
        existing = current.get((event_type, state_key))
        if (
            existing is not None
            and existing.sender == requester.user_id
            and (existing.content == content)
        ):
            # Setting the same content again changes nothing (Synapse returns the old event).
            return json_response({"event_id": existing.event_id})
        event = await self.svc.room_events.send(
            room_id, requester.user_id, event_type, content, state_key
        )
        return json_response({"event_id": event.event_id})

    async def _check_canonical_alias(self, room_id: str, content: dict[str, Any]) -> None:
        aliases = []
        if content.get("alias") is not None:
            aliases.append(content["alias"])
        alt = content.get("alt_aliases", [])
        if not isinstance(alt, list):
            raise MatrixError(400, "M_INVALID_PARAM", "'alt_aliases' must be a list")
        aliases.extend(alt)
        for alias in aliases:
            if not isinstance(alias, str) or not is_valid_room_alias(alias):
                raise MatrixError(400, "M_INVALID_PARAM", f"Invalid alias {alias!r}")
            if alias.endswith(":" + self.svc.server_name):
                target = await self.svc.alias_store.get_alias(alias)
                if target != room_id:
                    raise MatrixError(
                        400, "M_BAD_ALIAS", f"Alias {alias} does not point to this room"
                    )

    # PUT /rooms/{roomId}/redact/{eventId}/{txnId}  (spec: #put_matrixclientv3roomsroomidredacteventidtxnid)
    async def redact(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        room_id = request.match_info["roomId"]
        target_id = request.match_info["eventId"]
        txn_id = request.match_info["txnId"]
        body = await read_json_object(request, allow_empty=True)
        content: dict[str, Any] = {}
        reason = body_str(body, "reason")
        if reason is not None:
            content["reason"] = reason
        version = await self.svc.event_store.get_room_version(room_id)
        if version is not None and version.redacts_in_content:
            content["redacts"] = target_id
        event = await self.svc.room_events.send(
            room_id,
            requester.user_id,
            "m.room.redaction",
            content,
            device_id=requester.device_id,
            txn_id=txn_id,
            redacts=target_id,
            check=self._redaction_check(room_id, requester.user_id, target_id, rate_limited=True),
        )
        return json_response({"event_id": event.event_id})

    def _redaction_check(
        self, room_id: str, sender: str, target_id: str | None, *, rate_limited: bool = False
    ) -> Any:
        """Under the room lock: the target must be an event of this room, and redacting
        someone else's event needs the redact power level (spec: "Redactions").
        `rate_limited`: spend `rc_message` for one's own event, `rc_admin_redaction`
        (when set) for someone else's, as Synapse does."""
        store = self.svc.event_store
        rate_limits = self.svc.rate_limits

        async def check(state: Mapping[StateKey, Event], rv: RoomVersion) -> None:
            if target_id is None:
                return
            found = await store.get_event(target_id)
            if found is None or found.event.room_id != room_id:
                raise MatrixError(404, "M_NOT_FOUND", "No such event in this room")
            if rate_limited:
                await rate_limits.check_redaction(sender, own=found.event.sender == sender)
            if found.event.sender == sender:
                return
            levels = PowerLevels.from_state(
                state.get(("m.room.create", "")), state.get(("m.room.power_levels", "")), rv
            )
            if user_power(state, sender) < levels.redact:
                raise forbidden("You don't have permission to redact other users' events")

        return check

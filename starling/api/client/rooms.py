"""Client-Server API: creating rooms, membership, and sending events.

Spec: client-server-api "Rooms" (createRoom, membership: join, leave, forget, invite,
kick, ban, unban, knock, joined_rooms) and "Events" (send, state, redact).
Reads of room data (event, state, members, messages, context) live in `room_reads`.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from starling.api.client.common import body_str
from starling.api.http import json_response, read_json_object
from starling.api.routing import requester_of
from starling.directory.service import DirectoryService
from starling.errors import invalid_param, unrecognized
from starling.identity.service import ThreepidService
from starling.protocol.identifiers import is_valid_room_alias, is_valid_user_id
from starling.rooms.client_events import ClientEvents
from starling.rooms.creation import CreateRoomRequest, RoomCreator
from starling.rooms.delayed import DELAY_PARAM, DelayedEvents
from starling.rooms.membership import MembershipService
from starling.rooms.peeks import PeekService
from starling.rooms.upgrade import RoomUpgrader

MAX_TYPE_BYTES = 255
MAX_TXN_ID_BYTES = 255


def _event_type(raw: str) -> str:
    if not raw or len(raw.encode()) > MAX_TYPE_BYTES:
        raise invalid_param("Event type must be 1-255 bytes")
    return raw


def _txn_id(request: web.Request) -> str:
    if "txnId" not in request.match_info:
        # The r0 POST forms without a transaction ID: each request is a new event.
        return f"post.{secrets.token_urlsafe(12)}"
    txn_id = request.match_info["txnId"]
    if not txn_id or len(txn_id.encode()) > MAX_TXN_ID_BYTES:
        raise invalid_param("Transaction ID must be 1-255 bytes")
    return txn_id


def _target_user(body: dict[str, Any]) -> str:
    user_id = body_str(body, "user_id", required=True)
    assert user_id is not None
    if not is_valid_user_id(user_id):
        raise invalid_param(f"{user_id!r} is not a valid user ID")
    return user_id


# kick, ban, unban: (room_id, sender, target, reason) -> the member event
Moderation = Callable[[str, str, str, str | None], Awaitable[object]]


async def _moderate(request: web.Request, action: Moderation) -> web.Response:
    """A kick, ban or unban: `{"user_id", "reason"?}` in the body."""
    body = await read_json_object(request)
    await action(
        request.match_info["roomId"],
        requester_of(request).user_id,
        _target_user(body),
        body_str(body, "reason"),
    )
    return json_response({})


class RoomRoutes:
    def __init__(
        self,
        creator: RoomCreator,
        membership: MembershipService,
        upgrader: RoomUpgrader,
        directory: DirectoryService,
        events: ClientEvents,
        threepids: ThreepidService,
        delayed: DelayedEvents,
        *,
        peeks: PeekService | None = None,
    ) -> None:
        self.peeks = peeks
        # Sends and state PUTs: sent now, or scheduled when they ask for a delay (MSC4140).
        self.delayed = delayed
        self.threepids = threepids
        self.creator = creator
        self.membership = membership
        self.upgrader = upgrader
        self.directory = directory
        self.events = events

    async def _resolve_room(self, room_id_or_alias: str) -> tuple[str, list[str]]:
        """A room ID for a room ID or alias, with the alias's servers for joining."""
        if room_id_or_alias.startswith("!"):
            return room_id_or_alias, []
        if room_id_or_alias.startswith("#") and is_valid_room_alias(room_id_or_alias):
            # A local alias, or another server's asked over federation.
            found = await self.directory.resolve_alias(room_id_or_alias, fresh=True)
            return found["room_id"], list(found["servers"])
        raise invalid_param(f"{room_id_or_alias!r} is not a room ID or alias")

    # POST /_matrix/client/v3/createRoom
    # (spec: client-server-api/#post_matrixclientv3createroom)
    async def create_room(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        req = CreateRoomRequest.from_body(requester.user_id, body)
        room_id, _ = await self.creator.create(
            req,
            shadow_banned=requester.shadow_banned,
            privileged=requester.is_admin or requester.app_service is not None,
        )
        return json_response({"room_id": room_id})

    # POST /_matrix/client/v3/join/{roomIdOrAlias}
    # POST /_matrix/client/v3/rooms/{roomId}/join
    # (spec: client-server-api/#post_matrixclientv3joinroomidoralias)
    async def join(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request, allow_empty=True)
        target = request.match_info.get("roomIdOrAlias") or request.match_info["roomId"]
        room_id, servers = await self._resolve_room(target)
        via = request.query.getall("via", []) or request.query.getall("server_name", [])
        reason = body_str(body, "reason")
        await self.membership.join_by_request(
            room_id,
            requester.user_id,
            body,
            reason=reason,
            via=[*via, *servers],
            guest=requester.is_guest,
        )
        return json_response({"room_id": room_id})

    # POST /_matrix/client/v3/peek/{roomIdOrAlias}
    # (spec: MSC2753 "Peeking via /sync", as SyTest's peeking tests use it; rooms/peeks.py)
    async def peek(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        await read_json_object(request, allow_empty=True)
        room_id, _ = await self._resolve_room(request.match_info["roomIdOrAlias"])
        if self.peeks is None:
            raise unrecognized(404, "Peeking is not available")
        await self.peeks.peek(requester.user_id, requester.device_id, room_id)
        return json_response({"room_id": room_id})

    # POST /_matrix/client/v3/rooms/{roomId}/unpeek
    # (spec: MSC2753 "Peeking via /sync")
    async def unpeek(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        await read_json_object(request, allow_empty=True)
        if self.peeks is None:
            raise unrecognized(404, "Peeking is not available")
        await self.peeks.unpeek(
            requester.user_id, requester.device_id, request.match_info["roomId"]
        )
        return json_response({})

    # POST /_matrix/client/v3/knock/{roomIdOrAlias}
    # (spec: client-server-api/#post_matrixclientv3knockroomidoralias)
    async def knock(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request, allow_empty=True)
        room_id, servers = await self._resolve_room(request.match_info["roomIdOrAlias"])
        via = request.query.getall("via", []) or request.query.getall("server_name", [])
        await self.membership.knock(
            room_id, requester.user_id, body_str(body, "reason"), via=[*via, *servers]
        )
        return json_response({"room_id": room_id})

    # POST /_matrix/client/v3/rooms/{roomId}/leave
    # (spec: client-server-api/#post_matrixclientv3roomsroomidleave)
    async def leave(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request, allow_empty=True)
        await self.membership.leave(
            request.match_info["roomId"], requester.user_id, body_str(body, "reason")
        )
        return json_response({})

    # POST /_matrix/client/v3/rooms/{roomId}/forget
    # (spec: client-server-api/#post_matrixclientv3roomsroomidforget)
    async def forget(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        await self.membership.forget(request.match_info["roomId"], requester.user_id)
        return json_response({})

    # POST /_matrix/client/v3/rooms/{roomId}/invite
    # (spec: client-server-api/#post_matrixclientv3roomsroomidinvite)
    async def invite(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        if "user_id" not in body and ("id_server" in body or "medium" in body):
            # A third-party invite (spec: "Third-party invites"): by identity server.
            await self.threepids.invite(
                request.match_info["roomId"],
                requester.user_id,
                body,
                shadow_banned=requester.shadow_banned,
            )
            return json_response({})
        await self.membership.invite_by_request(
            request.match_info["roomId"],
            requester.user_id,
            _target_user(body),
            body_str(body, "reason"),
            shadow_banned=requester.shadow_banned,
        )
        return json_response({})

    # POST /_matrix/client/v3/rooms/{roomId}/kick
    # (spec: client-server-api/#post_matrixclientv3roomsroomidkick)
    async def kick(self, request: web.Request) -> web.Response:
        return await _moderate(request, self.membership.kick)

    # POST /_matrix/client/v3/rooms/{roomId}/ban
    # (spec: client-server-api/#post_matrixclientv3roomsroomidban)
    async def ban(self, request: web.Request) -> web.Response:
        return await _moderate(request, self.membership.ban)

    # POST /_matrix/client/v3/rooms/{roomId}/unban
    # (spec: client-server-api/#post_matrixclientv3roomsroomidunban)
    async def unban(self, request: web.Request) -> web.Response:
        return await _moderate(request, self.membership.unban)

    # POST /_matrix/client/v3/rooms/{roomId}/upgrade
    # (spec: client-server-api/#post_matrixclientv3roomsroomidupgrade)
    async def upgrade(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        new_version = body_str(body, "new_version", required=True)
        assert new_version is not None
        new_room = await self.upgrader.upgrade(
            request.match_info["roomId"], requester.user_id, new_version
        )
        return json_response({"replacement_room": new_room})

    # GET /_matrix/client/v3/joined_rooms
    # (spec: client-server-api/#get_matrixclientv3joined_rooms)
    async def joined_rooms(self, request: web.Request) -> web.Response:
        rooms = await self.events.joined_rooms(requester_of(request).user_id)
        return json_response({"joined_rooms": rooms})

    # PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}
    # (spec: client-server-api/#put_matrixclientv3roomsroomidsendeventtypetxnid)
    # POST /_matrix/client/v3/rooms/{roomId}/send/{eventType} (Synapse keeps r0's form
    # without a transaction ID: not idempotent)
    async def send(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        room_id = request.match_info["roomId"]
        event_type = _event_type(request.match_info["eventType"])
        txn_id = _txn_id(request)
        content = await read_json_object(request)
        redacts = None
        if event_type == "m.room.redaction":
            redacts = body_str(content, "redacts", required=True)
        return json_response(
            await self.delayed.send(
                requester.user_id,
                requester.transaction_scope,
                room_id,
                event_type,
                content,
                request.query.get(DELAY_PARAM),
                txn_id,
                redacts=redacts,
                shadow_banned=requester.shadow_banned,
            )
        )

    # PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}
    # PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}
    # (spec: client-server-api/#put_matrixclientv3roomsroomidstateeventtypestatekey)
    async def put_state(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        event_type = _event_type(request.match_info["eventType"])
        state_key = request.match_info.get("stateKey", "")
        if len(state_key.encode()) > MAX_TYPE_BYTES:
            raise invalid_param("State key must be at most 255 bytes")
        content = await read_json_object(request)
        return json_response(
            await self.delayed.set_state(
                requester.user_id,
                requester.transaction_scope,
                request.match_info["roomId"],
                event_type,
                state_key,
                content,
                request.query.get(DELAY_PARAM),
                guest=requester.is_guest,
                shadow_banned=requester.shadow_banned,
            )
        )

    # PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}
    # (spec: client-server-api/#put_matrixclientv3roomsroomidredacteventidtxnid)
    # POST /_matrix/client/v3/rooms/{roomId}/redact/{eventId} (Synapse keeps r0's form
    # without a transaction ID: not idempotent)
    async def redact(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        txn_id = _txn_id(request)
        body = await read_json_object(request, allow_empty=True)
        event_id = await self.events.redact(
            request.match_info["roomId"],
            requester.user_id,
            request.match_info["eventId"],
            body_str(body, "reason"),
            device_id=requester.transaction_scope,
            txn_id=txn_id,
            shadow_banned=requester.shadow_banned,
        )
        return json_response({"event_id": event_id})

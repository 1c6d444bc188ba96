"""The membership handshakes other servers make with this one (spec: server-server API
"Joining Rooms", "Knocking upon a room", "Inviting to a room", "Leaving Rooms").

GET /_matrix/federation/v1/make_join/{roomId}/{userId}?ver=...
PUT /_matrix/federation/v1/send_join/{roomId}/{eventId}     (deprecated; [200, body])
PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}
GET /_matrix/federation/v1/make_leave/{roomId}/{userId}
PUT /_matrix/federation/v1/send_leave/{roomId}/{eventId}    (deprecated; [200, {}])
PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}
GET /_matrix/federation/v1/make_knock/{roomId}/{userId}?ver=...
PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}
PUT /_matrix/federation/v1/invite/{roomId}/{eventId}        (rooms 1-2; [200, body])
PUT /_matrix/federation/v2/invite/{roomId}/{eventId}

What may be signed and accepted is decided by `starling.federation.membership`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from starling.api.federation.auth import federation_body
from starling.api.http import json_response
from starling.api.routing import Auth, Route, get, put
from starling.api.routing import origin as calling_server
from starling.errors import MatrixError, bad_json
from starling.federation.membership import ResidentMembership, pdu_for_federation
from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS, get_room_version

FEDERATION = Auth.FEDERATION
V2 = ("v2",)
# The PUTs' {eventId} names the event in the body: the body is checked first (a malformed
# event is M_BAD_JSON whatever the path says), then that the path names it
# (starling.federation.membership.parse_pdu), as the spec orders no checks between them.
BODY_FIRST = ("eventId",)


def _room_and(request: web.Request, second: str) -> tuple[str, str]:
    room_id = request.match_info["roomId"]
    other = request.match_info[second]
    if not room_id.startswith("!"):
        raise MatrixError(400, "M_INVALID_PARAM", f"Invalid room ID {room_id!r}")
    return room_id, other


class FederationMembershipApi:
    def __init__(self, resident: ResidentMembership) -> None:
        self._resident = resident

    def routes(self) -> list[Route]:
        """This area's rows of `routes.federation_table`."""
        return [
            get("/make_join/{roomId}/{userId}", self.make_join, FEDERATION),
            put(
                "/send_join/{roomId}/{eventId}",
                self.send_join_v1,
                FEDERATION,
                late_parameters=BODY_FIRST,
            ),
            put(
                "/send_join/{roomId}/{eventId}",
                self.send_join_v2,
                FEDERATION,
                versions=V2,
                late_parameters=BODY_FIRST,
            ),
            get("/make_leave/{roomId}/{userId}", self.make_leave, FEDERATION),
            put(
                "/send_leave/{roomId}/{eventId}",
                self.send_leave_v1,
                FEDERATION,
                late_parameters=BODY_FIRST,
            ),
            put(
                "/send_leave/{roomId}/{eventId}",
                self.send_leave_v2,
                FEDERATION,
                versions=V2,
                late_parameters=BODY_FIRST,
            ),
            get("/make_knock/{roomId}/{userId}", self.make_knock, FEDERATION),
            put(
                "/send_knock/{roomId}/{eventId}",
                self.send_knock,
                FEDERATION,
                late_parameters=BODY_FIRST,
            ),
            put(
                "/invite/{roomId}/{eventId}", self.invite_v1, FEDERATION, late_parameters=BODY_FIRST
            ),
            put(
                "/invite/{roomId}/{eventId}",
                self.invite_v2,
                FEDERATION,
                versions=V2,
                late_parameters=BODY_FIRST,
            ),
        ]

    # --- joins ------------------------------------------------------------------------------

    async def _make(self, request: web.Request, membership: str) -> web.Response:
        origin = calling_server(request)
        room_id, user_id = _room_and(request, "userId")
        versions = request.query.getall("ver", []) if membership != "leave" else None
        if membership != "leave" and not versions:
            versions = None  # make_join's default is ["1"]; make_knock requires it
            if membership == "knock":
                raise MatrixError(400, "M_MISSING_PARAM", "Missing 'ver' query parameter")
        result = await self._resident.make_membership(
            origin, room_id, user_id, membership, versions
        )
        return json_response(result)

    async def make_join(self, request: web.Request) -> web.Response:
        """GET /_matrix/federation/v1/make_join/{roomId}/{userId}
        (spec: server-server-api/#get_matrixfederationv1make_joinroomiduserid)."""
        return await self._make(request, "join")

    async def _send_join(self, request: web.Request, *, omit_members: bool) -> dict[str, Any]:
        origin = calling_server(request)
        room_id, event_id = _room_and(request, "eventId")
        pdu = federation_body(request)
        before = pdu.get("signatures") if isinstance(pdu, dict) else None
        event = await self._resident.send_membership(origin, room_id, event_id, pdu, "join")
        countersigned = event.pdu.get("signatures") != before
        return await self._resident.send_join_response(
            event, countersigned=countersigned, omit_members=omit_members
        )

    async def send_join_v1(self, request: web.Request) -> web.Response:
        """PUT /_matrix/federation/v1/send_join/{roomId}/{eventId}
        (spec: server-server-api/#put_matrixfederationv1send_joinroomideventid)."""
        body = await self._send_join(request, omit_members=False)
        return json_response(
            [200, {k: body[k] for k in ("origin", "state", "auth_chain") if k in body}]
        )

    async def send_join_v2(self, request: web.Request) -> web.Response:
        """PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}
        (spec: server-server-api/#put_matrixfederationv2send_joinroomideventid)."""
        raw = request.query.get("omit_members", "false")
        if raw not in ("true", "false"):
            raise MatrixError(400, "M_INVALID_PARAM", "omit_members must be true or false")
        return json_response(await self._send_join(request, omit_members=raw == "true"))

    # --- leaves -----------------------------------------------------------------------------

    async def make_leave(self, request: web.Request) -> web.Response:
        """GET /_matrix/federation/v1/make_leave/{roomId}/{userId}
        (spec: server-server-api/#get_matrixfederationv1make_leaveroomiduserid)."""
        return await self._make(request, "leave")

    async def _send_leave(self, request: web.Request) -> None:
        origin = calling_server(request)
        room_id, event_id = _room_and(request, "eventId")
        pdu = federation_body(request)
        await self._resident.send_membership(origin, room_id, event_id, pdu, "leave")

    async def send_leave_v1(self, request: web.Request) -> web.Response:
        """PUT /_matrix/federation/v1/send_leave/{roomId}/{eventId}
        (spec: server-server-api/#put_matrixfederationv1send_leaveroomideventid)."""
        await self._send_leave(request)
        return json_response([200, {}])

    async def send_leave_v2(self, request: web.Request) -> web.Response:
        """PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}
        (spec: server-server-api/#put_matrixfederationv2send_leaveroomideventid)."""
        await self._send_leave(request)
        return json_response({})

    # --- knocks -----------------------------------------------------------------------------

    async def make_knock(self, request: web.Request) -> web.Response:
        """GET /_matrix/federation/v1/make_knock/{roomId}/{userId}
        (spec: server-server-api/#get_matrixfederationv1make_knockroomiduserid)."""
        return await self._make(request, "knock")

    async def send_knock(self, request: web.Request) -> web.Response:
        """PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}
        (spec: server-server-api/#put_matrixfederationv1send_knockroomideventid)."""
        origin = calling_server(request)
        room_id, event_id = _room_and(request, "eventId")
        pdu = federation_body(request)
        await self._resident.send_membership(origin, room_id, event_id, pdu, "knock")
        return json_response({"knock_room_state": await self._resident.knock_room_state(room_id)})

    # --- invites ----------------------------------------------------------------------------

    async def invite_v1(self, request: web.Request) -> web.Response:
        """PUT /_matrix/federation/v1/invite/{roomId}/{eventId} — rooms 1 and 2 only
        (spec: server-server-api/#put_matrixfederationv1inviteroomideventid)."""
        origin = calling_server(request)
        room_id, event_id = _room_and(request, "eventId")
        pdu = federation_body(request)
        unsigned = pdu.get("unsigned")
        state = unsigned.get("invite_room_state") if isinstance(unsigned, dict) else None
        # v1 carries no room version: only rooms 1-2 may use it; their events say which.
        version = get_room_version("1")
        event = await self._resident.receive_invite(origin, room_id, event_id, pdu, version, state)
        return json_response([200, {"event": pdu_for_federation(event)}])

    async def invite_v2(self, request: web.Request) -> web.Response:
        """PUT /_matrix/federation/v2/invite/{roomId}/{eventId}
        (spec: server-server-api/#put_matrixfederationv2inviteroomideventid)."""
        origin = calling_server(request)
        room_id, event_id = _room_and(request, "eventId")
        body = federation_body(request)
        version_id = body.get("room_version")
        if not isinstance(version_id, str):
            raise MatrixError(400, "M_MISSING_PARAM", "Missing 'room_version'")
        if version_id not in KNOWN_ROOM_VERSIONS:
            raise MatrixError(
                400,
                "M_INCOMPATIBLE_ROOM_VERSION",
                f"Room version {version_id!r} is not supported",
                room_version=version_id,
            )
        if not isinstance(body.get("event"), dict):
            raise bad_json("'event' must be an object")
        event = await self._resident.receive_invite(
            origin,
            room_id,
            event_id,
            body["event"],
            get_room_version(version_id),
            body.get("invite_room_state"),
        )
        return json_response({"event": pdu_for_federation(event)})

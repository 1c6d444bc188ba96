"""Client-Server API endpoints answered by application services: ping (spec:
client-server-api/#post_matrixclientv1appserviceappserviceidping) and the third-party
network lookups (spec: client-server-api "Third-party Networks"), which are asked of the
services whose registrations list the protocol.
"""

from __future__ import annotations

from aiohttp import web

from starling.api.http import json_response, read_json_object
from starling.api.routing import requester_of
from starling.appservice.queries import AppServiceQueries
from starling.errors import MatrixError, forbidden, missing_param, not_found

MAX_PROTOCOL_LENGTH = 255


def _protocol(request: web.Request) -> str:
    protocol = request.match_info["protocol"]
    if not protocol or len(protocol) > MAX_PROTOCOL_LENGTH:
        raise MatrixError(400, "M_INVALID_PARAM", "Invalid protocol name")
    return protocol


class AppServiceRoutes:
    def __init__(self, queries: AppServiceQueries) -> None:
        self.queries = queries

    # POST /_matrix/client/v1/appservice/{appserviceId}/ping
    # (spec: client-server-api/#post_matrixclientv1appserviceappserviceidping)
    async def ping(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        if requester.app_service is None:
            raise forbidden("Only an application service may ping itself")
        body = await read_json_object(request, allow_empty=True)
        transaction_id = body.get("transaction_id")
        if transaction_id is not None and not isinstance(transaction_id, str):
            raise MatrixError(400, "M_BAD_JSON", "'transaction_id' must be a string")
        duration = await self.queries.ping(
            request.match_info["appserviceId"], requester.app_service.id, transaction_id
        )
        return json_response({"duration_ms": duration})

    # GET /_matrix/client/v3/thirdparty/protocols
    # (spec: client-server-api/#get_matrixclientv3thirdpartyprotocols)
    async def protocols(self, request: web.Request) -> web.Response:
        return json_response(await self.queries.protocols())

    # GET /_matrix/client/v3/thirdparty/protocol/{protocol}
    # (spec: client-server-api/#get_matrixclientv3thirdpartyprotocolprotocol)
    async def protocol(self, request: web.Request) -> web.Response:
        protocol = _protocol(request)
        found = await self.queries.protocol(protocol)
        if found is None:
            raise not_found(f"Unknown protocol {protocol!r}")
        return json_response(found)

    # GET /_matrix/client/v3/thirdparty/user/{protocol}
    # (spec: client-server-api/#get_matrixclientv3thirdpartyuserprotocol)
    async def user(self, request: web.Request) -> web.Response:
        fields = {k: v for k, v in request.query.items() if k != "access_token"}
        return json_response(await self.queries.lookup("user", _protocol(request), fields))

    # GET /_matrix/client/v3/thirdparty/location/{protocol}
    # (spec: client-server-api/#get_matrixclientv3thirdpartylocationprotocol)
    async def location(self, request: web.Request) -> web.Response:
        fields = {k: v for k, v in request.query.items() if k != "access_token"}
        return json_response(await self.queries.lookup("location", _protocol(request), fields))

    # GET /_matrix/client/v3/thirdparty/user
    # (spec: client-server-api/#get_matrixclientv3thirdpartyuser)
    async def user_reverse(self, request: web.Request) -> web.Response:
        user_id = request.query.get("userid")
        if user_id is None:
            raise missing_param("Missing 'userid'")
        return json_response(await self.queries.reverse_lookup("user", {"userid": user_id}))

    # GET /_matrix/client/v3/thirdparty/location
    # (spec: client-server-api/#get_matrixclientv3thirdpartylocation)
    async def location_reverse(self, request: web.Request) -> web.Response:
        alias = request.query.get("alias")
        if alias is None:
            raise missing_param("Missing 'alias'")
        return json_response(await self.queries.reverse_lookup("location", {"alias": alias}))

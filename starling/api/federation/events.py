"""The room DAG over federation: receiving transactions and answering reads.

PUT  /_matrix/federation/v1/send/{txnId}                 (server-server-api/#put_matrixfederationv1sendtxnid)
GET  /_matrix/federation/v1/event/{eventId}              (#get_matrixfederationv1eventeventid)
GET  /_matrix/federation/v1/state/{roomId}               (#get_matrixfederationv1stateroomid)
GET  /_matrix/federation/v1/state_ids/{roomId}           (#get_matrixfederationv1state_idsroomid)
GET  /_matrix/federation/v1/event_auth/{roomId}/{eventId} (#get_matrixfederationv1event_authroomideventid)
GET  /_matrix/federation/v1/backfill/{roomId}            (#get_matrixfederationv1backfillroomid)
POST /_matrix/federation/v1/get_missing_events/{roomId}  (#post_matrixfederationv1get_missing_eventsroomid)

The route guard authenticates the origin (X-Matrix); handlers parse, call one service
method, and format.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from starling.api.federation.auth import federation_body
from starling.api.http import json_response
from starling.api.routing import Auth, Route, get, origin, post, put
from starling.errors import MatrixError
from starling.federation.reads import DEFAULT_MISSING_EVENTS, FederationReads
from starling.federation.transactions import TransactionReceiver


def _bad(msg: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", msg)


def _required_query(request: web.Request, name: str) -> str:
    value = request.query.get(name)
    if value is None or value == "":
        raise MatrixError(400, "M_MISSING_PARAM", f"Missing '{name}' query parameter")
    return value


def _int(value: Any, name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise _bad(f"'{name}' must be an integer") from None
    if not isinstance(value, int) or isinstance(value, bool):
        raise MatrixError(400, "M_BAD_JSON", f"'{name}' must be an integer")
    return value


def _id_list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MatrixError(400, "M_BAD_JSON", f"'{key}' must be a list of event IDs")
    return value


class FederationEventsApi:
    def __init__(self, receiver: TransactionReceiver, reads: FederationReads) -> None:
        self._receiver = receiver
        self._reads = reads

    async def send(self, request: web.Request) -> web.Response:
        """PUT /_matrix/federation/v1/send/{txnId}
        (spec: server-server-api/#put_matrixfederationv1sendtxnid)"""
        body = federation_body(request)
        answer = await self._receiver.on_transaction(
            origin(request), request.match_info["txnId"], body
        )
        return json_response(answer)

    async def event(self, request: web.Request) -> web.Response:
        """GET /_matrix/federation/v1/event/{eventId}
        (spec: server-server-api/#get_matrixfederationv1eventeventid)"""
        return json_response(
            await self._reads.get_event(origin(request), request.match_info["eventId"])
        )

    async def state(self, request: web.Request) -> web.Response:
        """GET /_matrix/federation/v1/state/{roomId}?event_id=
        (spec: server-server-api/#get_matrixfederationv1stateroomid)"""
        event_id = _required_query(request, "event_id")
        return json_response(
            await self._reads.state(origin(request), request.match_info["roomId"], event_id)
        )

    async def state_ids(self, request: web.Request) -> web.Response:
        """GET /_matrix/federation/v1/state_ids/{roomId}?event_id=
        (spec: server-server-api/#get_matrixfederationv1state_idsroomid)"""
        event_id = _required_query(request, "event_id")
        return json_response(
            await self._reads.state_ids(origin(request), request.match_info["roomId"], event_id)
        )

    async def event_auth(self, request: web.Request) -> web.Response:
        """GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}
        (spec: server-server-api/#get_matrixfederationv1event_authroomideventid)"""
        info = request.match_info
        return json_response(
            await self._reads.event_auth(origin(request), info["roomId"], info["eventId"])
        )

    async def backfill(self, request: web.Request) -> web.Response:
        """GET /_matrix/federation/v1/backfill/{roomId}?v=...&limit=
        (spec: server-server-api/#get_matrixfederationv1backfillroomid)"""
        from_ids = request.query.getall("v", [])
        if not from_ids:
            raise MatrixError(400, "M_MISSING_PARAM", "Missing 'v' query parameter")
        limit = _int(_required_query(request, "limit"), "limit", 0)
        return json_response(
            await self._reads.backfill(
                origin(request), request.match_info["roomId"], from_ids, limit
            )
        )

    async def get_missing_events(self, request: web.Request) -> web.Response:
        """POST /_matrix/federation/v1/get_missing_events/{roomId}
        (spec: server-server-api/#post_matrixfederationv1get_missing_eventsroomid)"""
        body = federation_body(request)
        # A server the room's ACL bans (or that is not in the room) hears only that,
        # whatever its request holds.
        await self._reads.check_origin(request.match_info["roomId"], origin(request))
        answer = await self._reads.get_missing_events(
            origin(request),
            request.match_info["roomId"],
            _id_list(body, "earliest_events"),
            _id_list(body, "latest_events"),
            _int(body.get("limit"), "limit", DEFAULT_MISSING_EVENTS),
            _int(body.get("min_depth"), "min_depth", 0),
        )
        return json_response(answer)

    def routes(self) -> list[Route]:
        """This area's rows of `routes.federation_table` (all v1, all X-Matrix)."""
        fed = Auth.FEDERATION
        return [
            put("/send/{txnId}", self.send, fed),
            get("/event/{eventId}", self.event, fed),
            get("/state/{roomId}", self.state, fed),
            get("/state_ids/{roomId}", self.state_ids, fed),
            get("/event_auth/{roomId}/{eventId}", self.event_auth, fed),
            get("/backfill/{roomId}", self.backfill, fed),
            post("/get_missing_events/{roomId}", self.get_missing_events, fed),
        ]

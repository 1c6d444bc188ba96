"""Client-Server API: end-to-end encryption keys and cross-signing.

Spec: client-server-api "End-to-End Encryption" > Key management API (keys.yaml) and
"Cross-signing" (cross_signing.yaml).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from starling.accounts.service import AccountService
from starling.api.http import json_response, read_json_object
from starling.api.routing import requester_of
from starling.e2ee.cross_signing import CrossSigningService
from starling.e2ee.device_lists import DeviceListTracker
from starling.e2ee.keys import E2eKeyService
from starling.errors import bad_json, missing_param
from starling.sync.tokens import SyncToken

MAX_TIMEOUT_MS = 60_000


def _timeout(body: dict[str, Any]) -> int:
    value = body.get("timeout", 10_000)
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad_json("'timeout' must be an integer")
    return min(max(value, 0), MAX_TIMEOUT_MS)


class KeyRoutes:
    def __init__(
        self,
        keys: E2eKeyService,
        cross_signing: CrossSigningService,
        device_lists: DeviceListTracker,
        accounts: AccountService,
    ) -> None:
        self.keys = keys
        self.cross_signing = cross_signing
        self.device_lists = device_lists
        self.accounts = accounts

    # POST /_matrix/client/v3/keys/upload
    # (spec: client-server-api/#post_matrixclientv3keysupload)
    async def upload(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        result = await self.keys.upload(requester.user_id, requester.device_id, body)
        return json_response(result)

    # POST /_matrix/client/v3/keys/query
    # (spec: client-server-api/#post_matrixclientv3keysquery)
    async def query(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        if "device_keys" not in body:
            raise missing_param("Missing 'device_keys'")
        result = await self.keys.query(requester.user_id, body["device_keys"], _timeout(body))
        return json_response(result)

    # POST /_matrix/client/v3/keys/claim
    # (spec: client-server-api/#post_matrixclientv3keysclaim)
    async def claim(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        if "one_time_keys" not in body:
            raise missing_param("Missing 'one_time_keys'")
        result = await self.keys.claim(body["one_time_keys"], _timeout(body))
        return json_response(result)

    # GET /_matrix/client/v3/keys/changes
    # (spec: client-server-api/#get_matrixclientv3keyschanges)
    async def changes(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        raw_from = request.query.get("from")
        if raw_from is None:
            raise missing_param("Missing 'from'")
        current = self.device_lists.current_position()
        since = SyncToken.parse(raw_from).streams.get("device_lists", 0)
        upto = current
        raw_to = request.query.get("to")
        if raw_to is not None:
            upto = min(SyncToken.parse(raw_to).streams.get("device_lists", current), current)
        result = await self.keys.changes(requester.user_id, since, upto)
        return json_response(result)

    # POST /_matrix/client/v3/keys/device_signing/upload
    # (spec: client-server-api/#post_matrixclientv3keysdevice_signingupload)
    async def upload_signing_keys(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        await self.cross_signing.upload_by_request(
            requester.user_id,
            body,
            lambda: self.accounts.require_password_auth(
                requester, body.get("auth"), request.path, request.method
            ),
        )
        return json_response({})

    # POST /_matrix/client/v3/keys/signatures/upload
    # (spec: client-server-api/#post_matrixclientv3keyssignaturesupload)
    async def upload_signatures(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        result = await self.cross_signing.upload_signatures(requester.user_id, body)
        return json_response(result)

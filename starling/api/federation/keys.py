"""Server key endpoints (spec: Server-Server API > Retrieving server keys): this server's
own keys, and the notary queries for other servers' keys. No authentication: these are
how a server gets the keys it needs to authenticate anything else."""

from __future__ import annotations

import time

from aiohttp import web

from starling.api.http import json_response, read_json_object
from starling.errors import bad_json, invalid_param
from starling.federation.keyring import KeyServer
from starling.protocol.identifiers import is_valid_server_name

# Servers one notary query may ask about.
MAX_SERVERS_PER_QUERY = 100
MAX_KEYS_PER_SERVER = 20


def _now_ms() -> int:
    return int(time.time() * 1000)


class KeysApi:
    def __init__(self, key_server: KeyServer) -> None:
        self._keys = key_server

    async def server_keys(self, request: web.Request) -> web.Response:
        """GET /_matrix/key/v2/server
        (spec: server-server-api/#get_matrixkeyv2server)."""
        return json_response(self._keys.own_keys())

    async def query_one(self, request: web.Request) -> web.Response:
        """GET /_matrix/key/v2/query/{serverName}
        (spec: server-server-api/#get_matrixkeyv2queryservername); also the deprecated
        form naming a key, /query/{serverName}/{keyId} (Synapse serves it too)."""
        server_name = request.match_info["server_name"]
        key_id = request.match_info.get("key_id")
        raw = request.query.get("minimum_valid_until_ts")
        if raw is None:
            minimum = _now_ms()
        else:
            try:
                minimum = int(raw)
            except ValueError:
                raise invalid_param("minimum_valid_until_ts must be an integer") from None
        if not is_valid_server_name(server_name):
            return json_response({"server_keys": []})
        key_ids = {server_name: [key_id]} if key_id else None
        answer = await self._keys.query({server_name: minimum}, key_ids)
        return json_response({"server_keys": answer})

    async def query_many(self, request: web.Request) -> web.Response:
        """POST /_matrix/key/v2/query
        (spec: server-server-api/#post_matrixkeyv2query)."""
        body = await read_json_object(request)
        server_keys = body.get("server_keys")
        if not isinstance(server_keys, dict):
            raise bad_json("server_keys must be an object of server names")
        if len(server_keys) > MAX_SERVERS_PER_QUERY:
            raise invalid_param(f"at most {MAX_SERVERS_PER_QUERY} servers per query")
        now = _now_ms()
        criteria: dict[str, int] = {}
        key_ids: dict[str, list[str]] = {}
        for server_name, key_criteria in server_keys.items():
            if not isinstance(key_criteria, dict):
                raise bad_json(f"server_keys.{server_name} must be an object of key IDs")
            minimum = now
            stated = []
            for key_id, c in key_criteria.items():
                if not isinstance(c, dict):
                    raise bad_json(f"server_keys.{server_name}.{key_id} must be an object")
                ts = c.get("minimum_valid_until_ts", now)
                if not isinstance(ts, int) or isinstance(ts, bool):
                    raise bad_json("minimum_valid_until_ts must be an integer")
                stated.append(ts)
            if len(key_criteria) > MAX_KEYS_PER_SERVER:
                raise invalid_param(f"at most {MAX_KEYS_PER_SERVER} key IDs per server")
            if stated:
                minimum = max(stated)
            if is_valid_server_name(server_name):
                criteria[server_name] = minimum
                key_ids[server_name] = list(key_criteria)
        return json_response({"server_keys": await self._keys.query(criteria, key_ids)})

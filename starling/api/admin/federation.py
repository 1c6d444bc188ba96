"""Admin API: the federation destinations (Synapse's paths), so admins see which servers
are down and since when.

- ``GET /_synapse/admin/v1/federation/destinations?from=&limit=&destination=``
- ``GET /_synapse/admin/v1/federation/destinations/{destination}``
- ``POST /_synapse/admin/v1/federation/destinations/{destination}/reset_connection``
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from starling.api.http import json_response
from starling.api.routing import Auth, Route, get, post
from starling.errors import invalid_param, not_found
from starling.federation.sender import FederationSender
from starling.federation.sender.sender import DestinationRow

MAX_LIMIT = 1000


def _json(row: DestinationRow) -> dict[str, Any]:
    return {
        "destination": row.destination,
        "retry_last_ts": max(0, row.retry_until_ts - row.retry_interval_ms)
        if row.retry_interval_ms
        else 0,
        "retry_interval": row.retry_interval_ms,
        "retry_until_ts": row.retry_until_ts,
        "failure_ts": row.failing_since_ts,
        "last_successful_stream_ordering": row.last_successful,
    }


def _int_param(request: web.Request, name: str, default: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) > maximum:
        raise invalid_param(f"'{name}' must be an integer from 0 to {maximum}")
    return int(raw)


class FederationDestinationsAdmin:
    def __init__(self, sender: FederationSender) -> None:
        self._sender = sender

    async def list_destinations(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/federation/destinations
        (Synapse admin API: docs/admin_api/federation.md)"""
        start = _int_param(request, "from", 0, 2**31)
        limit = _int_param(request, "limit", 100, MAX_LIMIT)
        rows, total = await self._sender.list_destinations(
            start, limit, request.query.get("destination")
        )
        body: dict[str, Any] = {"destinations": [_json(r) for r in rows], "total": total}
        if start + len(rows) < total:
            body["next_token"] = str(start + len(rows))
        return json_response(body)

    async def one(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/federation/destinations/{destination}
        (Synapse admin API: docs/admin_api/federation.md)"""
        return json_response(_json(await self._row(request.match_info["destination"])))

    async def reset_connection(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v1/federation/destinations/{destination}/reset_connection
        (Synapse admin API: docs/admin_api/federation.md)"""
        row = await self._row(request.match_info["destination"])
        await self._sender.reset_connection(row.destination)
        return json_response({})

    async def _row(self, destination: str) -> DestinationRow:
        row = await self._sender.get_destination(destination)
        if row is None:
            raise not_found("Unknown destination")
        return row

    def routes(self) -> list[Route]:
        return [
            get("/federation/destinations", self.list_destinations, Auth.ADMIN),
            get("/federation/destinations/{destination}", self.one, Auth.ADMIN),
            post(
                "/federation/destinations/{destination}/reset_connection",
                self.reset_connection,
                Auth.ADMIN,
            ),
        ]

"""This server's published room directory, for other servers (spec: Server-Server API >
Published Room Directory)."""

from __future__ import annotations

from aiohttp import web

from starling.api.federation.auth import federation_body
from starling.api.http import json_response
from starling.directory.service import DirectoryService, PublicRoomsFilter
from starling.errors import bad_json, forbidden, invalid_param

MAX_SEARCH_TERM_LENGTH = 1000


def _limit(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise invalid_param("'limit' must be a non-negative integer")
    return value or None  # 0: no limit (the directory's page size caps it)


class PublicRoomsApi:
    def __init__(self, directory: DirectoryService, *, allowed: bool) -> None:
        self._directory = directory
        # allow_public_rooms_over_federation (Synapse's key and default: off), so a
        # company server does not list its rooms to every server that asks.
        self._allowed = allowed

    def _check_allowed(self) -> None:
        if not self._allowed:
            raise forbidden("This server does not share its room directory over federation")

    async def get_public_rooms(self, request: web.Request) -> web.Response:
        """GET /_matrix/federation/v1/publicRooms
        (spec: server-server-api/#get_matrixfederationv1publicrooms)."""
        self._check_allowed()
        raw = request.query.get("limit")
        try:
            limit = _limit(int(raw)) if raw is not None else None
        except ValueError:
            raise invalid_param("'limit' must be an integer") from None
        result = await self._directory.public_rooms(
            limit=limit, since=request.query.get("since") or None
        )
        return json_response(result)

    async def post_public_rooms(self, request: web.Request) -> web.Response:
        """POST /_matrix/federation/v1/publicRooms
        (spec: server-server-api/#post_matrixfederationv1publicrooms)."""
        self._check_allowed()
        body = federation_body(request)
        since = body.get("since")
        if since is not None and not isinstance(since, str):
            raise bad_json("'since' must be a string")
        # A false or empty filter counts as none here.
        search_filter = PublicRoomsFilter.from_body(
            body.get("filter") or None, MAX_SEARCH_TERM_LENGTH
        )
        result = await self._directory.public_rooms(
            limit=_limit(body.get("limit")),
            since=since or None,
            search=search_filter.search,
            room_types=search_filter.room_types,
        )
        return json_response(result)

"""Client-Server API: POST /user_directory/search (spec: client-server-api "User
Directory", #post_matrixclientv3user_directorysearch).

With `user_directory.enabled` off, every search answers no results (as Synapse does;
UserDirectoryService decides).
"""

from __future__ import annotations

from aiohttp import web

from starling.api.client.common import body_str
from starling.api.http import json_response, read_json_object
from starling.api.routing import requester_of
from starling.errors import bad_json
from starling.user_directory.service import UserDirectoryService

DEFAULT_LIMIT = 10
MAX_LIMIT = 50
MAX_TERM_LENGTH = 256


class UserDirectoryRoutes:
    def __init__(self, user_directory: UserDirectoryService) -> None:
        self.user_directory = user_directory

    # POST /_matrix/client/v3/user_directory/search
    # (spec: client-server-api/#post_matrixclientv3user_directorysearch)
    async def search(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        term = body_str(body, "search_term", required=True)
        assert term is not None
        limit = body.get("limit", DEFAULT_LIMIT)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise bad_json("'limit' must be a non-negative integer")
        limit = min(limit, MAX_LIMIT)
        result = await self.user_directory.search(requester.user_id, term[:MAX_TERM_LENGTH], limit)
        return json_response(result)

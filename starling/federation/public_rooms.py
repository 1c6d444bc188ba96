"""Another server's published room directory, asked over federation (spec: Server-Server
API > Published Room Directory), for `GET/POST /publicRooms?server=<name>`."""

from __future__ import annotations

from typing import Any

from starling.errors import MatrixError
from starling.federation.client import FederationClient
from starling.federation.errors import FederationError, FederationUnreachable

PATH = "/_matrix/federation/v1/publicRooms"


class RemotePublicRooms:
    def __init__(self, client: FederationClient) -> None:
        self._client = client

    async def fetch(
        self, server: str, limit: int | None, since: str | None, search_filter: dict[str, Any]
    ) -> dict[str, Any]:
        """The page `server` answers; 502 M_UNKNOWN when it cannot be asked, its own error
        when it refuses."""
        try:
            if search_filter:
                body: dict[str, Any] = {"filter": search_filter}
                if limit is not None:
                    body["limit"] = limit
                if since:
                    body["since"] = since
                answer = await self._client.post_json(server, PATH, body, timeout=30.0)
            else:
                query: dict[str, str | int] = {}
                if limit is not None:
                    query["limit"] = limit
                if since:
                    query["since"] = since
                answer = await self._client.get_json(server, PATH, query, timeout=30.0)
        except FederationUnreachable as e:
            raise MatrixError(502, "M_UNKNOWN", f"Cannot reach {server}: {e.reason}") from None
        except FederationError as e:
            if e.status in (400, 403, 404) and e.errcode:
                raise MatrixError(e.status, e.errcode, e.message) from None
            raise MatrixError(502, "M_UNKNOWN", f"{server} answered {e.status}") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("chunk"), list):
            raise MatrixError(502, "M_UNKNOWN", f"{server} answered without a room list")
        return answer

"""Questions this server asks other servers for its clients (spec: server-server API
"Querying for information"): where a room alias points (`/query/directory`, for joining
by a remote alias and `GET /directory/room/{alias}`) and a remote user's profile
(`/query/profile`, for `GET /profile/{userId}`). Answers are checked for shape; an
unreachable server is a 502, an unknown name a 404.

Alias answers are kept for a minute for `GET /directory/room/{alias}` (clients showing a
room's alias resolve it again and again), and concurrent lookups of one alias share one
request; joins ask anew (`fresh`: an alias may have just been pointed elsewhere, and
joining the old room would be wrong), errors are not kept, so an alias created a moment
ago is found on the next try.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from starling.errors import MatrixError
from starling.federation.errors import FederationError, FederationUnreachable
from starling.federation.sender.hosts import server_of
from starling.locks import SharedTasks

QUERY_TIMEOUT = 15.0
MAX_SERVERS = 20
ALIAS_CACHE_SECONDS = 60.0
MAX_CACHED_ALIASES = 10_000


class QueryClient(Protocol):
    async def get_json(
        self, destination: str, path: str, query: Any = None, *, timeout: float = 60.0
    ) -> Any: ...


class RemoteQueries:
    def __init__(self, client: QueryClient, clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._clock = clock
        self._aliases: OrderedDict[str, tuple[float, tuple[str, list[str]]]] = OrderedDict()
        self._alias_lookups: SharedTasks[str, tuple[str, list[str]]] = SharedTasks()

    async def query_directory(self, alias: str, *, fresh: bool = False) -> tuple[str, list[str]]:
        """GET /query/directory at the alias's server: (room ID, servers in the room),
        from the cache when asked within the last minute, unless `fresh`."""
        hit = None if fresh else self._aliases.get(alias)
        if hit is not None and self._clock() - hit[0] < ALIAS_CACHE_SECONDS:
            return hit[1][0], list(hit[1][1])
        room_id, servers = await self._alias_lookups.run(
            alias, lambda: self._query_directory(alias)
        )
        self._aliases[alias] = (self._clock(), (room_id, servers))
        self._aliases.move_to_end(alias)
        while len(self._aliases) > MAX_CACHED_ALIASES:
            self._aliases.popitem(last=False)
        return room_id, list(servers)

    async def _query_directory(self, alias: str) -> tuple[str, list[str]]:
        server = alias.partition(":")[2]
        try:
            response = await self._client.get_json(
                server,
                "/_matrix/federation/v1/query/directory",
                {"room_alias": alias},
                timeout=QUERY_TIMEOUT,
            )
        except FederationError as e:
            if e.status == 404:
                raise MatrixError(404, "M_NOT_FOUND", f"Room alias {alias} not found") from None
            raise MatrixError(502, "M_UNKNOWN", f"{server}: {e}") from None
        except FederationUnreachable as e:
            raise MatrixError(502, "M_UNKNOWN", f"Cannot reach {server}: {e.reason}") from None
        room_id = response.get("room_id") if isinstance(response, dict) else None
        servers = response.get("servers") if isinstance(response, dict) else None
        if not isinstance(room_id, str) or not room_id.startswith("!"):
            raise MatrixError(502, "M_UNKNOWN", f"{server} answered without a room ID")
        listed = [s for s in servers if isinstance(s, str)] if isinstance(servers, list) else []
        return room_id, _unique([server, *listed[:20]])

    async def query_profile(self, user_id: str, field: str | None = None) -> dict[str, Any]:
        """GET /query/profile at the user's server."""
        server = server_of(user_id)
        query = {"user_id": user_id}
        if field is not None:
            query["field"] = field
        try:
            response = await self._client.get_json(
                server, "/_matrix/federation/v1/query/profile", query, timeout=QUERY_TIMEOUT
            )
        except FederationError as e:
            if e.status == 404:
                raise MatrixError(404, "M_NOT_FOUND", "Profile not found") from None
            raise MatrixError(502, "M_UNKNOWN", f"{server}: {e}") from None
        except FederationUnreachable as e:
            # No profile information can be had: the spec's 404, which clients handle.
            raise MatrixError(
                404, "M_NOT_FOUND", f"Profile not found ({server} unreachable: {e.reason})"
            ) from None
        if not isinstance(response, dict):
            raise MatrixError(502, "M_UNKNOWN", f"{server} answered with no profile")
        out: dict[str, Any] = {}
        for key in ("displayname", "avatar_url"):
            value = response.get(key)
            if isinstance(value, str) and (field is None or field == key):
                out[key] = value
        return out


def _unique(items: list[str]) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen

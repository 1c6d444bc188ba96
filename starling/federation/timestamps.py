"""/timestamp_to_event: the event of a room closest to a point in time.

Spec: client-server-api GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event and
server-server-api GET /_matrix/federation/v1/timestamp_to_event/{roomId}.

Locally: the first accepted timeline event at or after the timestamp (`dir=f`), or the
last at or before it (`dir=b`). For our clients, when that answer may be incomplete —
no local event, or the one found sits next to a gap in the history we hold (one of its
prev events is a backward extremity) — the other servers in the room are asked (those
with the most joined users first, as backfill does) and a closer answer wins; that event
is then pulled (`/event`) through the receipt pipeline as backfilled history, so the
client's /context on it works. Other servers get only our local answer, once they pass
the room's server ACL and take part in the room.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starling.errors import MatrixError, invalid_param, not_found
from starling.federation.client import federation_path
from starling.federation.errors import FederationError, FederationUnreachable
from starling.federation.ports import FederationClientPort
from starling.federation.receipt.remote import RemoteEvents
from starling.federation.room_access import RoomAccess
from starling.protocol.power_levels import server_of
from starling.storage.event_timestamps import EventTimestampStore

logger = logging.getLogger(__name__)

MAX_SERVERS = 5
REMOTE_TIMEOUT = 10.0


class _Events(Protocol):
    async def get_event(self, event_id: str) -> Any: ...

    async def get_backward_extremities(self, room_id: str) -> list[str]: ...


class _Members(Protocol):
    async def get_joined_users(self, room_id: str) -> frozenset[str]: ...


class _Pipeline(Protocol):
    async def process_pulled_events(
        self, origin: str, room_id: str, pdus: list[dict[str, Any]], *, backfilled: bool
    ) -> None: ...


def parse_direction(value: str | None) -> bool:
    """`dir`: True for forwards (f), False for backwards (b)."""
    if value is None:
        raise MatrixError(400, "M_MISSING_PARAM", "Missing 'dir'")
    if value not in ("f", "b"):
        raise invalid_param("dir must be f or b")
    return value == "f"


def _answer(found: tuple[str, int]) -> dict[str, Any]:
    return {"event_id": found[0], "origin_server_ts": found[1]}


def _none_found(ts: int, forwards: bool) -> MatrixError:
    way = "forward" if forwards else "backward"
    return not_found(f"Unable to find event from {ts} in {way} direction")


class TimestampLookup:
    def __init__(
        self,
        server_name: str,
        store: EventTimestampStore,
        events: _Events,
        memberships: _Members,
        client: FederationClientPort,
        access: RoomAccess,
        pipeline: _Pipeline,
        user_access: Callable[[str, str], Awaitable[object]],
    ) -> None:
        self._server_name = server_name
        self._store = store
        self._events = events
        self._memberships = memberships
        self._client = client
        self._remote = RemoteEvents(client, timeout=REMOTE_TIMEOUT)
        self._access = access
        self._pipeline = pipeline
        # 403 unless the user may read the room (member, former member, world-readable).
        self._user_access = user_access

    async def for_server(self, origin: str, room_id: str, ts: int, forwards: bool) -> Any:
        """GET /_matrix/federation/v1/timestamp_to_event/{roomId}: our own answer."""
        await self._access.check_origin(room_id, origin)
        found = await self._store.closest_event(room_id, ts, forwards)
        if found is None:
            raise _none_found(ts, forwards)
        return _answer(found)

    async def for_user(self, user_id: str, room_id: str, ts: int, forwards: bool) -> Any:
        """GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event."""
        await self._user_access(user_id, room_id)
        local = await self._store.closest_event(room_id, ts, forwards)
        if local is None or await self._next_to_gap(room_id, local[0]):
            remote = await self._ask_servers(room_id, ts, forwards, local)
            if remote is not None:
                return _answer(remote)
        if local is None:
            raise _none_found(ts, forwards)
        return _answer(local)

    async def _next_to_gap(self, room_id: str, event_id: str) -> bool:
        found = await self._events.get_event(event_id)
        if found is None:
            return True
        gaps = set(await self._events.get_backward_extremities(room_id))
        return any(p in gaps for p in found.event.prev_event_ids)

    async def _servers(self, room_id: str) -> list[str]:
        counts: dict[str, int] = {}
        for user in await self._memberships.get_joined_users(room_id):
            server = server_of(user)
            if server and server != self._server_name:
                counts[server] = counts.get(server, 0) + 1
        return sorted(counts, key=lambda s: (-counts[s], s))[:MAX_SERVERS]

    async def _ask_servers(
        self, room_id: str, ts: int, forwards: bool, local: tuple[str, int] | None
    ) -> tuple[str, int] | None:
        """A remote answer closer than `local` (already pulled in), or None."""
        path = federation_path("/_matrix/federation/v1/timestamp_to_event/{}", room_id)
        query = {"ts": str(ts), "dir": "f" if forwards else "b"}
        for server in await self._servers(room_id):
            try:
                answer = await self._client.get_json(server, path, query, timeout=REMOTE_TIMEOUT)
            except (FederationError, FederationUnreachable) as e:
                logger.info("timestamp_to_event in %s from %s: %s", room_id, server, e)
                continue
            found = _parse_remote(answer, ts, forwards)
            if found is None:
                continue
            if local is not None and abs(found[1] - ts) >= abs(local[1] - ts):
                return None  # ours is as close: a server that knows more agrees
            if await self._pull(server, room_id, found[0]) or local is None:
                return found
            return None  # closer, but not an event we could take: ours stands
        return None

    async def _pull(self, server: str, room_id: str, event_id: str) -> bool:
        """Fetch the remote answer's event into our history, so /context can serve it;
        whether we now hold it as an accepted event of the room. (With no local answer
        the remote one is given even when this fails, as Synapse does.)"""
        if not await self._held(room_id, event_id):
            pdu = await self._remote.event(server, event_id)
            if pdu is None or pdu.get("room_id") != room_id:
                return False
            try:
                await self._pipeline.process_pulled_events(server, room_id, [pdu], backfilled=True)
            except Exception:
                logger.exception("could not store %s from %s", event_id, server)
                return False
        return await self._held(room_id, event_id)

    async def _held(self, room_id: str, event_id: str) -> bool:
        found = await self._events.get_event(event_id)
        return (
            found is not None
            and found.event.room_id == room_id
            and not found.meta.outlier
            and found.meta.rejected_reason is None
        )


def _parse_remote(answer: Any, ts: int, forwards: bool) -> tuple[str, int] | None:
    if not isinstance(answer, dict):
        return None
    event_id, event_ts = answer.get("event_id"), answer.get("origin_server_ts")
    if not isinstance(event_id, str) or not event_id.startswith("$") or len(event_id) > 255:
        return None
    if isinstance(event_ts, bool) or not isinstance(event_ts, int):
        return None
    # An answer on the wrong side of the timestamp is not an answer to our question.
    if (forwards and event_ts < ts) or (not forwards and event_ts > ts):
        return None
    return event_id, event_ts

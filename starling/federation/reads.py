"""Answering other servers' reads of a room's DAG (Server-Server API > Retrieving events;
Backfilling and retrieving missing events; Retrieving event authorisation information):
`/event`, `/state`, `/state_ids`, `/event_auth`, `/backfill`, `/get_missing_events`.

Every read names a room the origin must be allowed in by the server ACL and take part in
(`RoomAccess.check_origin`); events come back as PDUs (redacted ones in redacted form,
local `unsigned` data removed). `/event` refuses what the server may not see by history
visibility; `/backfill` and `/get_missing_events` serve such events redacted, so the
requester can still link the DAG. "The state at an event" is the state before it, as
every server answers it (the event's own state change is not in it).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from starling.errors import MatrixError
from starling.federation.room_access import RoomAccess
from starling.protocol.event import Event, StateKey
from starling.protocol.redaction import RedactionError, redact
from starling.rooms.erasure import ErasedUsers
from starling.storage.events import StoredEvent

# Spec: backfill and get_missing_events answer at most this many events per request.
MAX_BACKFILL = 100
MAX_MISSING_EVENTS = 20
DEFAULT_MISSING_EVENTS = 10
# Events named in one request (v / earliest_events / latest_events).
MAX_NAMED_EVENTS = 50


class EventGraphReader(Protocol):
    async def get_events_with_meta(self, event_ids: Iterable[str]) -> Mapping[str, StoredEvent]: ...

    async def get_state_ids_before(self, event_id: str) -> Mapping[StateKey, str] | None: ...

    async def get_auth_chain_ids(self, event_ids: Iterable[str]) -> set[str]: ...


def not_found(what: str) -> MatrixError:
    return MatrixError(404, "M_NOT_FOUND", what)


def pdu_for_federation(event: Event, meta: Any) -> dict[str, Any]:
    """The PDU as we serve it: redacted if it was redacted, without `unsigned`."""
    pdu = event.pdu
    if getattr(meta, "redacted_by", None) is not None:
        with contextlib.suppress(RedactionError):
            pdu = redact(pdu, event.room_version)
    return {k: v for k, v in pdu.items() if k != "unsigned"}


class FederationReads:
    def __init__(
        self,
        server_name: str,
        events: EventGraphReader,
        access: RoomAccess,
        clock: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._server_name = server_name
        self._events = events
        self._access = access
        self._clock = clock
        self._erased: ErasedUsers | None = None

    def use_erased(self, erased: ErasedUsers) -> None:
        """Serve erased users' events redacted (set once, at start; rooms/erasure.py)."""
        self._erased = erased

    async def _erased_senders(self, events: Iterable[Event]) -> set[str]:
        if self._erased is None:
            return set()
        return await self._erased.erased_among(e.sender for e in events)

    async def check_origin(self, room_id: str, origin: str) -> None:
        """403 unless `origin` is allowed by the room's ACL and takes part in it."""
        await self._access.check_origin(room_id, origin)

    def _transaction(self, pdus: list[dict[str, Any]]) -> dict[str, Any]:
        return {"origin": self._server_name, "origin_server_ts": self._clock(), "pdus": pdus}

    async def _event_in_room(self, room_id: str, event_id: str) -> StoredEvent:
        got = (await self._events.get_events_with_meta([event_id])).get(event_id)
        if got is None or got.event.room_id != room_id:
            raise not_found(f"Unknown event {event_id} in room {room_id}")
        return got

    async def _auth_chain(self, event: Event, ids: Iterable[str]) -> set[str]:
        """The auth chain of `ids`; in room version 12 the create event too, which auth
        events never list but every check needs (the room ID only names it)."""
        chain = await self._events.get_auth_chain_ids(ids)
        if event.room_version.room_id_from_create_event and event.room_id.startswith("!"):
            chain.add("$" + event.room_id[1:])
        return chain

    async def _pdus(self, event_ids: Iterable[str]) -> list[dict[str, Any]]:
        got = await self._events.get_events_with_meta(event_ids)
        return [pdu_for_federation(ev, meta) for ev, meta in got.values()]

    # --- GET /event/{eventId} ----------------------------------------------------------

    async def get_event(self, origin: str, event_id: str) -> dict[str, Any]:
        got = (await self._events.get_events_with_meta([event_id])).get(event_id)
        if got is None:
            raise not_found(f"Unknown event {event_id}")
        event, meta = got
        await self._access.check_origin(event.room_id, origin)
        if event.event_id not in await self._access.visible_to_server(origin, [event]):
            raise not_found(f"Unknown event {event_id}")
        pdu = pdu_for_federation(event, meta)
        if await self._erased_senders([event]):
            with contextlib.suppress(RedactionError):
                pdu = redact(pdu, event.room_version)
        return self._transaction([pdu])

    # --- GET /state and /state_ids -----------------------------------------------------

    async def _state_at(
        self, origin: str, room_id: str, event_id: str
    ) -> tuple[list[str], set[str]]:
        await self._access.check_origin(room_id, origin)
        event, meta = await self._event_in_room(room_id, event_id)
        # A rejected event is no point of the DAG (nothing may cite it), so there is no
        # state "at" it to serve; neither for an outlier, whose state we do not know.
        if getattr(meta, "rejected_reason", None) is not None:
            raise not_found(f"No state is known at {event_id}: it was rejected")
        state = await self._events.get_state_ids_before(event.event_id)
        if state is None:
            raise not_found(f"No state is known at {event_id}")
        ids = list(state.values())
        return ids, await self._auth_chain(event, ids)

    async def state_ids(self, origin: str, room_id: str, event_id: str) -> dict[str, Any]:
        ids, chain = await self._state_at(origin, room_id, event_id)
        return {"pdu_ids": ids, "auth_chain_ids": sorted(chain)}

    async def state(self, origin: str, room_id: str, event_id: str) -> dict[str, Any]:
        ids, chain = await self._state_at(origin, room_id, event_id)
        return {"pdus": await self._pdus(ids), "auth_chain": await self._pdus(sorted(chain))}

    # --- GET /event_auth/{roomId}/{eventId} --------------------------------------------

    async def event_auth(self, origin: str, room_id: str, event_id: str) -> dict[str, Any]:
        await self._access.check_origin(room_id, origin)
        event, _ = await self._event_in_room(room_id, event_id)
        chain = await self._auth_chain(event, [event.event_id])
        chain.discard(event.event_id)
        return {"auth_chain": await self._pdus(sorted(chain))}

    # --- GET /backfill/{roomId} --------------------------------------------------------

    async def backfill(
        self, origin: str, room_id: str, from_ids: Sequence[str], limit: int
    ) -> dict[str, Any]:
        """Up to `limit` events from `from_ids` backwards (those included), newest first."""
        await self._access.check_origin(room_id, origin)
        limit = max(0, min(limit, MAX_BACKFILL))
        start = [e for e in dict.fromkeys(from_ids)][:MAX_NAMED_EVENTS]
        found = await self._walk_back(room_id, start, include_start=True, stop=set(), limit=limit)
        return self._transaction(await self._serve_filtered(origin, found))

    # --- POST /get_missing_events/{roomId} ---------------------------------------------

    async def get_missing_events(
        self,
        origin: str,
        room_id: str,
        earliest: Sequence[str],
        latest: Sequence[str],
        limit: int,
        min_depth: int,
    ) -> dict[str, Any]:
        """Events before `latest` back to `earliest` (both excluded), depth >= min_depth,
        at most `limit`, oldest first."""
        await self._access.check_origin(room_id, origin)
        limit = max(0, min(limit, MAX_MISSING_EVENTS))
        latest = list(dict.fromkeys(latest))[:MAX_NAMED_EVENTS]
        stop = set(list(earliest)[:MAX_NAMED_EVENTS]) | set(latest)
        found = await self._walk_back(
            room_id, latest, include_start=False, stop=stop, limit=limit, min_depth=min_depth
        )
        found.sort(key=lambda pair: (pair.event.depth, pair.event.event_id))
        return {"events": await self._serve_filtered(origin, found)}

    # --- the walk ----------------------------------------------------------------------

    async def _walk_back(
        self,
        room_id: str,
        start: Sequence[str],
        *,
        include_start: bool,
        stop: set[str],
        limit: int,
        min_depth: int = 0,
    ) -> list[StoredEvent]:
        """Breadth-first over prev_events from `start`, deepest first, one query per level."""
        out: list[StoredEvent] = []
        seen: set[str] = set(stop)
        frontier: list[str] = []
        if include_start:
            frontier = [e for e in start if e not in seen]
        else:
            starts = await self._events.get_events_with_meta(start)
            for eid in start:
                got = starts.get(eid)
                if got is not None and got.event.room_id == room_id:
                    frontier.extend(got.event.prev_event_ids)
        while frontier and len(out) < limit:
            ids = [e for e in dict.fromkeys(frontier) if e not in seen]
            seen.update(ids)
            level_got = await self._events.get_events_with_meta(ids)
            level = sorted(
                (pair for pair in level_got.values() if pair.event.room_id == room_id),
                key=lambda pair: (-pair.event.depth, pair.event.event_id),
            )
            frontier = []
            for stored in level:
                if len(out) >= limit:
                    break
                if stored.event.depth < min_depth:
                    continue
                out.append(stored)
                frontier.extend(p for p in stored.event.prev_event_ids if p not in seen)
        return out

    async def _serve_filtered(
        self, origin: str, found: Sequence[StoredEvent]
    ) -> list[dict[str, Any]]:
        visible = await self._access.visible_to_server(origin, [ev for ev, _ in found])
        erased = await self._erased_senders(ev for ev, _ in found)
        out = []
        for event, meta in found:
            pdu = pdu_for_federation(event, meta)
            if event.event_id not in visible or event.sender in erased:
                try:
                    pdu = redact(pdu, event.room_version)
                except RedactionError:
                    continue
            out.append(pdu)
        return out

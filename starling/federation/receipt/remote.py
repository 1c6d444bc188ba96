"""Asking the origin for what a PDU's checks need: missing prev events
(`get_missing_events`), the state at an event across a gap (`state_ids`), auth chains
(`event_auth`) and single events (`event`). Server-Server API > Backfilling and retrieving
missing events; Retrieving events; Retrieving event authorisation information.

Everything is bounded (events per answer, rounds, concurrent requests) and a remote that
answers garbage or not at all gives an empty answer here, never an exception: the
pipeline then decides with what it has.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from starling.federation.errors import FederationError, FederationUnreachable
from starling.federation.ports import FederationClientPort

logger = logging.getLogger(__name__)

# get_missing_events: events per request and requests per incoming event.
MISSING_EVENTS_LIMIT = 20
MISSING_EVENTS_ROUNDS = 3
# How far below our own forward extremities we walk back before using state_ids.
MISSING_EVENTS_MAX_DEPTH_SPAN = 100
# /event requests in flight at once, and how many single fetches before /state is cheaper.
FETCH_CONCURRENCY = 10
MAX_SINGLE_FETCHES = 50
# Events taken from one answer (a state can be large; anything beyond is ignored).
MAX_EVENTS_PER_ANSWER = 50_000


def _q(value: str) -> str:
    return quote(value, safe="")


def _pdu_list(answer: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(answer, dict):
        return []
    items = answer.get(key)
    if not isinstance(items, list):
        return []
    return [p for p in items[:MAX_EVENTS_PER_ANSWER] if isinstance(p, dict)]


def _id_list(answer: Any, key: str) -> list[str]:
    if not isinstance(answer, dict):
        return []
    items = answer.get(key)
    if not isinstance(items, list):
        return []
    return [i for i in items[:MAX_EVENTS_PER_ANSWER] if isinstance(i, str)]


class RemoteEvents:
    """The origin-facing fetches of the receipt pipeline."""

    def __init__(self, client: FederationClientPort, *, timeout: float = 30.0) -> None:
        self._client = client
        self._timeout = timeout

    async def _get(self, origin: str, path: str, query: dict[str, Any] | None = None) -> Any:
        try:
            return await self._client.get_json(origin, path, query, timeout=self._timeout)
        except (FederationError, FederationUnreachable) as e:
            logger.info("GET %s from %s failed: %s", path, origin, e)
            return None

    async def get_missing_events(
        self,
        origin: str,
        room_id: str,
        *,
        earliest: Sequence[str],
        latest: Sequence[str],
        min_depth: int,
        limit: int = MISSING_EVENTS_LIMIT,
    ) -> list[dict[str, Any]]:
        """POST /get_missing_events: events between `earliest` and `latest`, any order."""
        body = {
            "earliest_events": list(earliest),
            "latest_events": list(latest),
            "limit": limit,
            "min_depth": min_depth,
        }
        path = f"/_matrix/federation/v1/get_missing_events/{_q(room_id)}"
        try:
            answer = await self._client.post_json(origin, path, body, timeout=self._timeout)
        except (FederationError, FederationUnreachable) as e:
            logger.info("get_missing_events from %s failed: %s", origin, e)
            return []
        return _pdu_list(answer, "events")[:limit]

    async def state_ids(
        self, origin: str, room_id: str, event_id: str
    ) -> tuple[list[str], list[str]] | None:
        """GET /state_ids at `event_id`: (state event IDs, auth chain IDs), or None."""
        answer = await self._get(
            origin, f"/_matrix/federation/v1/state_ids/{_q(room_id)}", {"event_id": event_id}
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("pdu_ids"), list):
            return None
        return _id_list(answer, "pdu_ids"), _id_list(answer, "auth_chain_ids")

    async def state(self, origin: str, room_id: str, event_id: str) -> list[dict[str, Any]]:
        """GET /state at `event_id`: the state and auth chain as full PDUs, together."""
        answer = await self._get(
            origin, f"/_matrix/federation/v1/state/{_q(room_id)}", {"event_id": event_id}
        )
        return _pdu_list(answer, "pdus") + _pdu_list(answer, "auth_chain")

    async def event_auth(self, origin: str, room_id: str, event_id: str) -> list[dict[str, Any]]:
        """GET /event_auth: the full auth chain of `event_id`."""
        answer = await self._get(
            origin, f"/_matrix/federation/v1/event_auth/{_q(room_id)}/{_q(event_id)}"
        )
        return _pdu_list(answer, "auth_chain")

    async def backfill(
        self, destination: str, room_id: str, from_ids: Sequence[str], limit: int
    ) -> list[dict[str, Any]] | None:
        """GET /backfill: up to `limit` events before `from_ids`; None if it failed."""
        answer = await self._get(
            destination,
            f"/_matrix/federation/v1/backfill/{_q(room_id)}",
            {"v": list(from_ids), "limit": str(limit)},
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("pdus"), list):
            return None
        return _pdu_list(answer, "pdus")[:limit]

    async def event(self, origin: str, event_id: str) -> dict[str, Any] | None:
        """GET /event/{eventId}: one PDU (a transaction of one), or None."""
        answer = await self._get(origin, f"/_matrix/federation/v1/event/{_q(event_id)}")
        pdus = _pdu_list(answer, "pdus")
        return pdus[0] if len(pdus) == 1 else None

    async def events(self, origin: str, event_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Several /event fetches, at most FETCH_CONCURRENCY at a time."""
        sem = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def one(eid: str) -> dict[str, Any] | None:
            async with sem:
                return await self.event(origin, eid)

        got = await asyncio.gather(*(one(e) for e in event_ids))
        return [p for p in got if p is not None]

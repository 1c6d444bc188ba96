"""Inbound transactions: `PUT /_matrix/federation/v1/send/{txnId}` (Server-Server API >
Transactions).

A transaction holds at most 50 PDUs and 100 EDUs. It is answered once per origin and
transaction ID: a retry gets the stored answer and nothing is processed twice (the same
transaction arriving twice at once waits for the first). PDUs are grouped by room; rooms
are processed concurrently, each room's PDUs in the order sent. One bad PDU never fails
the others: each gets its own entry in `pdus` ({} or {"error": ...}). EDUs go to the
registry after the PDUs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from starling.errors import MatrixError
from starling.federation.edu import EduRegistry
from starling.federation.metrics import INBOUND_PDUS
from starling.protocol.hashing import EventHashError, compute_event_id
from starling.protocol.room_versions import RoomVersion
from starling.storage.federation_transactions import InboundTransactionStore

logger = logging.getLogger(__name__)

MAX_PDUS = 50
MAX_EDUS = 100
# Stored answers are kept this long (senders retry within minutes), and purged every
# PURGE_EVERY transactions.
KEEP_ANSWERS_MS = 24 * 3600 * 1000
PURGE_EVERY = 500


class PduReceiver(Protocol):
    async def on_send_pdu(self, origin: str, pdu_json: dict[str, Any]) -> str | None: ...


class RoomVersions(Protocol):
    async def get_room_version(self, room_id: str) -> RoomVersion | None: ...


class TransactionReceiver:
    def __init__(
        self,
        handler: PduReceiver,
        rooms: RoomVersions,
        store: InboundTransactionStore,
        edus: EduRegistry,
        clock: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._handler = handler
        self._rooms = rooms
        self._store = store
        self._edus = edus
        self._clock = clock
        self._in_flight: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}
        self._count = 0

    async def on_transaction(self, origin: str, txn_id: str, body: Any) -> dict[str, Any]:
        """The answer to a /send request; MatrixError 400 for a malformed transaction."""
        pdus, edus = _parse(body)
        key = (origin, txn_id)
        running = self._in_flight.get(key)
        if running is not None:
            return await asyncio.shield(running)
        running = asyncio.get_running_loop().create_future()
        self._in_flight[key] = running
        try:
            response = await self._store.get_response(origin, txn_id)
            if response is None:
                response = await self._process(origin, pdus, edus)
                await self._store.store_response(origin, txn_id, response, self._clock())
            running.set_result(response)
            return response
        except BaseException as e:
            running.set_exception(e)
            running.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._in_flight[key]
            await self._maybe_purge()

    async def _process(self, origin: str, pdus: list[Any], edus: list[Any]) -> dict[str, Any]:
        by_room: dict[str, list[dict[str, Any]]] = {}
        for pdu in pdus:
            room_id = pdu.get("room_id") if isinstance(pdu, dict) else None
            if isinstance(room_id, str):
                by_room.setdefault(room_id, []).append(pdu)
        results: dict[str, dict[str, Any]] = {}

        async def room(room_id: str, room_pdus: list[dict[str, Any]]) -> None:
            version = await self._rooms.get_room_version(room_id)
            for pdu in room_pdus:
                event_id = _event_id(pdu, version)
                try:
                    error = await self._handler.on_send_pdu(origin, pdu)
                except Exception:
                    logger.exception("PDU %s from %s failed", event_id, origin)
                    error = "internal error processing this PDU"
                if error is not None:
                    INBOUND_PDUS.labels("dropped").inc()
                if event_id is not None:
                    results[event_id] = {} if error is None else {"error": error}

        await asyncio.gather(*(room(r, p) for r, p in by_room.items()))
        for edu in edus:
            await self._edus.dispatch(origin, edu)
        return {"pdus": results}

    async def _maybe_purge(self) -> None:
        self._count += 1
        if self._count % PURGE_EVERY == 0:
            await self._store.delete_older_than(self._clock() - KEEP_ANSWERS_MS)


def _parse(body: Any) -> tuple[list[Any], list[Any]]:
    if not isinstance(body, dict):
        raise MatrixError(400, "M_BAD_JSON", "Transaction must be a JSON object")
    pdus = body.get("pdus")
    edus = body.get("edus", [])
    if not isinstance(pdus, list):
        raise MatrixError(400, "M_BAD_JSON", "Transaction 'pdus' must be a list")
    if not isinstance(edus, list):
        raise MatrixError(400, "M_BAD_JSON", "Transaction 'edus' must be a list")
    if len(pdus) > MAX_PDUS or len(edus) > MAX_EDUS:
        raise MatrixError(
            400, "M_BAD_JSON", f"A transaction holds at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs"
        )
    return pdus, edus


def _event_id(pdu: dict[str, Any], version: RoomVersion | None) -> str | None:
    """The event ID to report a PDU's result under; None when it has none we can
    compute (a room we do not know, a malformed event)."""
    if version is None:
        given = pdu.get("event_id")
        return given if isinstance(given, str) else None
    try:
        return compute_event_id(pdu, version)
    except (EventHashError, ValueError):
        return None

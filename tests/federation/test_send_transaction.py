"""PUT /send/{txnId} semantics (TransactionReceiver): limits, deduplication per origin
and transaction ID (persisted, both engines), per-PDU results, one bad PDU never failing
the others, rooms concurrent and each room in order, EDU dispatch."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from starling.errors import MatrixError
from starling.federation.edu import EduRegistry
from starling.federation.transactions import MAX_EDUS, MAX_PDUS, TransactionReceiver
from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS
from starling.storage import Database
from starling.storage.federation_transactions import InboundTransactionStore
from tests.federation.conftest import REMOTE, Scenario, make_scenario
from tests.federation.dag import FakeServer


async def _setup(
    database: Database, rv: str = "10"
) -> tuple[Scenario, TransactionReceiver, list[Any]]:
    s = await make_scenario(KNOWN_ROOM_VERSIONS[rv])
    seen: list[Any] = []
    edus = EduRegistry()

    async def typing(origin: str, content: dict[str, Any]) -> None:
        seen.append((origin, content))

    edus.register("m.typing", typing)
    receiver = TransactionReceiver(s.handler, s.rooms, InboundTransactionStore(database), edus)
    return s, receiver, seen


async def test_per_pdu_results_and_one_bad_pdu(database: Database) -> None:
    s, receiver, _ = await _setup(database)
    good = s.dag.message(s.alice, "ok")
    impostor = FakeServer(REMOTE)
    forged = s.dag.message(s.alice, "forged", signer=impostor, track=False)
    unauthorised = s.dag.message(s.remote.user("mallory"), "who?", track=False)
    answer = await receiver.on_transaction(
        REMOTE, "t1", {"pdus": [dict(good.pdu), dict(forged.pdu), dict(unauthorised.pdu)]}
    )
    results = answer["pdus"]
    assert results[good.event_id] == {}
    assert "signature" in results[forged.event_id]["error"]
    assert results[unauthorised.event_id] == {}  # rejected, which is not an error
    assert s.rooms.meta(unauthorised.event_id).rejected_reason
    assert s.rooms.timeline[-1] == good.event_id


async def test_deduplicated_per_origin_and_txn_id(database: Database) -> None:
    s, receiver, _ = await _setup(database)
    msg = s.dag.message(s.alice)
    body = {"pdus": [dict(msg.pdu)]}
    first = await receiver.on_transaction(REMOTE, "same", body)
    calls: list[str] = []
    original = s.handler.on_send_pdu

    async def counting(origin: str, pdu: dict[str, Any]) -> str | None:
        calls.append(origin)
        return await original(origin, pdu)

    s.handler.on_send_pdu = counting  # type: ignore[method-assign]
    # A fresh receiver over the same database: the answer is persisted.
    again = TransactionReceiver(
        s.handler, s.rooms, InboundTransactionStore(database), EduRegistry()
    )
    assert await again.on_transaction(REMOTE, "same", body) == first
    assert calls == []
    # The same ID from another origin is another transaction.
    other = await again.on_transaction("other.example", "same", body)
    assert calls == ["other.example"]
    assert "error" in other["pdus"][msg.event_id]


async def test_concurrent_duplicates_process_once(database: Database) -> None:
    s, receiver, _ = await _setup(database)
    msg = s.dag.message(s.alice)
    body = {"pdus": [dict(msg.pdu)]}
    a, b = await asyncio.gather(
        receiver.on_transaction(REMOTE, "t", body), receiver.on_transaction(REMOTE, "t", body)
    )
    assert a == b == {"pdus": {msg.event_id: {}}}
    assert s.rooms.timeline.count(msg.event_id) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"pdus": [{}] * (MAX_PDUS + 1)},
        {"pdus": [], "edus": [{}] * (MAX_EDUS + 1)},
        {"edus": []},
        {"pdus": {}},
        [],
    ],
)
async def test_malformed_or_too_large(database: Database, body: Any) -> None:
    _, receiver, _ = await _setup(database)
    with pytest.raises(MatrixError) as e:
        await receiver.on_transaction(REMOTE, "big", body)
    assert e.value.status == 400


async def test_rooms_in_order_and_concurrently(database: Database) -> None:
    s, receiver, _ = await _setup(database)
    msgs = [s.dag.message(s.alice, str(i)) for i in range(5)]
    answer = await receiver.on_transaction(REMOTE, "order", {"pdus": [dict(m.pdu) for m in msgs]})
    assert all(answer["pdus"][m.event_id] == {} for m in msgs)
    assert s.rooms.timeline[-5:] == [m.event_id for m in msgs]
    assert s.client.count("get_missing_events") == 0  # each arrived after its parent


async def test_edus_dispatched_only_for_the_origins_users(database: Database) -> None:
    _, receiver, seen = await _setup(database)
    edus = [
        {"edu_type": "m.typing", "content": {"room_id": "!r:x", "user_id": "@a:remote.example"}},
        {"edu_type": "m.typing", "content": {"room_id": "!r:x", "user_id": "@a:elsewhere"}},
        {"edu_type": "m.unknown", "content": {}},
        {"edu_type": "m.typing", "content": "nope"},
        "garbage",
    ]
    answer = await receiver.on_transaction(REMOTE, "edus", {"pdus": [], "edus": edus})
    assert answer == {"pdus": {}}
    assert seen == [(REMOTE, edus[0]["content"])]


async def test_room_edus_obey_the_server_acl(database: Database) -> None:
    s, _, _ = await _setup(database)
    denied_room = "!denied:elsewhere"

    async def allowed(room_id: str, server: str) -> bool:
        return room_id != denied_room

    seen: list[tuple[str, Any]] = []

    async def record(origin: str, content: dict[str, Any]) -> None:
        seen.append((origin, content))

    edus = EduRegistry(allowed)
    edus.register("m.typing", record)
    edus.register("m.receipt", record)
    receiver = TransactionReceiver(s.handler, s.rooms, InboundTransactionStore(database), edus)
    me = "@a:remote.example"
    receipt = {"m.read": {me: {"event_ids": ["$e"], "data": {"ts": 1}}}}
    body = {
        "pdus": [],
        "edus": [
            {"edu_type": "m.typing", "content": {"room_id": denied_room, "user_id": me}},
            {"edu_type": "m.typing", "content": {"room_id": "!ok:x", "user_id": me}},
            {"edu_type": "m.receipt", "content": {denied_room: receipt, "!ok:x": receipt}},
            {"edu_type": "m.receipt", "content": {denied_room: receipt}},
        ],
    }
    await receiver.on_transaction(REMOTE, "acl", body)
    assert seen == [
        (REMOTE, {"room_id": "!ok:x", "user_id": me}),
        (REMOTE, {"!ok:x": receipt}),
    ]

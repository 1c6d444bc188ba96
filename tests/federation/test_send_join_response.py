"""process_send_join_response: the state and auth chain of a send_join answer are checked
(steps 1-4), stored as outliers, and our join is persisted with that state before it."""

from __future__ import annotations

import pytest

from starling.federation.event_handler import FederationEventHandler, SendJoinResponseError
from starling.federation.receipt.remote import RemoteEvents
from starling.federation.room_access import RoomAccess
from starling.protocol.room_versions import RoomVersion
from tests.federation.conftest import LOCAL, REMOTE
from tests.federation.dag import Dag, FakeServer
from tests.federation.fakes import FakeKeyring, FakeRemote
from tests.federation.memory_room import MemoryRooms


def _setup(room_version: RoomVersion, join_rule: str = "public"):  # type: ignore[no-untyped-def]
    remote, local = FakeServer(REMOTE), FakeServer(LOCAL)
    dag = Dag(room_version, [remote, local])
    dag.standard_room(remote.user("alice"), join_rule=join_rule)
    dag.message(remote.user("alice"), "before we joined")
    rooms = MemoryRooms()
    handler = FederationEventHandler(
        events=rooms,
        state=rooms,
        memberships=rooms,
        calculator=rooms,
        persister=rooms,
        locks=rooms,
        keyring=FakeKeyring([remote, local]),
        remote=RemoteEvents(FakeRemote(dag)),
        server_allowed=RoomAccess(rooms, rooms, rooms).server_allowed,
    )
    return dag, rooms, handler, remote, local


async def test_join_through_a_send_join_answer(room_version: RoomVersion) -> None:
    dag, rooms, handler, _remote, local = _setup(room_version)
    bob = local.user("bob")
    join = dag.join(bob)
    state = dag.state_before(join)
    chain = dag.auth_chain(state.values())
    position = await handler.process_send_join_response(
        REMOTE,
        dag.room_id,
        room_version,
        join,
        [dict(e.pdu) for e in dag.state_events(state)],
        [dict(e.pdu) for e in chain],
    )
    assert position is not None and position > 0
    assert rooms.rooms[dag.room_id] is room_version
    assert rooms.current[dag.room_id][("m.room.member", bob)] == join.event_id
    assert all(rooms.meta(eid).outlier for eid in state.values())
    assert rooms.extremities[dag.room_id] == [join.event_id]
    assert bob in await rooms.get_joined_users(dag.room_id)


async def test_forged_state_is_not_used(room_version: RoomVersion) -> None:
    dag, rooms, handler, remote, local = _setup(room_version)
    topic = dag.add(remote.user("alice"), "m.room.topic", {"topic": "real"}, state_key="")
    bob = local.user("bob")
    join = dag.join(bob)
    state = dag.state_before(join)
    pdus = [dict(e.pdu) for e in dag.state_events(state)]
    for pdu in pdus:
        if pdu["type"] == "m.room.topic":
            pdu["content"] = {"topic": "forged"}  # hash fails: the event is redacted
    await handler.process_send_join_response(
        REMOTE,
        dag.room_id,
        room_version,
        join,
        pdus,
        [dict(e.pdu) for e in dag.auth_chain(state.values())],
    )
    stored = rooms.events[topic.event_id].event
    assert "topic" not in stored.content


async def test_answer_without_create_or_not_allowing_us(room_version: RoomVersion) -> None:
    dag, _rooms, handler, _remote, local = _setup(room_version, join_rule="invite")
    bob = local.user("bob")
    join = dag.join(bob, track=False)
    state = dag.current_state()
    pdus = [dict(e.pdu) for e in dag.state_events(state)]
    chain = [dict(e.pdu) for e in dag.auth_chain(state.values())]
    with pytest.raises(SendJoinResponseError, match="not allowed") as e:
        await handler.process_send_join_response(
            REMOTE, dag.room_id, room_version, join, pdus, chain
        )
    # A Matrix error for our client (the resident's fault), never a 500.
    assert e.value.status == 502 and e.value.errcode == "M_UNKNOWN"
    no_create = [p for p in pdus if p["type"] != "m.room.create"]
    chain_no_create = [p for p in chain if p["type"] != "m.room.create"]
    with pytest.raises(SendJoinResponseError, match="create"):
        await handler.process_send_join_response(
            REMOTE, dag.room_id, room_version, join, no_create, chain_no_create
        )

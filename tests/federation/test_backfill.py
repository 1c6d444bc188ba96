"""Backfill: history before our backward extremities is fetched from a server in the room
and stored as backfilled events (checked like any PDU; never extremities)."""

from __future__ import annotations

from starling.federation.backfill import Backfiller
from starling.federation.receipt.remote import RemoteEvents
from starling.protocol.room_versions import RoomVersion
from tests.federation.conftest import LOCAL, REMOTE
from tests.federation.test_send_join_response import _setup


async def test_history_is_backfilled_after_a_remote_join(room_version: RoomVersion) -> None:
    dag, rooms, handler, remote, local = _setup(room_version)
    history = [dag.message(remote.user("alice"), f"old {i}") for i in range(5)]
    join = dag.join(local.user("bob"))
    state = dag.state_before(join)
    await handler.process_send_join_response(
        REMOTE,
        dag.room_id,
        room_version,
        join,
        [dict(e.pdu) for e in dag.state_events(state)],
        [dict(e.pdu) for e in dag.auth_chain(state.values())],
    )
    assert await rooms.get_backward_extremities(dag.room_id) == [history[-1].event_id]
    client = handler._remote._client  # the FakeRemote behind the pipeline
    backfiller = Backfiller(LOCAL, rooms, rooms, RemoteEvents(client), handler)
    assert await backfiller.backfill(dag.room_id, limit=3)
    for ev in history[-3:]:
        meta = rooms.meta(ev.event_id)
        assert meta.backfilled and meta.position is not None and meta.position < 0
        assert meta.rejected_reason is None
    assert rooms.extremities[dag.room_id] == [join.event_id]
    assert await rooms.get_backward_extremities(dag.room_id) == [history[-4].event_id]
    # Again: the rest of the history, down to the events we hold as outliers.
    assert await backfiller.backfill(dag.room_id)
    assert all(rooms.meta(ev.event_id).backfilled for ev in history)


async def test_nothing_to_backfill_or_nobody_answers(room_version: RoomVersion) -> None:
    dag, rooms, handler, _remote, local = _setup(room_version)
    client = handler._remote._client
    backfiller = Backfiller(LOCAL, rooms, rooms, RemoteEvents(client), handler)
    assert not await backfiller.backfill("!unknown:x")
    join = dag.join(local.user("bob"))
    state = dag.state_before(join)
    await handler.process_send_join_response(
        REMOTE,
        dag.room_id,
        room_version,
        join,
        [dict(e.pdu) for e in dag.state_events(state)],
        [dict(e.pdu) for e in dag.auth_chain(state.values())],
    )
    client.hidden.update(dag.events)  # the remote answers nothing
    assert not await backfiller.backfill(dag.room_id)


async def test_a_room_nobody_could_backfill_is_not_asked_again_at_once(
    room_version: RoomVersion,
) -> None:
    dag, rooms, handler, _remote, local = _setup(room_version)
    client = handler._remote._client
    now = [1000.0]
    backfiller = Backfiller(LOCAL, rooms, rooms, RemoteEvents(client), handler, lambda: now[0])
    history = [dag.message(dag.create_event.sender, str(i)) for i in range(2)]
    join = dag.join(local.user("bob"))
    state = dag.state_before(join)
    await handler.process_send_join_response(
        REMOTE,
        dag.room_id,
        room_version,
        join,
        [dict(e.pdu) for e in dag.state_events(state)],
        [dict(e.pdu) for e in dag.auth_chain(state.values())],
    )
    client.hidden.update(e.event_id for e in history)
    assert not await backfiller.backfill(dag.room_id)
    client.hidden.clear()
    asked = client.count("backfill")
    assert not await backfiller.backfill(dag.room_id)  # within the pause: not asked
    assert client.count("backfill") == asked
    now[0] += 31
    assert await backfiller.backfill(dag.room_id)


async def test_backfill_keeps_only_the_history_asked_for(room_version: RoomVersion) -> None:
    dag, rooms, handler, _remote, local = _setup(room_version)
    client = handler._remote._client
    base = dag.extremities[0]
    old = dag.message(dag.create_event.sender, "old")
    join = dag.join(local.user("bob"))
    stray = dag.message(dag.create_event.sender, "stray", prev=[base], track=False)
    client.extra.append(stray)
    state = dag.state_before(join)
    await handler.process_send_join_response(
        REMOTE,
        dag.room_id,
        room_version,
        join,
        [dict(e.pdu) for e in dag.state_events(state)],
        [dict(e.pdu) for e in dag.auth_chain(state.values())],
    )
    backfiller = Backfiller(LOCAL, rooms, rooms, RemoteEvents(client), handler)
    assert await backfiller.backfill(dag.room_id)
    assert rooms.meta(old.event_id).backfilled
    assert stray.event_id not in rooms.events

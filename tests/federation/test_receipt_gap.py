"""A gap that get_missing_events cannot close is bridged with the state at the event:
state_ids, then event_auth and /event for what we lack, checked and stored as outliers."""

from __future__ import annotations

from tests.federation.conftest import Scenario


async def test_gap_filled_via_state_ids(scenario: Scenario) -> None:
    s = scenario
    dave = s.remote.user("dave")
    join = s.dag.join(dave)
    topic = s.dag.add(s.alice, "m.room.topic", {"topic": "in the gap"}, state_key="")
    s.client.withheld |= {join.event_id, topic.event_id}
    msg = s.dag.message(dave, "hello")
    assert await s.send(msg) is None
    assert s.client.count("state_ids") == 1
    assert s.rooms.meta(msg.event_id).rejected_reason is None
    assert s.rooms.meta(join.event_id).outlier
    assert s.rooms.meta(topic.event_id).outlier
    assert s.rooms.timeline[-1] == msg.event_id
    state = s.rooms.current[s.dag.room_id]
    assert state[("m.room.member", dave)] == join.event_id
    assert state[("m.room.topic", "")] == topic.event_id


async def test_forged_state_from_the_remote_is_not_used(scenario: Scenario) -> None:
    s = scenario
    from tests.federation.dag import FakeServer

    dave = s.remote.user("dave")
    impostor = FakeServer("remote.example")
    join = s.dag.join(dave, signer=impostor)  # the remote's state holds a forged join
    s.client.withheld.add(join.event_id)
    msg = s.dag.message(dave, "hello")
    assert await s.send(msg) is None
    assert join.event_id not in s.rooms.events
    meta = s.rooms.meta(msg.event_id)
    assert meta.rejected_reason is not None  # dave's join is unusable
    assert msg.event_id not in s.rooms.timeline


async def test_unreachable_gap_leaves_the_event_out(scenario: Scenario) -> None:
    s = scenario
    hidden = s.dag.message(s.alice, "hidden")
    s.client.hidden.add(hidden.event_id)
    s.client.hidden.add(hidden.event_id)
    msg = s.dag.message(s.alice, "after")
    s.client.hidden.add(msg.event_id)  # the remote cannot answer state_ids at it either
    outcome = await s.send(msg)
    assert outcome is not None and "state before" in outcome
    assert msg.event_id not in s.rooms.events

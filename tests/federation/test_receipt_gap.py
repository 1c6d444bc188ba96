"""A gap that get_missing_events cannot close is bridged with the state at the event:
state_ids, then event_auth and /event for what we lack, checked and stored as outliers."""

from __future__ import annotations

from tests.federation.conftest import Scenario


async def test_gap_filled_via_state_ids(scenario: Scenario) -> None:
    """A pulled event (the topic, through get_missing_events) whose prev event (dave's
    join) stays missing: the state after the join is the remote's state before it
    (state_ids) plus the join itself, fetched and held as an outlier."""
    s = scenario
    dave = s.remote.user("dave")
    join = s.dag.join(dave)
    topic = s.dag.add(s.alice, "m.room.topic", {"topic": "in the gap"}, state_key="")
    s.client.withheld.add(join.event_id)
    msg = s.dag.message(dave, "hello")
    assert await s.send(msg) is None
    assert s.client.state_asked_at == [join.event_id]
    assert s.rooms.meta(msg.event_id).rejected_reason is None
    assert s.rooms.meta(join.event_id).outlier
    assert not s.rooms.meta(topic.event_id).outlier
    assert s.rooms.timeline[-2:] == [topic.event_id, msg.event_id]
    state = s.rooms.current[s.dag.room_id]
    assert state[("m.room.member", dave)] == join.event_id
    assert state[("m.room.topic", "")] == topic.event_id


async def test_pushed_event_whose_prev_events_stay_missing_is_refused(scenario: Scenario) -> None:
    """get_missing_events gives nothing: the pushed event is not taken in, and the state
    at its missing prev event is not even asked for (its sender must show what it
    follows)."""
    s = scenario
    dave = s.remote.user("dave")
    join = s.dag.join(dave)
    s.client.withheld.add(join.event_id)
    msg = s.dag.message(dave, "hello")
    outcome = await s.send(msg)
    assert outcome is not None and "prev events" in outcome
    assert s.client.state_asked_at == []
    assert msg.event_id not in s.rooms.events


async def test_forged_state_from_the_remote_is_not_used(scenario: Scenario) -> None:
    s = scenario
    from tests.federation.dag import FakeServer

    dave = s.remote.user("dave")
    impostor = FakeServer("remote.example")
    join = s.dag.join(dave, signer=impostor)  # the remote's state holds a forged join
    s.client.withheld.add(join.event_id)
    msg = s.dag.message(dave, "hello")  # pulled: its prev event is the forged join
    after = s.dag.message(s.alice, "after")
    assert await s.send(after) is None
    assert join.event_id not in s.rooms.events
    meta = s.rooms.meta(msg.event_id)
    assert meta.rejected_reason is not None  # dave's join is unusable
    assert msg.event_id not in s.rooms.timeline


async def test_unreachable_gap_leaves_the_event_out(scenario: Scenario) -> None:
    s = scenario
    hidden = s.dag.message(s.alice, "hidden")
    s.client.hidden.add(hidden.event_id)
    pulled = s.dag.message(s.alice, "pulled")
    msg = s.dag.message(s.alice, "after")
    assert await s.send(msg) is not None
    # The pulled event's gap cannot be bridged (the remote cannot answer state_ids at
    # the hidden event): neither it nor the pushed event is taken in.
    assert s.client.state_asked_at == [hidden.event_id]
    assert pulled.event_id not in s.rooms.events
    assert msg.event_id not in s.rooms.events


async def test_gap_state_is_asked_at_each_missing_prev_event(scenario: Scenario) -> None:
    """X has prev events B (ours) and Y (missing, a state event on its own branch): the
    state before X resolves the state after B with the remote's state before Y plus Y."""
    s = scenario
    base = list(s.dag.extremities)
    b = s.dag.add(s.alice, "org.test.state", {"v": "b"}, state_key="B")
    assert await s.send(b) is None
    y = s.dag.add(s.alice, "org.test.state", {"v": "y"}, state_key="Y", prev=base)
    x = s.dag.message(s.alice, "x", prev=[b.event_id, y.event_id])
    s.client.withheld.add(y.event_id)
    c = s.dag.message(s.alice, "c", prev=[x.event_id])
    assert await s.send(c) is None
    assert s.client.state_asked_at == [y.event_id]
    assert s.rooms.meta(y.event_id).outlier
    assert s.rooms.timeline[-2:] == [x.event_id, c.event_id]
    state = s.rooms.current[s.dag.room_id]
    assert state[("org.test.state", "B")] == b.event_id
    assert state[("org.test.state", "Y")] == y.event_id


async def test_gap_prev_event_its_auth_refuses_is_not_state(scenario: Scenario) -> None:
    """A missing prev state event by someone not in the room is rejected on its own auth
    events: the state after it is the state before it, without it."""
    s = scenario
    mallory = s.remote.user("mallory")  # never joined
    base = list(s.dag.extremities)
    y = s.dag.add(mallory, "org.test.state", {"v": "y"}, state_key="Y", prev=base)
    x = s.dag.message(s.alice, "x", prev=[*base, y.event_id])
    s.client.withheld.add(y.event_id)
    c = s.dag.message(s.alice, "c", prev=[x.event_id])
    assert await s.send(c) is None
    assert s.rooms.meta(y.event_id).rejected_reason is not None
    assert s.rooms.meta(c.event_id).rejected_reason is None
    assert ("org.test.state", "Y") not in s.rooms.current[s.dag.room_id]

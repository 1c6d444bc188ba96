"""Step 5: an event its own auth events allow is still rejected when the state before it
(the resolution of its prev events' states) does not allow it."""

from __future__ import annotations

from tests.federation.conftest import Scenario


async def test_auth_events_allow_but_state_before_does_not(scenario: Scenario) -> None:
    s = scenario
    carol = s.remote.user("carol")
    join = s.dag.join(carol)
    assert await s.send(join) is None
    ban = s.dag.add(s.alice, "m.room.member", {"membership": "ban"}, state_key=carol)
    assert await s.send(ban) is None
    # Carol cites her old join as auth event but the ban as prev event.
    keys = [("m.room.power_levels", "")]
    if s.dag.room_version.create_event_in_auth_events:
        keys.insert(0, ("m.room.create", ""))
    auth = [s.dag.state_after[join.event_id][k] for k in keys] + [join.event_id]
    event = s.dag.message(carol, auth=auth, track=False)
    assert await s.send(event) is None
    meta = s.rooms.meta(event.event_id)
    assert meta.rejected_reason is not None and "state before" in meta.rejected_reason
    assert event.event_id not in s.rooms.timeline
    assert s.rooms.extremities[s.dag.room_id] == [ban.event_id]


async def test_state_change_from_the_state_before(scenario: Scenario) -> None:
    s = scenario
    topic = s.dag.add(s.alice, "m.room.topic", {"topic": "hello"}, state_key="")
    assert await s.send(topic) is None
    assert s.rooms.current[s.dag.room_id][("m.room.topic", "")] == topic.event_id
    assert s.rooms.meta(topic.event_id).rejected_reason is None

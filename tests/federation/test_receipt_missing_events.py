"""Missing prev events are pulled with get_missing_events (bounded) and processed oldest
first, before the event that cited them."""

from __future__ import annotations

from starling.federation.receipt.remote import MISSING_EVENTS_LIMIT, MISSING_EVENTS_ROUNDS
from tests.federation.conftest import Scenario


async def test_missing_prev_events_are_fetched_in_order(scenario: Scenario) -> None:
    s = scenario
    m1 = s.dag.message(s.alice, "1")
    topic = s.dag.add(s.alice, "m.room.topic", {"topic": "t"}, state_key="")
    m3 = s.dag.message(s.alice, "3")
    assert await s.send(m3) is None  # only the newest arrives
    assert s.client.count("get_missing_events") == 1
    assert s.rooms.timeline[-3:] == [m1.event_id, topic.event_id, m3.event_id]
    assert s.rooms.current[s.dag.room_id][("m.room.topic", "")] == topic.event_id
    assert s.rooms.extremities[s.dag.room_id] == [m3.event_id]
    assert s.client.count("state_ids") == 0  # no gap left


async def test_fetching_is_bounded(scenario: Scenario) -> None:
    s = scenario
    ours = list(s.rooms.extremities[s.dag.room_id])
    count = MISSING_EVENTS_LIMIT * MISSING_EVENTS_ROUNDS + 5
    for i in range(count):
        s.dag.message(s.alice, str(i))
    last = s.dag.message(s.alice, "last")
    assert await s.send(last) is None
    assert s.client.count("get_missing_events") == MISSING_EVENTS_ROUNDS
    # What get_missing_events could not bring is bridged with the state at the oldest.
    assert s.client.count("state_ids") == 1
    assert s.rooms.meta(last.event_id).rejected_reason is None
    # The events older than the gap stay unknown: our old extremity is still one.
    assert set(s.rooms.extremities[s.dag.room_id]) == {*ours, last.event_id}
    assert len(s.rooms.timeline) == 5 + MISSING_EVENTS_LIMIT * MISSING_EVENTS_ROUNDS + 1


async def test_forged_missing_event_is_dropped_and_the_gap_bridged_below_it(
    scenario: Scenario,
) -> None:
    s = scenario
    from tests.federation.dag import FakeServer

    impostor = FakeServer("remote.example")
    forged = s.dag.message(s.alice, "forged", signer=impostor)
    pulled = s.dag.message(s.alice, "pulled")
    after = s.dag.message(s.alice, "after")
    assert await s.send(after) is None
    assert forged.event_id not in s.rooms.events
    # The pulled event's gap (the dropped forgery) is bridged at the forgery's ID: the
    # remote's state before it, without it (it is not stored).
    assert s.client.state_asked_at == [forged.event_id]
    assert s.rooms.meta(pulled.event_id).rejected_reason is None
    assert s.rooms.meta(after.event_id).rejected_reason is None


async def test_events_that_are_not_ancestors_are_ignored(scenario: Scenario) -> None:
    s = scenario
    base = s.dag.extremities[0]
    m1 = s.dag.message(s.alice, "1")
    # A valid event on a branch of the remote's own making, slipped into the answer.
    stray = s.dag.message(s.alice, "stray", prev=[base], track=False)
    s.client.extra.append(stray)
    m2 = s.dag.message(s.alice, "2")
    assert await s.send(m2) is None
    assert m1.event_id in s.rooms.events
    assert stray.event_id not in s.rooms.events

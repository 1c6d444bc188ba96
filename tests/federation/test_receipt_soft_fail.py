"""Step 6: an event allowed by the state before it but not by the room's current state is
soft-failed: stored, but neither shown to clients nor used as a forward extremity
(Server-Server API > Soft failure, the ban-evasion example)."""

from __future__ import annotations

from tests.federation.conftest import Scenario


async def test_ban_evasion_is_soft_failed(scenario: Scenario) -> None:
    s = scenario
    carol = s.remote.user("carol")
    join = s.dag.join(carol)
    assert await s.send(join) is None
    ban = s.dag.add(s.alice, "m.room.member", {"membership": "ban"}, state_key=carol)
    assert await s.send(ban) is None
    # C: carol's message attached before the ban (A in the spec's example).
    evading = s.dag.message(carol, prev=[join.event_id], track=False)
    assert await s.send(evading) is None
    meta = s.rooms.meta(evading.event_id)
    assert meta.rejected_reason is None and meta.soft_failed
    assert evading.event_id not in s.rooms.timeline
    assert s.rooms.extremities[s.dag.room_id] == [ban.event_id]


async def test_event_on_an_old_branch_allowed_by_current_state_passes(scenario: Scenario) -> None:
    s = scenario
    first = s.dag.message(s.alice, "one")
    second = s.dag.message(s.alice, "two")
    assert await s.send(first) is None and await s.send(second) is None
    side = s.dag.message(s.alice, "fork", prev=[first.event_id], track=False)
    assert await s.send(side) is None
    meta = s.rooms.meta(side.event_id)
    assert not meta.soft_failed and meta.rejected_reason is None
    assert set(s.rooms.extremities[s.dag.room_id]) == {second.event_id, side.event_id}


async def test_backfilled_events_are_not_soft_failed(scenario: Scenario) -> None:
    s = scenario
    carol = s.remote.user("carol")
    join = s.dag.join(carol)
    assert await s.send(join) is None
    ban = s.dag.add(s.alice, "m.room.member", {"membership": "ban"}, state_key=carol)
    assert await s.send(ban) is None
    old = s.dag.message(carol, prev=[join.event_id], track=False)
    await s.handler.process_pulled_events(
        "remote.example", s.dag.room_id, [dict(old.pdu)], backfilled=True
    )
    meta = s.rooms.meta(old.event_id)
    assert meta.backfilled and not meta.soft_failed and meta.rejected_reason is None

"""Pushed PDUs: the origin must take part in the room; it may relay other servers' events
(a resident fans out the joins it accepted through send_join), whose own signatures say who
made them; the room's server ACL applies to the origin and to the sender's server."""

from __future__ import annotations

from tests.federation.conftest import REMOTE, Scenario
from tests.federation.dag import FakeServer


def _third(s: Scenario) -> FakeServer:
    third = FakeServer("third.example")
    s.keyring.servers[third.name] = third
    s.dag.servers[third.name] = third
    return third


async def test_resident_relays_another_servers_join(scenario: Scenario) -> None:
    s = scenario
    carol = _third(s).user("carol")
    join = s.dag.join(carol)  # signed by third.example, pushed by the resident
    assert await s.handler.on_send_pdu(REMOTE, dict(join.pdu)) is None
    assert s.rooms.meta(join.event_id).rejected_reason is None
    assert s.rooms.timeline[-1] == join.event_id
    msg = s.dag.message(carol, "relayed too")
    assert await s.handler.on_send_pdu(REMOTE, dict(msg.pdu)) is None
    assert s.rooms.timeline[-1] == msg.event_id


async def test_relayed_event_needs_its_senders_signature(scenario: Scenario) -> None:
    s = scenario
    carol = _third(s).user("carol")
    # The relaying server signs an event in another server's user's name: dropped.
    forged = s.dag.join(carol, signer=s.remote, track=False)
    outcome = await s.handler.on_send_pdu(REMOTE, dict(forged.pdu))
    assert outcome is not None and "signature" in outcome
    assert forged.event_id not in s.rooms.events
    # Our own user's event, made up by the remote: it holds no signature of ours.
    fake_bob = s.dag.message(s.bob, signer=s.remote, track=False)
    outcome = await s.handler.on_send_pdu(REMOTE, dict(fake_bob.pdu))
    assert outcome is not None and "signature" in outcome
    assert fake_bob.event_id not in s.rooms.events


async def test_relayed_event_of_a_denied_server_is_refused(scenario: Scenario) -> None:
    s = scenario
    third = _third(s)
    acl = s.dag.add(
        s.alice, "m.room.server_acl", {"allow": ["*"], "deny": [third.name]}, state_key=""
    )
    assert await s.send(acl) is None
    join = s.dag.join(third.user("carol"), track=False)
    outcome = await s.handler.on_send_pdu(REMOTE, dict(join.pdu))
    assert outcome is not None and "ACL" in outcome
    assert join.event_id not in s.rooms.events


async def test_origin_not_in_the_room_is_refused(scenario: Scenario) -> None:
    s = scenario
    stranger = FakeServer("stranger.example")
    s.keyring.servers[stranger.name] = stranger
    s.dag.servers[stranger.name] = stranger
    msg = s.dag.message(stranger.user("eve"), track=False)
    outcome = await s.handler.on_send_pdu(stranger.name, dict(msg.pdu))
    assert outcome is not None and "not in room" in outcome
    # Its own user's join is let through to the checks (a public room: accepted).
    join = s.dag.join(stranger.user("eve"))
    assert await s.handler.on_send_pdu(stranger.name, dict(join.pdu)) is None
    assert s.rooms.meta(join.event_id).rejected_reason is None
    msg2 = s.dag.message(stranger.user("eve"))
    assert await s.handler.on_send_pdu(stranger.name, dict(msg2.pdu)) is None


async def test_rejected_fetched_auth_event_is_remembered(scenario: Scenario) -> None:
    s = scenario
    carol = s.remote.user("carol")
    # The remote's DAG holds a power levels change by a non-member (rejected anywhere)
    # and cites it as auth event: we learn it only through event_auth.
    bad_pl = s.dag.add(carol, "m.room.power_levels", s.dag.power_levels(carol), state_key="")
    keys = [("m.room.member", s.alice)]
    if s.dag.room_version.create_event_in_auth_events:
        keys.insert(0, ("m.room.create", ""))
    auth = [s.dag.current_state()[k] for k in keys if k in s.dag.current_state()]
    auth = [a for a in auth if a != bad_pl.event_id] + [bad_pl.event_id]
    s.client.withheld.add(bad_pl.event_id)
    s.client.hidden.add(bad_pl.event_id)  # not even /event: only the auth chain has it
    event = s.dag.message(s.alice, auth=auth, prev=[bad_pl.event_id])
    s.client.hidden.discard(bad_pl.event_id)
    after = s.dag.message(s.alice, "after", prev=[event.event_id])
    assert await s.send(after) is None  # `event` comes through get_missing_events
    assert s.rooms.meta(bad_pl.event_id).rejected_reason is not None
    assert s.rooms.meta(event.event_id).rejected_reason is not None
    assert event.event_id not in s.rooms.timeline


async def test_one_failing_pulled_event_does_not_stop_the_others(scenario: Scenario) -> None:
    s = scenario
    first = s.dag.message(s.alice, "first")
    second = s.dag.message(s.alice, "second")
    original = s.rooms.persist

    async def failing(event, context, **kw):  # type: ignore[no-untyped-def]
        if event.event_id == first.event_id:
            raise RuntimeError("disk full")
        return await original(event, context, **kw)

    s.rooms.persist = failing  # type: ignore[method-assign]
    await s.handler.process_pulled_events(
        REMOTE, s.dag.room_id, [dict(first.pdu), dict(second.pdu)], backfilled=False
    )
    # The second bridges its gap at the first (held as an outlier, fetched again).
    assert first.event_id not in s.rooms.timeline
    assert s.rooms.meta(second.event_id).rejected_reason is None

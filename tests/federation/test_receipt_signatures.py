"""Step 2: an event without valid signatures from every server that must sign it is
dropped: the sender's server, the server in the event ID (rooms 1-2), the server that
authorised a restricted join."""

from __future__ import annotations

import pytest

from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS
from tests.federation.conftest import Scenario, make_scenario
from tests.federation.dag import FakeServer, cosign


async def test_forged_signature_is_dropped(scenario: Scenario) -> None:
    impostor = FakeServer("remote.example")  # same name, another key
    event = scenario.dag.message(scenario.alice, signer=impostor, track=False)
    outcome = await scenario.send(event)
    assert outcome is not None and "signature" in outcome
    assert event.event_id not in scenario.rooms.events


async def test_tampered_signed_field_is_dropped(scenario: Scenario) -> None:
    event = scenario.dag.message(scenario.alice, track=False)
    pdu = dict(event.pdu)
    pdu["origin_server_ts"] = pdu["origin_server_ts"] + 1  # covered by the signature
    if scenario.dag.room_version.event_id_in_pdu:
        outcome = await scenario.handler.on_send_pdu("remote.example", pdu)
        assert outcome is not None and "signature" in outcome
    else:
        # From room version 3 the ID is the hash: a changed event is another event,
        # and its signature does not verify either.
        outcome = await scenario.handler.on_send_pdu("remote.example", pdu)
        assert outcome is not None and "signature" in outcome
    assert len(scenario.rooms.timeline) == 5


async def test_valid_signature_is_accepted(scenario: Scenario) -> None:
    event = scenario.dag.message(scenario.alice)
    assert await scenario.send(event) is None
    assert scenario.rooms.timeline[-1] == event.event_id


async def test_event_id_server_must_sign_in_room_v1() -> None:
    s = await make_scenario(KNOWN_ROOM_VERSIONS["1"])
    other = FakeServer("third.example")
    s.keyring.servers[other.name] = other
    # An event ID minted by third.example must carry third.example's signature too.
    event = s.dag.message(s.alice, track=False, extra={"event_id": "$abc:third.example"})
    outcome = await s.send(event)
    assert outcome is not None and "signature" in outcome
    signed = cosign(event, other)
    assert await s.send(signed) is None


@pytest.mark.parametrize("rv", ["8", "10", "12"])
async def test_restricted_join_needs_the_authorising_servers_signature(rv: str) -> None:
    s = await make_scenario(KNOWN_ROOM_VERSIONS[rv])
    carol = s.remote.user("carol")
    join = s.dag.add(
        carol,
        "m.room.member",
        {"membership": "join", "join_authorised_via_users_server": s.bob},
        state_key=carol,
        track=False,
    )
    outcome = await s.send(join)
    assert outcome is not None and "signature" in outcome
    assert join.event_id not in s.rooms.events


@pytest.mark.parametrize("rv", ["8", "10", "12"])
async def test_restricted_join_with_the_authorisers_signature_is_accepted(rv: str) -> None:
    s = await make_scenario(KNOWN_ROOM_VERSIONS[rv])
    rule = s.dag.add(
        s.alice,
        "m.room.join_rules",
        {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": "!x:y"}]},
        state_key="",
    )
    assert await s.send(rule) is None
    carol = s.remote.user("carol")
    join = s.dag.add(
        carol,
        "m.room.member",
        {"membership": "join", "join_authorised_via_users_server": s.bob},
        state_key=carol,
    )
    signed = cosign(join, s.local)  # bob's server vouches for the join
    assert await s.send(signed) is None
    meta = s.rooms.meta(join.event_id)
    assert meta.rejected_reason is None, meta.rejected_reason
    assert s.rooms.current[s.dag.room_id][("m.room.member", carol)] == join.event_id

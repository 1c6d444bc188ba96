"""What other servers may read of a room: /event, /state(_ids), /event_auth, /backfill,
/get_missing_events, with the origin's ACL, membership and history visibility checked."""

from __future__ import annotations

import pytest

from starling.errors import MatrixError
from starling.federation.reads import FederationReads
from starling.federation.room_access import RoomAccess
from tests.federation.conftest import LOCAL, REMOTE, Scenario


def _reads(s: Scenario) -> FederationReads:
    return FederationReads(LOCAL, s.rooms, RoomAccess(s.rooms, s.rooms, s.rooms), clock=lambda: 5)


async def _grow(s: Scenario, n: int) -> list[str]:
    ids = []
    for i in range(n):
        ev = s.dag.message(s.alice, str(i))
        assert await s.send(ev) is None
        ids.append(ev.event_id)
    return ids


async def test_get_event(scenario: Scenario) -> None:
    s = scenario
    (eid,) = await _grow(s, 1)
    answer = await _reads(s).get_event(REMOTE, eid)
    assert answer["origin"] == LOCAL and len(answer["pdus"]) == 1
    assert answer["pdus"][0]["content"]["body"] == "0"
    with pytest.raises(MatrixError) as e:
        await _reads(s).get_event(REMOTE, "$nope")
    assert e.value.status == 404


async def test_a_server_not_in_the_room_is_refused(scenario: Scenario) -> None:
    s = scenario
    (eid,) = await _grow(s, 1)
    reads = _reads(s)
    for call in (
        reads.get_event("stranger.example", eid),
        reads.state_ids("stranger.example", s.dag.room_id, eid),
        reads.backfill("stranger.example", s.dag.room_id, [eid], 10),
        reads.event_auth("stranger.example", s.dag.room_id, eid),
    ):
        with pytest.raises(MatrixError) as e:
            await call
        assert e.value.status == 403 and e.value.errcode == "M_FORBIDDEN"


async def test_acl_denied_server_is_refused(scenario: Scenario) -> None:
    s = scenario
    acl = s.dag.add(s.alice, "m.room.server_acl", {"allow": ["*"], "deny": [REMOTE]}, state_key="")
    assert await s.send(acl) is None
    with pytest.raises(MatrixError) as e:
        await _reads(s).state_ids(REMOTE, s.dag.room_id, acl.event_id)
    assert e.value.status == 403 and "ACL" in str(e.value)
    # And nothing more is taken from it over /send.
    msg = s.dag.message(s.alice)
    outcome = await s.send(msg)
    assert outcome is not None and "ACL" in outcome


async def test_state_ids_and_state_are_the_state_before(scenario: Scenario) -> None:
    s = scenario
    topic = s.dag.add(s.alice, "m.room.topic", {"topic": "t"}, state_key="")
    assert await s.send(topic) is None
    reads = _reads(s)
    ids = await reads.state_ids(REMOTE, s.dag.room_id, topic.event_id)
    assert set(ids["pdu_ids"]) == set(s.dag.state_before(topic).values())
    assert topic.event_id not in ids["pdu_ids"]
    assert s.dag.create_event.event_id in ids["auth_chain_ids"]
    full = await reads.state(REMOTE, s.dag.room_id, topic.event_id)
    assert len(full["pdus"]) == len(ids["pdu_ids"])
    with pytest.raises(MatrixError):
        await reads.state_ids(REMOTE, "!other:x", topic.event_id)


async def test_event_auth(scenario: Scenario) -> None:
    s = scenario
    (eid,) = await _grow(s, 1)
    chain = (await _reads(s).event_auth(REMOTE, s.dag.room_id, eid))["auth_chain"]
    from starling.protocol.hashing import compute_event_id

    ids = {compute_event_id(p, s.dag.room_version) for p in chain}
    assert ids == {e.event_id for e in s.dag.auth_chain([eid])}


async def test_backfill_walks_back_newest_first(scenario: Scenario) -> None:
    s = scenario
    ids = await _grow(s, 6)
    answer = await _reads(s).backfill(REMOTE, s.dag.room_id, [ids[-1]], 3)
    from starling.protocol.hashing import compute_event_id

    got = [compute_event_id(p, s.dag.room_version) for p in answer["pdus"]]
    assert got == [ids[-1], ids[-2], ids[-3]]


async def test_get_missing_events_between(scenario: Scenario) -> None:
    s = scenario
    ids = await _grow(s, 6)
    reads = _reads(s)
    answer = await reads.get_missing_events(REMOTE, s.dag.room_id, [ids[1]], [ids[5]], 10, 0)
    from starling.protocol.hashing import compute_event_id

    got = [compute_event_id(p, s.dag.room_version) for p in answer["events"]]
    assert got == ids[2:5]  # oldest first, both ends excluded
    capped = await reads.get_missing_events(REMOTE, s.dag.room_id, [], [ids[5]], 2, 0)
    assert len(capped["events"]) == 2
    deep = await reads.get_missing_events(
        REMOTE, s.dag.room_id, [], [ids[5]], 10, s.dag.events[ids[4]].depth
    )
    assert len(deep["events"]) == 1


async def test_history_visibility_joined_hides_earlier_events(scenario: Scenario) -> None:
    s = scenario
    hv = s.dag.add(
        s.alice, "m.room.history_visibility", {"history_visibility": "joined"}, state_key=""
    )
    assert await s.send(hv) is None
    (secret,) = await _grow(s, 1)
    third = "third.example"
    carol = f"@carol:{third}"
    s.keyring.servers[third] = type(s.remote)(third)
    s.dag.servers[third] = s.keyring.servers[third]
    join = s.dag.join(carol)
    assert await s.handler.on_send_pdu(third, dict(join.pdu)) is None
    reads = _reads(s)
    with pytest.raises(MatrixError) as e:
        await reads.get_event(third, secret)
    assert e.value.status == 404
    # Backfill serves it redacted so the DAG still links.
    answer = await reads.backfill(third, s.dag.room_id, [join.event_id], 3)
    bodies = [p["content"].get("body") for p in answer["pdus"] if p["type"] == "m.room.message"]
    assert bodies == [None]
    assert (await reads.get_event(REMOTE, secret))["pdus"][0]["content"]["body"] == "0"


async def test_no_state_is_served_at_a_rejected_event(scenario: Scenario) -> None:
    s = scenario
    mallory = s.remote.user("mallory")  # never joined: her topic is rejected
    auth = [s.dag.current_state()[k] for k in s.dag.current_state() if k[0] == "m.room.create"]
    bad = s.dag.add(mallory, "m.room.topic", {"topic": "x"}, state_key="", auth=auth)
    assert await s.send(bad) is None
    assert s.rooms.meta(bad.event_id).rejected_reason is not None
    reads = _reads(s)
    for call in (
        reads.state_ids(REMOTE, s.dag.room_id, bad.event_id),
        reads.state(REMOTE, s.dag.room_id, bad.event_id),
    ):
        with pytest.raises(MatrixError) as e:
            await call
        assert (e.value.status, e.value.errcode) == (404, "M_NOT_FOUND")

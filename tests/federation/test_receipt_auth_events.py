"""Step 4: the auth events must be exactly an allowed selection (no duplicate (type,
state_key), nothing unneeded, none from another room, the create event listed in rooms
1-11 and never in room 12, none rejected), and must authorise the event; otherwise the
event is rejected: stored, but neither in the timeline nor an extremity."""

from __future__ import annotations

from starling.federation.receipt.auth_events import check_auth_events
from starling.federation.receipt.verdict import Accepted, Rejected
from starling.protocol.event import Event
from tests.federation.conftest import Scenario
from tests.federation.dag import Dag


def _auth_ids(s: Scenario, *keys: tuple[str, str]) -> list[str]:
    state = s.dag.current_state()
    return [state[k] for k in keys]


def _assert_rejected(s: Scenario, event: Event, why: str) -> None:
    _, meta = s.rooms.events[event.event_id]
    assert meta.rejected_reason is not None and why in meta.rejected_reason, meta.rejected_reason
    assert event.event_id not in s.rooms.timeline
    assert event.event_id not in s.rooms.extremities[s.dag.room_id]


def _base_keys(s: Scenario, sender: str) -> list[tuple[str, str]]:
    keys = [("m.room.power_levels", ""), ("m.room.member", sender)]
    if s.dag.room_version.create_event_in_auth_events:
        keys.insert(0, ("m.room.create", ""))
    return keys


async def test_correct_auth_events_accepted(scenario: Scenario) -> None:
    s = scenario
    event = s.dag.message(s.alice, auth=_auth_ids(s, *_base_keys(s, s.alice)))
    assert await s.send(event) is None
    assert s.rooms.meta(event.event_id).rejected_reason is None
    assert s.rooms.timeline[-1] == event.event_id


async def test_unneeded_auth_event_rejected(scenario: Scenario) -> None:
    s = scenario
    keys = [*_base_keys(s, s.alice), ("m.room.join_rules", "")]  # not needed for a message
    event = s.dag.message(s.alice, auth=_auth_ids(s, *keys), track=False)
    assert await s.send(event) is None  # no error for the transaction...
    _assert_rejected(s, event, "not needed")  # ...but rejected


async def test_duplicate_state_key_rejected(scenario: Scenario) -> None:
    s = scenario
    older_pl = s.dag.current_state()[("m.room.power_levels", "")]
    s.dag.add(s.alice, "m.room.power_levels", s.dag.power_levels(s.alice, ban=60), state_key="")
    await s.send(s.dag.events[s.dag.extremities[0]])
    ids = [*_auth_ids(s, *_base_keys(s, s.alice)), older_pl]
    event = s.dag.message(s.alice, auth=ids, track=False)
    assert await s.send(event) is None
    _assert_rejected(s, event, "two m.room.power_levels")


async def test_event_listed_twice_rejected(scenario: Scenario) -> None:
    s = scenario
    ids = _auth_ids(s, *_base_keys(s, s.alice))
    event = s.dag.message(s.alice, auth=[*ids, ids[-1]], track=False)
    assert await s.send(event) is None
    _assert_rejected(s, event, "twice")


async def test_auth_event_from_another_room_rejected(scenario: Scenario) -> None:
    s = scenario
    other = Dag(s.dag.room_version, [s.remote, s.local])
    other.standard_room(s.alice)
    foreign_pl = other.current_state()[("m.room.power_levels", "")]
    # The foreign event is known locally (e.g. we are in that room too).
    await s.rooms.persist_outliers([other.events[foreign_pl]], s.dag.room_version)
    keys = _base_keys(s, s.alice)
    ids = [
        i for k, i in zip(keys, _auth_ids(s, *keys), strict=True) if k[0] != "m.room.power_levels"
    ]
    event = s.dag.message(s.alice, auth=[*ids, foreign_pl], track=False)
    assert await s.send(event) is None
    _assert_rejected(s, event, "another room")


async def test_create_event_listed_or_not(scenario: Scenario) -> None:
    s = scenario
    rv = s.dag.room_version
    create_id = s.dag.create_event.event_id
    keys = [("m.room.power_levels", ""), ("m.room.member", s.alice)]
    ids = _auth_ids(s, *keys)
    if rv.create_event_in_auth_events:
        event = s.dag.message(s.alice, auth=ids, track=False)  # create missing
        assert await s.send(event) is None
        _assert_rejected(s, event, "no m.room.create")
    else:
        event = s.dag.message(s.alice, auth=[create_id, *ids], track=False)  # v12: listed
        assert await s.send(event) is None
        _assert_rejected(s, event, "not needed")


async def test_rejected_auth_event_rejects_the_event(scenario: Scenario) -> None:
    s = scenario
    carol = s.remote.user("carol")
    # carol's power levels change is not allowed (she is not even joined): rejected.
    bad_pl = s.dag.add(carol, "m.room.power_levels", {"users": {carol: 100}}, state_key="")
    assert await s.send(bad_pl) is None
    _assert_rejected(s, bad_pl, "")
    keys = _base_keys(s, s.alice)
    ids = [
        i for k, i in zip(keys, _auth_ids(s, *keys), strict=True) if k[0] != "m.room.power_levels"
    ]
    event = s.dag.message(s.alice, auth=[*ids, bad_pl.event_id], track=False)
    assert await s.send(event) is None
    _assert_rejected(s, event, "rejected")


async def test_unauthorised_by_its_auth_events(scenario: Scenario) -> None:
    s = scenario
    mallory = s.remote.user("mallory")  # never joined
    event = s.dag.message(mallory, track=False)
    assert await s.send(event) is None
    _assert_rejected(s, event, "not joined")


async def test_pure_check_matches_the_pipeline(scenario: Scenario) -> None:
    s = scenario
    event = s.dag.message(s.alice, track=False)
    known = {e.event_id: e for e in s.dag.events.values()}
    assert isinstance(check_auth_events(event, known, create_event=s.dag.create_event), Accepted)
    assert isinstance(
        check_auth_events(
            event, known, rejected={event.auth_event_ids[-1]}, create_event=s.dag.create_event
        ),
        Rejected,
    )
    assert isinstance(check_auth_events(event, {}, create_event=s.dag.create_event), Rejected)

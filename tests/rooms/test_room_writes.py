"""Creating rooms, membership and sending events through the Client-Server API."""

from __future__ import annotations

import itertools

import pytest

from starling.protocol.hashing import compute_event_id
from tests.support.harness import Harness

V3 = "/_matrix/client/v3"


async def test_create_room_and_send(hs: Harness) -> None:
    alice, tok = await hs.register("alice")
    room_id = await hs.create_room(tok, name="Test", topic="t", preset="private_chat")
    assert room_id.startswith("!")
    eid = await hs.send_message(tok, room_id, "hello", txn="t1")
    # The same transaction ID gives the same event.
    again = await hs.send_message(tok, room_id, "hello", txn="t1")
    assert again == eid
    state = await hs.services.room_events.current_state_ids(room_id)
    assert ("m.room.name", "") in state and ("m.room.topic", "") in state
    assert state[("m.room.member", alice)]
    found = await hs.services.event_store.get_event(eid)
    assert found is not None
    event, meta = found
    assert compute_event_id(event.pdu, event.room_version) == eid
    assert meta.stream_ordering is not None


async def test_create_room_events_form_one_chain(hs: Harness) -> None:
    """createRoom's initial events (one transaction) are a chain: each cites the one
    before, its state before is the group after it, positions increase, and the room has
    one forward extremity, the last event."""
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok, name="N", topic="t", preset="private_chat")
    store = hs.services.event_store
    recent = await store.get_recent_events_for_ranges([(room_id, None, 10**9)], 100)
    chain = sorted(recent[room_id], key=lambda e: e.meta.stream_ordering or 0)
    types = [e.event.type for e in chain]
    assert types == [
        "m.room.create", "m.room.member", "m.room.power_levels", "m.room.join_rules",
        "m.room.history_visibility", "m.room.guest_access", "m.room.name", "m.room.topic",
    ]  # fmt: skip
    for before, after in itertools.pairwise(chain):
        assert list(after.event.prev_event_ids) == [before.event.event_id]
        assert after.meta.state_before == before.meta.state_after is not None
        assert before.meta.stream_ordering < after.meta.stream_ordering
    assert await store.get_forward_extremities(room_id) == [chain[-1].event.event_id]
    state = await hs.services.room_events.current_state_ids(room_id)
    assert {
        state[(e.event.type, e.event.state_key)] for e in chain if e.event.state_key is not None
    } == {e.event.event_id for e in chain}


async def test_create_room_refused_initial_event_keeps_the_ones_before(hs: Harness) -> None:
    """An initial event the power levels refuse answers 403, as separate sends did: the
    events before it are stored."""
    alice, tok = await hs.register("alice")
    status, body = await hs.request(
        "POST",
        f"{V3}/createRoom",
        tok,
        {"power_level_content_override": {"state_default": 100, "users": {alice: 50}}},
    )
    assert (status, body.get("errcode")) == (403, "M_FORBIDDEN"), body


async def test_transaction_id_retries_answer_the_first_event(hs: Harness) -> None:
    """A send's transaction ID is checked by the unique index, not read first: a retry
    still gets the first event, even once the sender could no longer send it, and the
    same ID for another kind of request in the room is refused."""
    _, tok = await hs.register("alice")
    _, btok = await hs.register("bob")
    room_id = await hs.create_room(tok, preset="public_chat")
    status, _ = await hs.request("POST", f"{V3}/join/{room_id}", btok, {})
    assert status == 200
    first = await hs.send_message(btok, room_id, "hello", txn="t1")
    status, _ = await hs.request("POST", f"{V3}/rooms/{room_id}/leave", btok, {})
    assert status == 200
    assert await hs.send_message(btok, room_id, "hello", txn="t1") == first
    status, body = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/send/m.room.message/t2", btok, {"body": "x"}
    )
    assert status == 403, body  # a new ID: bob is no longer in the room
    status, body = await hs.request("PUT", f"{V3}/rooms/{room_id}/send/m.reaction/t1", btok, {})
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), body
    events = await hs.services.event_store.get_recent_events_for_ranges(
        [(room_id, None, 10**9)], 100
    )
    assert [e.event.event_id for e in events[room_id]].count(first) == 1


@pytest.mark.parametrize("version", ["1", "3", "6", "10", "11", "12"])
async def test_room_versions(hs: Harness, version: str) -> None:
    _, tok = await hs.register()
    room_id = await hs.create_room(tok, room_version=version, preset="public_chat")
    await hs.send_message(tok, room_id, "x")
    bob, btok = await hs.register()
    status, body = await hs.request("POST", f"{V3}/join/{room_id}", btok, {})
    assert status == 200, body
    assert room_id in (await hs.services.membership_store.get_joined_rooms(bob))


async def test_membership_flow(hs: Harness) -> None:
    alice, atok = await hs.register()
    bob, btok = await hs.register()
    room_id = await hs.create_room(atok)
    # Not invited: can't join a private room.
    status, body = await hs.request("POST", f"{V3}/rooms/{room_id}/join", btok, {})
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    status, _ = await hs.request("POST", f"{V3}/rooms/{room_id}/invite", atok, {"user_id": bob})
    assert status == 200
    status, _ = await hs.request("POST", f"{V3}/rooms/{room_id}/join", btok, {})
    assert status == 200
    status, body = await hs.request("GET", f"{V3}/joined_rooms", btok)
    assert body == {"joined_rooms": [room_id]}
    # Bob can't kick Alice (power 0 vs 100).
    status, body = await hs.request("POST", f"{V3}/rooms/{room_id}/kick", btok, {"user_id": alice})
    assert status == 403
    status, _ = await hs.request(
        "POST", f"{V3}/rooms/{room_id}/ban", atok, {"user_id": bob, "reason": "spam"}
    )
    assert status == 200
    status, body = await hs.request("POST", f"{V3}/rooms/{room_id}/join", btok, {})
    assert status == 403
    status, _ = await hs.request("POST", f"{V3}/rooms/{room_id}/unban", atok, {"user_id": bob})
    assert status == 200
    status, _ = await hs.request("POST", f"{V3}/rooms/{room_id}/forget", btok, {})
    assert status == 200


async def test_errors(hs: Harness) -> None:
    _, tok = await hs.register()
    status, body = await hs.request("POST", f"{V3}/createRoom", tok, {"room_version": "99"})
    assert status == 400 and body["errcode"] == "M_UNSUPPORTED_ROOM_VERSION"
    status, body = await hs.request("POST", f"{V3}/createRoom", tok, {"invite": "x"})
    assert status == 400 and body["errcode"] == "M_BAD_JSON"
    status, body = await hs.request("POST", f"{V3}/createRoom", None, {})
    assert status == 401 and body["errcode"] == "M_MISSING_TOKEN"
    status, body = await hs.request("POST", f"{V3}/createRoom", "nope", {})
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"
    status, body = await hs.request(
        "PUT", f"{V3}/rooms/!nope:test.local/send/m.room.message/1", tok, {"body": "x"}
    )
    assert status in (403, 404)
    room_id = await hs.create_room(tok)
    status, body = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/send/m.room.message/2", tok, {"n": 1.5}
    )
    assert status == 400 and body["errcode"] == "M_BAD_JSON"
    status, body = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/send/m.room.message/3", tok, {"b": "x" * 70000}
    )
    assert status == 413 and body["errcode"] == "M_TOO_LARGE"


async def test_state_and_redaction(hs: Harness) -> None:
    _alice, atok = await hs.register()
    _bob, btok = await hs.register()
    room_id = await hs.create_room(atok, preset="public_chat")
    await hs.request("POST", f"{V3}/join/{room_id}", btok, {})
    status, body = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/state/m.room.topic", btok, {"topic": "x"}
    )
    assert status == 403
    status, body = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/state/m.room.topic/", atok, {"topic": "new"}
    )
    assert status == 200
    eid = await hs.send_message(atok, room_id, "secret")
    status, body = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/redact/{eid}/r1", btok, {"reason": "no"}
    )
    assert status == 403
    status, body = await hs.request("PUT", f"{V3}/rooms/{room_id}/redact/{eid}/r2", atok, {})
    assert status == 200
    found = await hs.services.event_store.get_event(eid)
    assert found is not None and found[1].redacted_by == body["event_id"]


async def test_alias_on_create(hs: Harness) -> None:
    _, tok = await hs.register()
    room_id = await hs.create_room(tok, room_alias_name="town")
    assert await hs.services.alias_store.get_alias("#town:test.local") == room_id
    status, body = await hs.request("POST", f"{V3}/createRoom", tok, {"room_alias_name": "town"})
    assert status == 400 and body["errcode"] == "M_ROOM_IN_USE"
    _bob, btok = await hs.register()
    status, body = await hs.request("POST", f"{V3}/join/%23town:test.local", btok, {})
    assert status == 403  # private room: not invited


@pytest.mark.parametrize("old,new", [("10", "12"), ("12", "11"), ("1", "10")])
async def test_room_upgrade(hs: Harness, old: str, new: str) -> None:
    alice, atok = await hs.register()
    _bob, btok = await hs.register()
    carol, _ = await hs.register()
    room_id = await hs.create_room(
        atok, room_version=old, preset="public_chat", name="Old", room_alias_name=f"up{old}"
    )
    await hs.request("POST", f"{V3}/join/{room_id}", btok, {})
    await hs.request("POST", f"{V3}/rooms/{room_id}/ban", atok, {"user_id": carol})
    status, body = await hs.request(
        "POST", f"{V3}/rooms/{room_id}/upgrade", btok, {"new_version": new}
    )
    assert status == 403
    status, body = await hs.request(
        "POST", f"{V3}/rooms/{room_id}/upgrade", atok, {"new_version": "99"}
    )
    assert status == 400 and body["errcode"] == "M_UNSUPPORTED_ROOM_VERSION"
    # Alice's own state about the room: a tag, m.direct, a room push rule.
    await hs.request("PUT", f"{V3}/user/{alice}/rooms/{room_id}/tags/u.work", atok, {})
    await hs.request("PUT", f"{V3}/user/{alice}/account_data/m.direct", atok, {carol: [room_id]})
    rule = {"actions": ["dont_notify"]}
    await hs.request("PUT", f"{V3}/pushrules/global/room/{room_id}", atok, rule)
    status, body = await hs.request(
        "POST", f"{V3}/rooms/{room_id}/upgrade", atok, {"new_version": new}
    )
    assert status == 200, body
    new_room = body["replacement_room"]
    # ...follows the room to its replacement (Synapse's copy_user_state_on_room_upgrade).
    data = hs.services.account_data
    assert await data.get_tags(alice, new_room) == {"u.work": {}}
    assert await data.get(alice, None, "m.direct") == {carol: [room_id, new_room]}
    status, got = await hs.request("GET", f"{V3}/pushrules/global/room/{new_room}", atok)
    assert status == 200 and got["actions"] == ["dont_notify"]
    events = hs.services.room_events
    old_state = await events.current_state_events(room_id)
    assert old_state[("m.room.tombstone", "")].content["replacement_room"] == new_room
    new_state = await events.current_state_events(new_room)
    create = new_state[("m.room.create", "")]
    assert create.content["room_version"] == new
    assert create.content["predecessor"]["room_id"] == room_id
    if new != "12":  # a v12 room ID is its create event's hash: it cannot name the tombstone
        tombstone = old_state[("m.room.tombstone", "")]
        assert create.content["predecessor"]["event_id"] == tombstone.event_id
    assert new_state[("m.room.name", "")].content["name"] == "Old"
    # public_chat has no guest_access (absent: forbidden); the new room states it.
    assert new_state[("m.room.guest_access", "")].content == {"guest_access": "forbidden"}
    assert new_state[("m.room.member", carol)].membership == "ban"
    assert new_state[("m.room.member", alice)].membership == "join"
    assert await hs.services.alias_store.get_alias(f"#up{old}:test.local") == new_room
    # Bob can no longer talk in the old room; he can join the new one.
    status, _ = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/send/m.room.message/x", btok, {"body": "hi"}
    )
    assert status == 403
    status, _ = await hs.request("POST", f"{V3}/join/{new_room}", btok, {})
    assert status == 200

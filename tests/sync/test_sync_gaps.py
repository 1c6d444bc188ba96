"""/sync across gaps and joins: the state of a gapped (limited) incremental sync with
lazy-loaded members, newly joined rooms (limited, with their members' presence), current
state shown in the timeline whatever the history visibility, state filters that empty a
room, paging from the prev_batch of a whole timeline, and the sections every joined room
carries."""

from __future__ import annotations

from typing import Any

from tests.support.harness import Harness
from tests.sync.helpers import V3, join, leave, set_state, settled_token, sync

LAZY: dict[str, Any] = {"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 3}}}


def members(room: dict[str, Any]) -> dict[str, str]:
    """state_key -> membership of the member events in a room's state section."""
    return {
        e["state_key"]: e["content"]["membership"]
        for e in room["state"]["events"]
        if e["type"] == "m.room.member"
    }


async def send_many(hs: Harness, token: str, room_id: str, n: int) -> None:
    for i in range(n):
        await hs.send_message(token, room_id, f"filler {i}")


async def test_gapped_lazy_sync_sends_the_gaps_membership_changes(hs: Harness) -> None:
    alice, atok = await hs.register("alice")
    room_id = await hs.create_room(atok, preset="public_chat")
    bob, btok = await hs.register("bob")
    carol, ctok = await hs.register("carol")
    dave, dtok = await hs.register("dave")
    for tok in (btok, ctok):
        await join(hs, tok, room_id)
    await send_many(hs, btok, room_id, 3)
    first = await sync(hs, atok, filter=LAZY)
    assert members(first["rooms"]["join"][room_id]) == {alice: "join", bob: "join"}

    # Dave joins, then carol fills the timeline: dave's join is in the gap, carol is a
    # sender; alice's own membership is not sent again.
    await join(hs, dtok, room_id)
    await send_many(hs, ctok, room_id, 5)
    second = await sync(hs, atok, since=first["next_batch"], filter=LAZY)
    room = second["rooms"]["join"][room_id]
    assert room["timeline"]["limited"] is True
    assert members(room) == {carol: "join", dave: "join"}

    # Dave leaves in the next gap: only his leave; carol is known already.
    await leave(hs, dtok, room_id)
    await send_many(hs, ctok, room_id, 5)
    third = await sync(hs, atok, since=second["next_batch"], filter=LAZY)
    assert members(third["rooms"]["join"][room_id]) == {dave: "leave"}

    # Without lazy loading the gap's changes come the same way.
    await join(hs, dtok, room_id)
    await send_many(hs, ctok, room_id, 5)
    plain = {"room": {"timeline": {"limit": 3}}}
    fourth = await sync(hs, atok, since=third["next_batch"], filter=plain)
    assert members(fourth["rooms"]["join"][room_id]) == {dave: "join"}


async def test_redundant_members_are_the_senders_not_the_user(hs: Harness) -> None:
    alice, atok = await hs.register("alice")
    room_id = await hs.create_room(atok, preset="public_chat")
    bob, btok = await hs.register("bob")
    carol, ctok = await hs.register("carol")
    for tok in (btok, ctok):
        await join(hs, tok, room_id)
    redundant: dict[str, Any] = {
        "room": {
            "state": {"lazy_load_members": True, "include_redundant_members": True},
            "timeline": {"limit": 2},
        }
    }
    await hs.send_message(btok, room_id, "bob")
    await hs.send_message(ctok, room_id, "carol")
    first = await sync(hs, atok, filter=redundant)
    assert set(members(first["rooms"]["join"][room_id])) == {alice, bob, carol}
    await hs.send_message(btok, room_id, "bob again")
    await hs.send_message(ctok, room_id, "carol again")
    second = await sync(hs, atok, since=first["next_batch"], filter=redundant)
    assert set(members(second["rooms"]["join"][room_id])) == {bob, carol}


async def test_newly_joined_room_is_limited_and_brings_its_members_presence(
    hs: Harness,
) -> None:
    alice, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    room_id = await hs.create_room(atok, preset="public_chat")
    await hs.request("PUT", f"{V3}/presence/{alice}/status", atok, {"presence": "online"})
    await hs.send_message(atok, room_id, "before bob")
    since = await settled_token(hs, btok)
    alice_since = await settled_token(hs, atok)
    await join(hs, btok, room_id)

    body = await sync(hs, btok, since=since)
    room = body["rooms"]["join"][room_id]
    # All of it fits in the timeline, yet the client holds none of the room's history.
    assert room["timeline"]["limited"] is True
    assert any(e["type"] == "m.room.create" for e in room["timeline"]["events"])
    presence = {e["sender"]: e["content"] for e in body["presence"]["events"]}
    assert presence[alice]["presence"] == "online"
    # Only once: alice's presence did not change since.
    again = await sync(hs, btok, since=body["next_batch"])
    assert alice not in {e["sender"] for e in again.get("presence", {}).get("events", [])}

    # Alice is told bob's presence (offline: he never set one) when he joins.
    alice_body = await sync(hs, atok, since=alice_since)
    assert bob in {e["sender"] for e in alice_body["presence"]["events"]}
    assert alice_body["rooms"]["join"][room_id]["timeline"]["limited"] is False


async def test_current_state_shows_in_timeline_despite_history_visibility(hs: Harness) -> None:
    _creator, ctok = await hs.register("creator")
    _syncer, stok = await hs.register("syncer")
    invitee, itok = await hs.register("invitee")
    room_id = await hs.create_room(ctok, preset="public_chat")
    await join(hs, stok, room_id)
    await set_state(
        hs, ctok, room_id, "m.room.history_visibility", {"history_visibility": "joined"}
    )
    since = await settled_token(hs, stok)
    await leave(hs, stok, room_id)
    # Joined while the syncer was away: not visible to it by history visibility...
    await join(hs, itok, room_id)
    await hs.send_message(ctok, room_id, "while away")
    await join(hs, stok, room_id)

    body = await sync(hs, stok, since=since)
    events = body["rooms"]["join"][room_id]["timeline"]["events"]
    # ...but part of the current state, so it is in the timeline; the message is not.
    assert any(
        e["type"] == "m.room.member"
        and e["state_key"] == invitee
        and e["content"]["membership"] == "join"
        for e in events
    )
    assert not any(e.get("content", {}).get("body") == "while away" for e in events)
    # An event no longer in the current state stays hidden: the invitee leaves.
    await leave(hs, itok, room_id)
    status, page = await hs.request(
        "GET", f"{V3}/rooms/{room_id}/messages", stok, params={"dir": "b", "limit": "50"}
    )
    assert status == 200
    joined_while_away = [
        e
        for e in page["chunk"]
        if e["type"] == "m.room.member"
        and e["state_key"] == invitee
        and e["content"]["membership"] == "join"
    ]
    assert joined_while_away == []


async def test_state_filtered_out_leaves_the_room_out(hs: Harness) -> None:
    user, tok = await hs.register("boris")
    room_id = await hs.create_room(tok)
    await set_state(hs, tok, room_id, "a.madeup.test.state", {"my_key": 1})
    only_madeup: dict[str, Any] = {
        "room": {
            "timeline": {"types": []},
            "state": {"types": ["a.madeup.test.state"]},
            "ephemeral": {"types": []},
        },
        "presence": {"types": []},
    }
    first = await sync(hs, tok, filter=only_madeup)
    assert len(first["rooms"]["join"][room_id]["state"]["events"]) == 1
    await set_state(
        hs, tok, room_id, "m.room.member", {"membership": "join", "displayname": "Boris II"}, user
    )
    await hs.send_message(tok, room_id, "filtered out")
    second = await sync(hs, tok, since=first["next_batch"], filter=only_madeup)
    assert room_id not in second["rooms"]["join"]
    # The change is there for a filter that lets member events through.
    members_too = {"room": {"timeline": {"types": []}}}
    third = await sync(hs, tok, since=first["next_batch"], filter=members_too)
    assert members(third["rooms"]["join"][room_id]) == {user: "join"}


async def test_prev_batch_of_a_whole_timeline_pages_it_again(hs: Harness) -> None:
    _user, tok = await hs.register("pager")
    room_id = await hs.create_room(tok)
    await hs.send_message(tok, room_id, "the message")
    body = await sync(hs, tok)
    timeline = body["rooms"]["join"][room_id]["timeline"]
    assert timeline["limited"] is False
    status, page = await hs.request(
        "GET",
        f"{V3}/rooms/{room_id}/messages",
        tok,
        params={"dir": "b", "from": timeline["prev_batch"]},
    )
    assert status == 200, page
    assert [e["event_id"] for e in reversed(page["chunk"])] == [
        e["event_id"] for e in timeline["events"]
    ]
    status, rest = await hs.request(
        "GET", f"{V3}/rooms/{room_id}/messages", tok, params={"dir": "b", "from": page["end"]}
    )
    assert status == 200
    assert rest["chunk"] == [] and "end" not in rest

    # A limited timeline's prev_batch still continues before its first event.
    for i in range(5):
        await hs.send_message(tok, room_id, f"more {i}")
    limited = await sync(hs, tok, filter={"room": {"timeline": {"limit": 2}}})
    timeline = limited["rooms"]["join"][room_id]["timeline"]
    assert timeline["limited"] is True
    status, page = await hs.request(
        "GET",
        f"{V3}/rooms/{room_id}/messages",
        tok,
        params={"dir": "b", "from": timeline["prev_batch"], "limit": "1"},
    )
    assert page["chunk"][0]["content"]["body"] == "more 2"


async def test_joined_rooms_carry_every_section_and_federation_format_ids(
    hs: Harness,
) -> None:
    _user, tok = await hs.register("fed")
    room_id = await hs.create_room(tok)
    event_id = await hs.send_message(tok, room_id, "Test message")
    body = await sync(
        hs, tok, filter={"event_format": "federation", "room": {"timeline": {"limit": 1}}}
    )
    room = body["rooms"]["join"][room_id]
    assert room["ephemeral"] == {"events": []}
    assert room["account_data"] == {"events": []}
    (event,) = room["timeline"]["events"]
    assert event["event_id"] == event_id
    for key in ("room_id", "prev_events", "auth_events", "depth", "hashes", "signatures"):
        assert key in event

"""/sync room sections: limited timelines and /messages continuity, invites, leaves,
knocks, forgotten rooms, lazy-loaded members, redactions and transaction IDs."""

from __future__ import annotations

from typing import Any

from tests.support.harness import Harness
from tests.sync.helpers import V3, invite, join, leave, set_state, sync, timeline_bodies


async def test_limited_timeline_then_messages_from_prev_batch(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    first = await sync(hs, tok)
    sent = [f"m{i}" for i in range(25)]
    for text in sent:
        await hs.send_message(tok, room_id, text)
    body = await sync(
        hs, tok, since=first["next_batch"], filter={"room": {"timeline": {"limit": 5}}}
    )
    room = body["rooms"]["join"][room_id]
    assert room["timeline"]["limited"] is True
    assert timeline_bodies(room) == sent[-5:]
    # Page back from prev_batch until the history before `since` is reached.
    seen: list[str] = []
    token = room["timeline"]["prev_batch"]
    while True:
        status, page = await hs.request(
            "GET",
            f"{V3}/rooms/{room_id}/messages",
            tok,
            params={"dir": "b", "from": token, "limit": "7"},
        )
        assert status == 200, page
        assert page["start"] == token
        bodies = [e["content"].get("body") for e in page["chunk"] if e["type"] == "m.room.message"]
        seen.extend(bodies)
        assert all(e["room_id"] == room_id for e in page["chunk"])
        if "end" not in page:
            break
        token = page["end"]
    # Newest first, no gaps, no duplicates; then the room's creation events.
    assert seen == list(reversed(sent[:-5]))


async def test_messages_forwards_and_to(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    start = (await sync(hs, tok))["next_batch"]
    for i in range(6):
        await hs.send_message(tok, room_id, f"f{i}")
    status, page = await hs.request(
        "GET",
        f"{V3}/rooms/{room_id}/messages",
        tok,
        params={"dir": "f", "from": start, "limit": "4"},
    )
    assert status == 200, page
    assert [e["content"]["body"] for e in page["chunk"]] == ["f0", "f1", "f2", "f3"]
    status, page2 = await hs.request(
        "GET", f"{V3}/rooms/{room_id}/messages", tok, params={"dir": "f", "from": page["end"]}
    )
    assert [e["content"]["body"] for e in page2["chunk"]] == ["f4", "f5"]
    # `to` stops the walk; no `from` starts at the newest event going backwards.
    status, back = await hs.request(
        "GET", f"{V3}/rooms/{room_id}/messages", tok, params={"dir": "b", "to": page["end"]}
    )
    assert [e["content"]["body"] for e in back["chunk"]] == ["f5", "f4"]
    assert "end" not in back or back["chunk"]


async def test_messages_bad_params(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    path = f"{V3}/rooms/{room_id}/messages"
    for params, code in (
        ({}, "M_MISSING_PARAM"),
        ({"dir": "x"}, "M_INVALID_PARAM"),
        ({"dir": "b", "from": "zzz"}, "M_INVALID_PARAM"),
        ({"dir": "b", "from": "t12abc"}, "M_INVALID_PARAM"),
        ({"dir": "b", "limit": "many"}, "M_INVALID_PARAM"),
        ({"dir": "b", "filter": "{bad"}, "M_NOT_JSON"),
        ({"dir": "b", "filter": '{"types": "m.room.message"}'}, "M_BAD_JSON"),
    ):
        status, body = await hs.request("GET", path, tok, params=params)
        assert status == 400 and body["errcode"] == code, (params, body)
    # A huge limit is capped, not an error.
    status, body = await hs.request("GET", path, tok, params={"dir": "b", "limit": "100000"})
    assert status == 200
    status, body = await hs.request(
        "GET", f"{V3}/rooms/!nope:test.local/messages", tok, params={"dir": "b"}
    )
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"


async def test_invite_and_leave_sections(hs: Harness) -> None:
    alice, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    room_id = await hs.create_room(atok, name="Secret plans")
    first = await sync(hs, btok)
    await invite(hs, atok, room_id, bob)
    body = await sync(hs, btok, since=first["next_batch"])
    inv = body["rooms"]["invite"][room_id]["invite_state"]["events"]
    kinds = {(e["type"], e["state_key"]) for e in inv}
    assert ("m.room.create", "") in kinds and ("m.room.name", "") in kinds
    assert ("m.room.join_rules", "") in kinds and ("m.room.member", alice) in kinds
    assert inv[-1]["type"] == "m.room.member" and inv[-1]["state_key"] == bob
    assert inv[-1]["content"]["membership"] == "invite"
    assert all(set(e) >= {"type", "state_key", "content", "sender"} for e in inv)
    # An initial sync shows the invite too.
    assert room_id in (await sync(hs, btok))["rooms"]["invite"]

    await join(hs, btok, room_id)
    body2 = await sync(hs, btok, since=body["next_batch"])
    joined = body2["rooms"]["join"][room_id]
    # Newly joined: as in an initial sync, full state, and a timeline reaching back
    # before `since` (here to the room's creation, as history visibility allows).
    state_types = {e["type"] for e in joined["state"]["events"]}
    timeline_types = [e["type"] for e in joined["timeline"]["events"]]
    assert "m.room.create" in state_types | set(timeline_types)
    assert "m.room.name" in state_types | set(timeline_types)
    assert timeline_types[-1] == "m.room.member"
    await hs.send_message(atok, room_id, "bye bob")
    status, _ = await hs.request("POST", f"{V3}/rooms/{room_id}/kick", atok, {"user_id": bob})
    assert status == 200
    await hs.send_message(atok, room_id, "after the kick")
    body3 = await sync(hs, btok, since=body2["next_batch"])
    left = body3["rooms"]["leave"][room_id]
    assert timeline_bodies(left) == ["bye bob"]
    last = left["timeline"]["events"][-1]
    assert last["type"] == "m.room.member" and last["content"]["membership"] == "leave"
    assert room_id not in body3["rooms"]["join"]
    # Initial sync: left rooms only with include_leave.
    assert room_id not in (await sync(hs, btok))["rooms"]["leave"]
    with_leave = await sync(hs, btok, filter={"room": {"include_leave": True}})
    assert "after the kick" not in timeline_bodies(with_leave["rooms"]["leave"][room_id])
    # Forgotten rooms are hidden.
    status, _ = await hs.request("POST", f"{V3}/rooms/{room_id}/forget", btok, {})
    assert status == 200
    again = await sync(hs, btok, filter={"room": {"include_leave": True}})
    assert room_id not in again["rooms"]["leave"]


async def test_rejected_invite_goes_to_leave(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    room_id = await hs.create_room(atok)
    await hs.send_message(atok, room_id, "private")
    await invite(hs, atok, room_id, bob)
    first = await sync(hs, btok)
    await leave(hs, btok, room_id)
    body = await sync(hs, btok, since=first["next_batch"])
    left = body["rooms"]["leave"][room_id]
    assert [e["type"] for e in left["timeline"]["events"]] == ["m.room.member"]
    assert left["state"]["events"] == []


async def test_knock_section(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    room_id = await hs.create_room(atok, room_version="10", name="Knockable")
    await set_state(hs, atok, room_id, "m.room.join_rules", {"join_rule": "knock"})
    first = await sync(hs, btok)
    status, body = await hs.request("POST", f"{V3}/knock/{room_id}", btok, {"reason": "hi"})
    assert status == 200, body
    body = await sync(hs, btok, since=first["next_batch"])
    knock = body["rooms"]["knock"][room_id]["knock_state"]["events"]
    assert ("m.room.name", "") in {(e["type"], e["state_key"]) for e in knock}
    assert knock[-1]["content"]["membership"] == "knock"
    assert knock[-1]["state_key"] == bob


async def _member_state(room: dict[str, Any]) -> set[str]:
    return {e["state_key"] for e in room["state"]["events"] if e["type"] == "m.room.member"}


async def test_lazy_loading_members(hs: Harness) -> None:
    alice, atok = await hs.register("alice")
    room_id = await hs.create_room(atok, preset="public_chat")
    users = []
    for name in ("bob", "carol", "dave"):
        uid, utok = await hs.register(name)
        await join(hs, utok, room_id)
        users.append((uid, utok))
    (bob, btok), (carol, ctok), (dave, _) = users
    await hs.send_message(btok, room_id, "from bob")
    lazy: dict[str, Any] = {
        "room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 1}}
    }
    first = await sync(hs, atok, filter=lazy)
    room = first["rooms"]["join"][room_id]
    assert await _member_state(room) == {alice, bob}
    assert room["summary"]["m.joined_member_count"] == 4
    # Without lazy loading every member is there.
    full = await sync(hs, atok, filter={"room": {"timeline": {"limit": 1}}})
    assert await _member_state(full["rooms"]["join"][room_id]) == {alice, bob, carol, dave}

    # Incremental: bob's member event is not sent again; carol's is, once.
    await hs.send_message(btok, room_id, "bob again")
    await hs.send_message(ctok, room_id, "carol here")
    second = await sync(hs, atok, since=first["next_batch"], filter=lazy)
    room2 = second["rooms"]["join"][room_id]
    assert await _member_state(room2) == {carol}
    await hs.send_message(ctok, room_id, "carol again")
    third = await sync(hs, atok, since=second["next_batch"], filter=lazy)
    assert await _member_state(third["rooms"]["join"][room_id]) == set()
    # Retrying a `since` whose response was lost sends those members again.
    retry = await sync(hs, atok, since=first["next_batch"], filter=lazy)
    assert carol in await _member_state(retry["rooms"]["join"][room_id])
    # include_redundant_members always sends the senders.
    redundant: dict[str, Any] = {
        "room": {
            "state": {"lazy_load_members": True, "include_redundant_members": True},
            "timeline": {"limit": 1},
        }
    }
    await hs.send_message(ctok, room_id, "carol thrice")
    fourth = await sync(hs, atok, since=third["next_batch"], filter=redundant)
    assert carol in await _member_state(fourth["rooms"]["join"][room_id])
    # /messages with lazy loading returns the senders' member events in `state`.
    status, page = await hs.request(
        "GET",
        f"{V3}/rooms/{room_id}/messages",
        atok,
        params={"dir": "b", "limit": "3", "filter": '{"lazy_load_members": true}'},
    )
    assert status == 200, page
    assert {e["state_key"] for e in page["state"]} == {e["sender"] for e in page["chunk"]}


async def test_heroes_when_unnamed(hs: Harness) -> None:
    _alice, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    room_id = await hs.create_room(atok, preset="public_chat")
    await join(hs, btok, room_id)
    body = await sync(hs, atok)
    summary = body["rooms"]["join"][room_id]["summary"]
    assert summary["m.heroes"] == [bob]
    assert summary["m.joined_member_count"] == 2
    assert summary["m.invited_member_count"] == 0


async def test_redacted_events_in_sync_and_event(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    first = await sync(hs, tok)
    event_id = await hs.send_message(tok, room_id, "oops")
    status, body = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/redact/{event_id}/r1", tok, {"reason": "typo"}
    )
    assert status == 200, body
    redaction_id = body["event_id"]
    body = await sync(hs, tok, since=first["next_batch"])
    events = {e["event_id"]: e for e in body["rooms"]["join"][room_id]["timeline"]["events"]}
    assert events[event_id]["content"] == {}
    assert events[event_id]["unsigned"]["redacted_because"]["event_id"] == redaction_id
    assert events[redaction_id]["redacts"] == event_id
    assert events[redaction_id]["content"]["redacts"] == event_id
    status, got = await hs.request("GET", f"{V3}/rooms/{room_id}/event/{event_id}", tok)
    assert status == 200, got
    assert got["content"] == {} and got["room_id"] == room_id
    assert got["unsigned"]["redacted_because"]["content"]["reason"] == "typo"


async def test_transaction_id_only_for_sending_device(hs: Harness) -> None:
    alice, tok = await hs.register("alice", device_id="PHONE")
    store = hs.services.account_store
    await store.upsert_device(alice, "LAPTOP", None)
    other_tok = "laptop-token-for-alice"
    await store.add_access_token(other_tok, alice, "LAPTOP")
    room_id = await hs.create_room(tok)
    event_id = await hs.send_message(tok, room_id, "hi", txn="txn-42")
    mine = await sync(hs, tok)
    theirs = await sync(hs, other_tok)

    def find(body: dict[str, Any]) -> dict[str, Any]:
        events = body["rooms"]["join"][room_id]["timeline"]["events"]
        found: dict[str, Any] = next(e for e in events if e["event_id"] == event_id)
        return found

    assert find(mine)["unsigned"]["transaction_id"] == "txn-42"
    assert "transaction_id" not in find(theirs)["unsigned"]


async def test_prev_content_on_state_changes(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok, name="Old")
    first = await sync(hs, tok)
    await set_state(hs, tok, room_id, "m.room.name", {"name": "New"})
    body = await sync(hs, tok, since=first["next_batch"])
    event = body["rooms"]["join"][room_id]["timeline"]["events"][-1]
    assert event["unsigned"]["prev_content"] == {"name": "Old"}
    assert event["content"] == {"name": "New"}


async def test_state_delta_when_limited(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok, name="Before")
    first = await sync(hs, tok)
    await set_state(hs, tok, room_id, "m.room.topic", {"topic": "changed in the gap"})
    for i in range(5):
        await hs.send_message(tok, room_id, f"x{i}")
    body = await sync(
        hs, tok, since=first["next_batch"], filter={"room": {"timeline": {"limit": 2}}}
    )
    room = body["rooms"]["join"][room_id]
    assert room["timeline"]["limited"] is True
    assert [e["type"] for e in room["state"]["events"]] == ["m.room.topic"]
    # use_state_after: the state at the end of the timeline instead.
    after = await sync(
        hs,
        tok,
        since=first["next_batch"],
        filter={"room": {"timeline": {"limit": 2}}},
        use_state_after=True,
    )
    room = after["rooms"]["join"][room_id]
    assert "state" not in room
    assert [e["type"] for e in room["state_after"]["events"]] == ["m.room.topic"]


async def test_full_state_returns_everything_at_once(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    first = await sync(hs, tok)
    body = await sync(hs, tok, since=first["next_batch"], full_state=True, timeout=10000)
    room = body["rooms"]["join"][room_id]
    assert "m.room.create" in {e["type"] for e in room["state"]["events"]}


async def test_unstable_use_state_after_answers_with_the_unstable_key(hs: Harness) -> None:
    """matrix-js-sdk asks with `org.matrix.msc4222.use_state_after` and reads only
    `org.matrix.msc4222.state_after` (as Synapse answers it): with the stable key, a client
    that joined an encrypted room after an invite saw no room state, so no encryption."""
    _, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    encryption = {"algorithm": "m.megolm.v1.aes-sha2"}
    room_id = await hs.create_room(
        atok,
        invite=[bob],
        initial_state=[{"type": "m.room.encryption", "state_key": "", "content": encryption}],
    )
    unstable = {"org.matrix.msc4222.use_state_after": True}
    invited = await sync(hs, btok, **unstable)
    assert room_id in invited["rooms"]["invite"]
    await join(hs, btok, room_id)
    for _ in range(3):  # more messages than the timeline holds: the state is not in it
        await hs.send_message(atok, room_id, "hi")
    limit = {"room": {"timeline": {"limit": 2}}}
    for body in (
        await sync(hs, btok, since=invited["next_batch"], filter=limit, **unstable),
        await sync(hs, btok, filter=limit, **unstable),  # an initial sync
    ):
        room = body["rooms"]["join"][room_id]
        assert "state" not in room and "state_after" not in room
        state = room["org.matrix.msc4222.state_after"]["events"]
        assert {"type": "m.room.encryption", "content": encryption}.items() <= next(
            e for e in state if e["type"] == "m.room.encryption"
        ).items()
    # The stable parameter (alone or with the unstable one) gets the stable key.
    both = await sync(hs, btok, filter=limit, use_state_after=True, **unstable)
    room = both["rooms"]["join"][room_id]
    assert "org.matrix.msc4222.state_after" not in room and "state" not in room
    assert "m.room.encryption" in {e["type"] for e in room["state_after"]["events"]}


async def test_named_room_has_no_heroes_even_when_named_in_the_timeline(hs: Harness) -> None:
    # The name event is in the initial sync's timeline, not in its state section: the
    # summary still knows the room is named (spec: m.heroes only for unnamed rooms).
    _, atok = await hs.register("alice")
    _, btok = await hs.register("bob")
    room_id = await hs.create_room(atok, preset="public_chat")
    await set_state(hs, atok, room_id, "m.room.name", {"name": "A room name"})
    await join(hs, btok, room_id)
    body = await sync(hs, atok, filter={"room": {"state": {"lazy_load_members": True}}})
    summary = body["rooms"]["join"][room_id]["summary"]
    assert summary == {"m.joined_member_count": 2, "m.invited_member_count": 0}

"""Small leaks: what a user may not see stays unseen through every side door."""

from __future__ import annotations

from tests.support.harness import Harness

V3 = "/_matrix/client/v3"


async def _joined_visibility_room(hs: Harness, tok: str) -> str:
    return await hs.create_room(
        tok,
        preset="public_chat",
        initial_state=[
            {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}
        ],
    )


async def test_members_at_a_point_before_joining_a_joined_room_is_refused(hs: Harness) -> None:
    alice, atok = await hs.register("alice")
    room = await _joined_visibility_room(hs, atok)
    carol, ctok = await hs.register("carol")
    assert (await hs.request("POST", f"{V3}/join/{room}", ctok, {}))[0] == 200
    status, resp = await hs.request("GET", f"{V3}/rooms/{room}/messages?dir=b", atok)
    assert status == 200
    before = resp["start"]
    # Carol leaves; then Bob joins. The member list at `before` (Carol still in) is not his.
    assert (await hs.request("POST", f"{V3}/rooms/{room}/leave", ctok, {}))[0] == 200
    _, btok = await hs.register("bob")
    assert (await hs.request("POST", f"{V3}/join/{room}", btok, {}))[0] == 200
    status, resp = await hs.request("GET", f"{V3}/rooms/{room}/members?at={before}", btok)
    assert status == 403 and resp["errcode"] == "M_FORBIDDEN", resp
    # Alice saw that point, and gets it.
    status, resp = await hs.request("GET", f"{V3}/rooms/{room}/members?at={before}", atok)
    assert status == 200
    assert {e["state_key"] for e in resp["chunk"]} == {alice, carol}
    # Bob's own present is his.
    status, resp = await hs.request("GET", f"{V3}/rooms/{room}/members", btok)
    assert status == 200


async def test_receipt_on_an_event_the_user_may_not_see_is_refused(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    room = await _joined_visibility_room(hs, atok)
    hidden = await hs.send_message(atok, room, "before bob")
    _, btok = await hs.register("bob")
    assert (await hs.request("POST", f"{V3}/join/{room}", btok, {}))[0] == 200
    for receipt_type in ("m.read", "m.read.private", "m.fully_read"):
        status, resp = await hs.request(
            "POST", f"{V3}/rooms/{room}/receipt/{receipt_type}/{hidden}", btok, {}
        )
        assert status == 404 and resp["errcode"] == "M_NOT_FOUND", (receipt_type, resp)
    seen = await hs.send_message(atok, room, "after bob")
    status, _ = await hs.request("POST", f"{V3}/rooms/{room}/receipt/m.read/{seen}", btok, {})
    assert status == 200


async def test_redacted_member_event_shows_no_profile(hs: Harness) -> None:
    alice, atok = await hs.register("alice")
    room = await hs.create_room(atok, preset="public_chat")
    status, resp = await hs.request(
        "PUT",
        f"{V3}/rooms/{room}/state/m.room.member/{alice}",
        atok,
        {"membership": "join", "displayname": "Secret Name", "avatar_url": "mxc://x/y"},
    )
    assert status == 200, resp
    member_event = resp["event_id"]
    status, resp = await hs.request(
        "PUT", f"{V3}/rooms/{room}/redact/{member_event}/r1", atok, {"reason": "oops"}
    )
    assert status == 200, resp
    status, resp = await hs.request("GET", f"{V3}/rooms/{room}/joined_members", atok)
    assert status == 200
    # Both keys are always present (as Synapse answers), null once redacted.
    assert resp["joined"][alice] == {"display_name": None, "avatar_url": None}
    # Every other state read path sees the redacted content too.
    status, resp = await hs.request("GET", f"{V3}/rooms/{room}/state/m.room.member/{alice}", atok)
    assert (status, resp) == (200, {"membership": "join"})
    status, resp = await hs.request("GET", f"{V3}/rooms/{room}/members", atok)
    mine = [e for e in resp["chunk"] if e["state_key"] == alice]
    assert mine[0]["content"] == {"membership": "join"}
    state = await hs.services.room_events.current_state_events(room)
    assert state[("m.room.member", alice)].content == {"membership": "join"}


async def test_same_transaction_id_in_two_rooms_sends_two_messages(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room1 = await hs.create_room(tok)
    room2 = await hs.create_room(tok)
    first = await hs.send_message(tok, room1, "one", txn="same")
    second = await hs.send_message(tok, room2, "two", txn="same")
    assert first != second
    found = await hs.services.event_store.get_event(second)
    assert found is not None and found[0].room_id == room2
    assert found[0].content["body"] == "two"
    # Retries stay idempotent in each room.
    assert await hs.send_message(tok, room1, "one", txn="same") == first
    assert await hs.send_message(tok, room2, "two", txn="same") == second
    # The same ID on another endpoint in the same room is not silently the old event.
    status, resp = await hs.request(
        "PUT", f"{V3}/rooms/{room1}/send/m.reaction/same", tok, {"body": "x"}
    )
    assert status == 400 and resp["errcode"] == "M_INVALID_PARAM", resp

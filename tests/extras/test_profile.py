"""Profiles: reads, writes, validation, and propagation into joined rooms."""

from __future__ import annotations

from tests.extras.helpers import V3, shared_room
from tests.support.harness import Harness


async def test_get_and_set_profile(hs: Harness) -> None:
    alice, alice_token = await hs.register("alice")
    localpart_name = {"displayname": "alice"}
    assert await hs.request("GET", f"{V3}/profile/{alice}") == (200, localpart_name)
    status, _ = await hs.request(
        "PUT", f"{V3}/profile/{alice}/displayname", alice_token, {"displayname": "Alice A."}
    )
    assert status == 200
    status, _ = await hs.request(
        "PUT",
        f"{V3}/profile/{alice}/avatar_url",
        alice_token,
        {"avatar_url": "mxc://test.local/abc123"},
    )
    assert status == 200
    assert await hs.request("GET", f"{V3}/profile/{alice}", alice_token) == (
        200,
        {"displayname": "Alice A.", "avatar_url": "mxc://test.local/abc123"},
    )
    assert await hs.request("GET", f"{V3}/profile/{alice}/displayname") == (
        200,
        {"displayname": "Alice A."},
    )
    # Clearing a field: PUT empty, or DELETE.
    status, _ = await hs.request(
        "PUT", f"{V3}/profile/{alice}/avatar_url", alice_token, {"avatar_url": ""}
    )
    assert status == 200
    status, body = await hs.request("GET", f"{V3}/profile/{alice}/avatar_url")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, _ = await hs.request("DELETE", f"{V3}/profile/{alice}/displayname", alice_token)
    assert status == 200
    assert await hs.request("GET", f"{V3}/profile/{alice}") == (200, {})


async def test_profile_errors(hs: Harness) -> None:
    alice, alice_token = await hs.register()
    _bob, bob_token = await hs.register()
    path = f"{V3}/profile/{alice}/displayname"
    status, body = await hs.request("PUT", path, bob_token, {"displayname": "evil"})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    cases = [
        (path, {"displayname": "x" * 257}, "M_INVALID_PARAM"),
        (path, {"displayname": 5}, "M_BAD_JSON"),
        (path, {}, "M_MISSING_PARAM"),
        (
            f"{V3}/profile/{alice}/avatar_url",
            {"avatar_url": "https://example.com/a.png"},
            "M_INVALID_PARAM",
        ),
        (f"{V3}/profile/{alice}/avatar_url", {"avatar_url": "mxc://server"}, "M_INVALID_PARAM"),
        # A final newline is not part of an MXC URI (a regex's `$` would let it through).
        (f"{V3}/profile/{alice}/avatar_url", {"avatar_url": "mxc://s/a\n"}, "M_INVALID_PARAM"),
        (f"{V3}/profile/{alice}/m.tz", {"m.tz": "Europe/Paris"}, "M_INVALID_PARAM"),
    ]
    for p, body_in, errcode in cases:
        status, body = await hs.request("PUT", p, alice_token, body_in)
        assert (status, body["errcode"]) == (400, errcode), (p, body_in)
    status, body = await hs.request("PUT", path, alice_token, raw=b"{")
    assert (status, body["errcode"]) == (400, "M_NOT_JSON")
    status, body = await hs.request("PUT", path, None, {"displayname": "x"})
    assert status == 401
    # Unknown users.
    for p in (
        f"{V3}/profile/@nobody:test.local",
        f"{V3}/profile/@nobody:test.local/displayname",
        f"{V3}/profile/@x:elsewhere.example",
    ):
        status, body = await hs.request("GET", p, alice_token)
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), p
    status, body = await hs.request("GET", f"{V3}/profile/not-a-user", alice_token)
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")


async def test_profile_change_updates_member_events(hs: Harness) -> None:
    _alice, alice_token, bob, bob_token, room_id = await shared_room(hs)
    second = await hs.create_room(bob_token)
    left = await hs.create_room(bob_token)
    status, _ = await hs.request("POST", f"{V3}/rooms/{left}/leave", bob_token, {})
    assert status == 200
    status, _ = await hs.request(
        "PUT", f"{V3}/profile/{bob}/displayname", bob_token, {"displayname": "Bobby"}
    )
    assert status == 200
    room_events = hs.services.room_events
    for rid in (room_id, second):
        state = await room_events.current_state_events(rid, [("m.room.member", bob)])
        member = state[("m.room.member", bob)]
        assert member.content["membership"] == "join"
        assert member.content["displayname"] == "Bobby"
    state = await room_events.current_state_events(left, [("m.room.member", bob)])
    assert state[("m.room.member", bob)].content["membership"] == "leave"

    # The same value again sends nothing new.
    before = await room_events.current_state_ids(room_id)
    await hs.request("PUT", f"{V3}/profile/{bob}/displayname", bob_token, {"displayname": "Bobby"})
    assert await room_events.current_state_ids(room_id) == before

    # Avatar too; the display name is kept.
    await hs.request(
        "PUT", f"{V3}/profile/{bob}/avatar_url", bob_token, {"avatar_url": "mxc://test.local/pic"}
    )
    state = await room_events.current_state_events(room_id, [("m.room.member", bob)])
    content = state[("m.room.member", bob)].content
    assert (content["displayname"], content["avatar_url"]) == ("Bobby", "mxc://test.local/pic")
    # New joins carry the profile.
    third = await hs.create_room(alice_token, preset="public_chat")
    await hs.request("POST", f"{V3}/join/{third}", bob_token, {})
    state = await room_events.current_state_events(third, [("m.room.member", bob)])
    assert state[("m.room.member", bob)].content["avatar_url"] == "mxc://test.local/pic"

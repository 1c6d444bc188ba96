"""Restricted rooms (spec: client-server-api "Restricted rooms", room versions 8+): only
joined members of an allowed room get in without an invite, the server itself decides who
authorises the join, and a member event sent through the state endpoint obeys the same
membership rules as /join, /invite, /leave, /kick and /ban."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.harness import UNLIMITED_ROOM_RATES, Harness

V3 = "/_matrix/client/v3"


@pytest.fixture
def hs_config() -> dict[str, Any]:
    return {**UNLIMITED_ROOM_RATES, "allow_guest_access": True}


async def _restricted_setup(
    hs: Harness, version: str, rule: str = "restricted"
) -> tuple[str, str, str, str]:
    """An owner, a space-like room A, and room R admitting A's members; returns
    (owner, owner token, A, R)."""
    owner, otok = await hs.register()
    allowed = await hs.create_room(otok, preset="public_chat")
    room = await hs.create_room(
        otok,
        room_version=version,
        preset="private_chat",
        initial_state=[
            {
                "type": "m.room.join_rules",
                "state_key": "",
                "content": {
                    "join_rule": rule,
                    "allow": [{"type": "m.room_membership", "room_id": allowed}],
                },
            }
        ],
    )
    return owner, otok, allowed, room


def _member_path(room: str, user: str) -> str:
    return f"{V3}/rooms/{room}/state/m.room.member/{user}"


async def _member_content(hs: Harness, room: str, user: str) -> dict[str, Any]:
    state = await hs.services.room_events.current_state_events(room, [("m.room.member", user)])
    return dict(state[("m.room.member", user)].content)


@pytest.mark.parametrize("version", ["8", "10", "12"])
async def test_an_outsider_cannot_join_a_restricted_room(hs: Harness, version: str) -> None:
    owner, _, _, room = await _restricted_setup(hs, version)
    outsider, tok = await hs.register()
    status, body = await hs.request(
        "PUT",
        _member_path(room, outsider),
        tok,
        {"membership": "join", "join_authorised_via_users_server": owner},
    )
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
    status, body = await hs.request("POST", f"{V3}/join/{room}", tok, {})
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
    assert outsider not in await hs.services.membership_store.get_joined_users(room)


@pytest.mark.parametrize("version", ["8", "10", "12"])
async def test_a_member_of_an_allowed_room_joins(hs: Harness, version: str) -> None:
    owner, _, allowed, room = await _restricted_setup(hs, version)
    member, tok = await hs.register()
    assert (await hs.request("POST", f"{V3}/join/{allowed}", tok, {}))[0] == 200
    status, body = await hs.request("POST", f"{V3}/join/{room}", tok, {})
    assert status == 200, body
    assert member in await hs.services.membership_store.get_joined_users(room)
    # The server chose the authorising user itself: the owner, the only one who can invite.
    assert (await _member_content(hs, room, member))["join_authorised_via_users_server"] == owner


async def test_a_member_joins_through_the_state_endpoint_with_the_servers_authoriser(
    hs: Harness,
) -> None:
    owner, _, allowed, room = await _restricted_setup(hs, "10")
    member, tok = await hs.register()
    other, _ = await hs.register()
    assert (await hs.request("POST", f"{V3}/join/{allowed}", tok, {}))[0] == 200
    # A client-supplied authoriser is never trusted: the server puts its own choice there.
    status, body = await hs.request(
        "PUT",
        _member_path(room, member),
        tok,
        {"membership": "join", "displayname": "M", "join_authorised_via_users_server": other},
    )
    assert status == 200, body
    content = await _member_content(hs, room, member)
    assert content["join_authorised_via_users_server"] == owner
    assert content["displayname"] == "M"
    # Once joined, a profile change needs no authoriser and keeps none from the client.
    status, body = await hs.request(
        "PUT",
        _member_path(room, member),
        tok,
        {"membership": "join", "displayname": "N", "join_authorised_via_users_server": owner},
    )
    assert status == 200, body
    content = await _member_content(hs, room, member)
    assert content["displayname"] == "N" and "join_authorised_via_users_server" not in content


async def test_knock_restricted_admits_members_and_lets_others_knock(hs: Harness) -> None:
    _, _, allowed, room = await _restricted_setup(hs, "10", "knock_restricted")
    _, mtok = await hs.register()
    outsider, otok = await hs.register()
    assert (await hs.request("POST", f"{V3}/join/{allowed}", mtok, {}))[0] == 200
    assert (await hs.request("POST", f"{V3}/join/{room}", mtok, {}))[0] == 200
    status, body = await hs.request("POST", f"{V3}/join/{room}", otok, {})
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
    status, body = await hs.request("POST", f"{V3}/knock/{room}", otok, {})
    assert status == 200, body
    membership = await hs.services.membership_store.get_membership(room, outsider)
    assert membership is not None and membership.membership == "knock"


async def test_an_invited_user_joins_a_restricted_room_without_an_authoriser(
    hs: Harness,
) -> None:
    _, otok, _, room = await _restricted_setup(hs, "10")
    invitee, tok = await hs.register()
    status, _ = await hs.request("POST", f"{V3}/rooms/{room}/invite", otok, {"user_id": invitee})
    assert status == 200
    assert (await hs.request("POST", f"{V3}/join/{room}", tok, {}))[0] == 200
    assert "join_authorised_via_users_server" not in await _member_content(hs, room, invitee)


async def test_the_state_endpoint_applies_the_membership_rules(hs: Harness) -> None:
    owner, otok = await hs.register()
    bob, btok = await hs.register()
    room = await hs.create_room(otok, preset="public_chat")
    # Nobody joins on someone else's behalf.
    status, body = await hs.request("PUT", _member_path(room, bob), otok, {"membership": "join"})
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
    # Inviting someone already in the room is refused, as by /invite.
    assert (await hs.request("POST", f"{V3}/join/{room}", btok, {}))[0] == 200
    status, body = await hs.request("PUT", _member_path(room, bob), otok, {"membership": "invite"})
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
    # Nor is a hand-made third-party invite (only the server builds those).
    carol, _ = await hs.register()
    status, body = await hs.request(
        "PUT",
        _member_path(room, carol),
        otok,
        {"membership": "invite", "third_party_invite": {"display_name": "c", "signed": {}}},
    )
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
    # A membership that is not one of the spec's is the client's error.
    status, body = await hs.request("PUT", _member_path(room, bob), btok, {"membership": "boss"})
    assert status == 400 and body["errcode"] == "M_BAD_JSON", body
    # Kick and ban through the state endpoint work for the owner, like /kick and /ban.
    status, body = await hs.request(
        "PUT", _member_path(room, bob), otok, {"membership": "ban", "reason": "spam"}
    )
    assert status == 200, body
    membership = await hs.services.membership_store.get_membership(room, bob)
    assert membership is not None and membership.membership == "ban"
    status, body = await hs.request("PUT", _member_path(room, bob), otok, {"membership": "leave"})
    assert status == 200, body  # an unban
    membership = await hs.services.membership_store.get_membership(room, bob)
    assert membership is not None and membership.membership == "leave"
    assert owner in await hs.services.membership_store.get_joined_users(room)


async def test_guests_cannot_join_through_the_state_endpoint(hs: Harness) -> None:
    _, otok = await hs.register()
    room = await hs.create_room(otok, preset="public_chat")
    status, body = await hs.request("POST", f"{V3}/register?kind=guest", None, {})
    assert status == 200, body
    guest, gtok = body["user_id"], body["access_token"]
    status, body = await hs.request("PUT", _member_path(room, guest), gtok, {"membership": "join"})
    assert status == 403 and body["errcode"] == "M_GUEST_ACCESS_FORBIDDEN", body
    assert guest not in await hs.services.membership_store.get_joined_users(room)

"""Account data, tags, ignored users: endpoints, errors, and the extension."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.extras.helpers import V3, contribute, shared_room
from tests.support.harness import Harness
from tests.support.holds import hold_first_call


def global_events(response: dict[str, Any]) -> dict[str, Any]:
    return {e["type"]: e["content"] for e in response.get("account_data", {}).get("events", [])}


def room_events(response: dict[str, Any], room_id: str) -> dict[str, Any]:
    room = response.get("rooms", {}).get("join", {}).get(room_id, {})
    return {e["type"]: e["content"] for e in room.get("account_data", {}).get("events", [])}


async def test_global_and_room_account_data(hs: Harness) -> None:
    alice, alice_token = await hs.register()
    room_id = await hs.create_room(alice_token)
    gpath = f"{V3}/user/{alice}/account_data/org.example.settings"
    rpath = f"{V3}/user/{alice}/rooms/{room_id}/account_data/org.example.room"
    status, body = await hs.request("GET", gpath, alice_token)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    assert (await hs.request("PUT", gpath, alice_token, {"theme": "dark"}))[0] == 200
    assert await hs.request("GET", gpath, alice_token) == (200, {"theme": "dark"})
    assert (await hs.request("PUT", rpath, alice_token, {"pinned": True}))[0] == 200
    assert await hs.request("GET", rpath, alice_token) == (200, {"pinned": True})
    # Room data does not fall back to global data of the same type, nor the reverse.
    status, _ = await hs.request(
        "GET", f"{V3}/user/{alice}/rooms/{room_id}/account_data/org.example.settings", alice_token
    )
    assert status == 404

    ext = hs.services.account_data
    response, added, since = await contribute(hs, ext, alice, None)
    assert added
    assert global_events(response) == {"org.example.settings": {"theme": "dark"}}
    assert room_events(response, room_id) == {"org.example.room": {"pinned": True}}
    response, added, since = await contribute(hs, ext, alice, since)
    assert not added and response == {}
    await hs.request("PUT", gpath, alice_token, {"theme": "light"})
    response, added, since = await contribute(hs, ext, alice, since)
    assert added and global_events(response) == {"org.example.settings": {"theme": "light"}}
    assert room_events(response, room_id) == {}
    # Filters by type.
    response, _, _ = await contribute(
        hs, ext, alice, None, {"account_data": {"not_types": ["org.example.*"]}}
    )
    assert global_events(response) == {}
    assert room_events(response, room_id) == {"org.example.room": {"pinned": True}}


async def test_account_data_errors(hs: Harness) -> None:
    alice, alice_token = await hs.register()
    _bob, bob_token = await hs.register()
    room_id = await hs.create_room(alice_token)
    gpath = f"{V3}/user/{alice}/account_data/org.example.x"
    rpath = f"{V3}/user/{alice}/rooms/{room_id}/account_data/org.example.x"
    for method, path, body in (
        ("PUT", gpath, {}),
        ("GET", gpath, None),
        ("PUT", rpath, {}),
        ("GET", rpath, None),
    ):
        status, got = await hs.request(method, path, bob_token, body)
        assert (status, got["errcode"]) == (403, "M_FORBIDDEN"), (method, path)
    for kind in ("m.fully_read", "m.push_rules"):
        for path in (
            f"{V3}/user/{alice}/account_data/{kind}",
            f"{V3}/user/{alice}/rooms/{room_id}/account_data/{kind}",
        ):
            status, got = await hs.request("PUT", path, alice_token, {})
            assert (status, got["errcode"]) == (405, "M_BAD_JSON"), path
    status, got = await hs.request("PUT", gpath, alice_token, raw=b"[1]")
    assert (status, got["errcode"]) == (400, "M_NOT_JSON")
    status, got = await hs.request("PUT", gpath, alice_token, {"big": "x" * 70_000})
    assert (status, got["errcode"]) == (413, "M_TOO_LARGE")
    status, got = await hs.request(
        "PUT", f"{V3}/user/{alice}/rooms/not-a-room/account_data/org.example.x", alice_token, {}
    )
    assert (status, got["errcode"]) == (400, "M_INVALID_PARAM")
    status, got = await hs.request(
        "PUT", f"{V3}/user/{alice}/account_data/{'t' * 300}", alice_token, {}
    )
    assert (status, got["errcode"]) == (400, "M_INVALID_PARAM")


async def test_tags(hs: Harness) -> None:
    alice, alice_token = await hs.register()
    _bob, bob_token = await hs.register()
    room_id = await hs.create_room(alice_token)
    base = f"{V3}/user/{alice}/rooms/{room_id}/tags"
    assert await hs.request("GET", base, alice_token) == (200, {"tags": {}})
    assert (await hs.request("PUT", f"{base}/m.favourite", alice_token, {"order": 0.25}))[0] == 200
    assert (await hs.request("PUT", f"{base}/u.work", alice_token, {}))[0] == 200
    assert await hs.request("GET", base, alice_token) == (
        200,
        {"tags": {"m.favourite": {"order": 0.25}, "u.work": {}}},
    )
    ext = hs.services.account_data
    _, _, since = await contribute(hs, ext, alice, None)
    assert (await hs.request("DELETE", f"{base}/u.work", alice_token))[0] == 200
    # Deleting a missing tag is fine.
    assert (await hs.request("DELETE", f"{base}/u.none", alice_token))[0] == 200
    response, added, _ = await contribute(hs, ext, alice, since)
    assert added
    assert room_events(response, room_id) == {"m.tag": {"tags": {"m.favourite": {"order": 0.25}}}}
    # Errors.
    for order in (2, -0.5, "1", True):
        status, got = await hs.request(
            "PUT", f"{base}/m.lowpriority", alice_token, {"order": order}
        )
        assert (status, got["errcode"]) == (400, "M_INVALID_PARAM"), order
    status, got = await hs.request("PUT", f"{base}/m.lowpriority", bob_token, {})
    assert (status, got["errcode"]) == (403, "M_FORBIDDEN")
    status, got = await hs.request("GET", base, bob_token)
    assert (status, got["errcode"]) == (403, "M_FORBIDDEN")
    status, got = await hs.request("DELETE", f"{base}/m.favourite", bob_token)
    assert (status, got["errcode"]) == (403, "M_FORBIDDEN")
    status, got = await hs.request("PUT", f"{base}/{'t' * 300}", alice_token, {})
    assert (status, got["errcode"]) == (400, "M_INVALID_PARAM")


async def test_ignored_users(hs: Harness) -> None:
    alice, alice_token, bob, _, _ = await shared_room(hs)
    ext = hs.services.account_data
    assert await ext.get_ignored_users(alice) == frozenset()
    path = f"{V3}/user/{alice}/account_data/m.ignored_user_list"
    status, _ = await hs.request("PUT", path, alice_token, {"ignored_users": {bob: {}}})
    assert status == 200
    assert await ext.get_ignored_users(alice) == {bob}
    status, got = await hs.request("PUT", path, alice_token, {"ignored_users": {alice: {}}})
    assert (status, got["errcode"]) == (400, "M_INVALID_PARAM")
    status, got = await hs.request("PUT", path, alice_token, {"ignored_users": [bob]})
    assert (status, got["errcode"]) == (400, "M_BAD_JSON")
    assert (await hs.request("PUT", path, alice_token, {"ignored_users": {}}))[0] == 200
    assert await ext.get_ignored_users(alice) == frozenset()


async def test_an_ignored_list_read_overlapping_its_change_is_not_cached(
    hs: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read of the ignored users that began before the list changed must not put the
    older list back over the new one (/sync would show the ignored user's messages)."""
    alice, alice_token, bob, _, _ = await shared_room(hs)
    hold = hold_first_call(
        monkeypatch,
        hs.services.db,
        "fetch_val",
        lambda sql, *args: "m.ignored_user_list" in args,
    )
    early = asyncio.ensure_future(hs.services.account_data.get_ignored_users(alice))
    await hold.wait_reached()
    path = f"{V3}/user/{alice}/account_data/m.ignored_user_list"
    status, _ = await hs.request("PUT", path, alice_token, {"ignored_users": {bob: {}}})
    assert status == 200
    hold.release()
    assert await asyncio.wait_for(early, 10) == frozenset()
    assert await hs.services.account_data.get_ignored_users(alice) == {bob}

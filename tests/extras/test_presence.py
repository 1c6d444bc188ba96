"""Presence: PUT/GET, visibility to users sharing a room, the extension, timeouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starling.storage import Database
from tests.extras.helpers import V3, contribute, shared_room
from tests.support.harness import Harness, make_harness


def status_path(user_id: str) -> str:
    return f"{V3}/presence/{user_id}/status"


def presence_events(response: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["sender"]: e["content"] for e in response.get("presence", {}).get("events", [])}


async def test_set_and_get_presence(hs: Harness) -> None:
    alice, alice_token, _bob, bob_token, _ = await shared_room(hs)
    status, body = await hs.request("GET", status_path(alice), alice_token)
    assert (status, body) == (200, {"presence": "offline"})
    status, _ = await hs.request(
        "PUT", status_path(alice), alice_token, {"presence": "online", "status_msg": "here"}
    )
    assert status == 200
    status, body = await hs.request("GET", status_path(alice), bob_token)
    assert status == 200
    assert body["presence"] == "online"
    assert body["status_msg"] == "here"
    assert body["currently_active"] is True
    assert 0 <= body["last_active_ago"] < 10_000
    # Without status_msg the message is kept.
    await hs.request("PUT", status_path(alice), alice_token, {"presence": "unavailable"})
    _, body = await hs.request("GET", status_path(alice), bob_token)
    assert (body["presence"], body["status_msg"]) == ("unavailable", "here")


async def test_presence_visible_only_to_users_sharing_a_room(hs: Harness) -> None:
    alice, alice_token, bob, _bob_token, _ = await shared_room(hs)
    carol, carol_token = await hs.register()
    await hs.request("PUT", status_path(alice), alice_token, {"presence": "online"})
    status, body = await hs.request("GET", status_path(alice), carol_token)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")

    presence = hs.services.presence
    response, added, _ = await contribute(hs, presence, bob, None)
    assert added and presence_events(response)[alice]["presence"] == "online"
    response, added, _ = await contribute(hs, presence, carol, None)
    assert not added and alice not in presence_events(response)


async def test_presence_changes_since_token(hs: Harness) -> None:
    alice, alice_token, bob, _bob_token, _ = await shared_room(hs)
    presence = hs.services.presence
    await hs.request("PUT", status_path(alice), alice_token, {"presence": "online"})
    _, _, since = await contribute(hs, presence, bob, None)
    response, added, since = await contribute(hs, presence, bob, since)
    assert not added and response == {}
    # Setting the same state again is not a change.
    await hs.request("PUT", status_path(alice), alice_token, {"presence": "online"})
    response, added, since = await contribute(hs, presence, bob, since)
    assert not added
    await hs.request(
        "PUT", status_path(alice), alice_token, {"presence": "unavailable", "status_msg": "lunch"}
    )
    response, added, since = await contribute(hs, presence, bob, since)
    events = presence_events(response)
    assert added and set(events) == {alice}
    assert events[alice]["presence"] == "unavailable"
    assert events[alice]["status_msg"] == "lunch"
    # The requester sees their own presence too.
    response, _, _ = await contribute(hs, presence, alice, None)
    assert alice in presence_events(response)


async def test_presence_errors(hs: Harness) -> None:
    alice, alice_token, _bob, bob_token, _ = await shared_room(hs)
    status, body = await hs.request("PUT", status_path(alice), bob_token, {"presence": "online"})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    for bad, errcode in (
        ({}, "M_MISSING_PARAM"),
        ({"presence": "busy"}, "M_INVALID_PARAM"),
        ({"presence": 1}, "M_BAD_JSON"),
        ({"presence": "online", "status_msg": 3}, "M_BAD_JSON"),
        ({"presence": "online", "status_msg": "x" * 5000}, "M_INVALID_PARAM"),
    ):
        status, body = await hs.request("PUT", status_path(alice), alice_token, bad)
        assert (status, body["errcode"]) == (400, errcode), bad
    status, body = await hs.request("GET", status_path("not-a-user"), alice_token)
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")


async def test_timeouts_idle_and_offline(hs: Harness) -> None:
    alice, alice_token, _bob, _, _ = await shared_room(hs)
    presence = hs.services.presence
    now = [1_000_000.0]
    presence._clock = lambda: now[0]
    await presence.set_state(alice, "online")
    async with presence.user_syncing(alice, None):
        now[0] += 90  # active window over
        await presence.check_timeouts()
        _, body = await hs.request("GET", status_path(alice), alice_token)
        assert body["presence"] == "online" and body["currently_active"] is False
        now[0] += 5 * 60  # idle
        await presence.check_timeouts()
        _, body = await hs.request("GET", status_path(alice), alice_token)
        assert body["presence"] == "unavailable"
    # Activity brings an idle user back online.
    presence.bump_active(alice)
    await _settle()
    _, body = await hs.request("GET", status_path(alice), alice_token)
    assert (body["presence"], body["currently_active"]) == ("online", True)
    now[0] += 31  # no sync for 30 s
    await presence.check_timeouts()
    _, body = await hs.request("GET", status_path(alice), alice_token)
    assert body["presence"] == "offline"
    # A sync brings them back online.
    await presence.set_presence_from_sync(alice, None)
    _, body = await hs.request("GET", status_path(alice), alice_token)
    assert body["presence"] == "online"
    # set_presence=offline leaves the state alone.
    await presence.set_presence_from_sync(alice, "offline")
    _, body = await hs.request("GET", status_path(alice), alice_token)
    assert body["presence"] == "online"
    await presence.close()


async def _settle() -> None:
    import asyncio

    for _ in range(20):
        await asyncio.sleep(0.01)


async def test_presence_survives_restart(hs: Harness) -> None:
    from starling.presence.service import PresenceService

    alice, alice_token, bob, _, _ = await shared_room(hs)
    await hs.request(
        "PUT", status_path(alice), alice_token, {"presence": "unavailable", "status_msg": "away"}
    )
    old = hs.services.presence
    reloaded = await PresenceService.create(
        old._store, hs.services.membership_store, hs.services.notifier
    )
    got = await reloaded.get_presence(bob, alice)
    assert (got["presence"], got["status_msg"]) == ("unavailable", "away")


async def test_presence_disabled(database: Database, tmp_path: Path) -> None:
    async with make_harness(database, tmp_path, presence={"enabled": False}) as hs:
        alice, alice_token, bob, bob_token, _ = await shared_room(hs)
        status, _ = await hs.request("PUT", status_path(alice), alice_token, {"presence": "online"})
        assert status == 200
        assert await hs.request("GET", status_path(alice), bob_token) == (
            200,
            {"presence": "offline"},
        )
        response, added, _ = await contribute(hs, hs.services.presence, bob, None)
        assert not added and response == {}


async def test_other_servers_users_in_initial_syncs(hs: Harness) -> None:
    """A remote user's presence, as their server told it, is in an initial sync while not
    offline; the first word about a user never heard of is news even when offline."""
    alice, _alice_token, _bob, _bob_token, room_id = await shared_room(hs)
    rob, olga = "@rob:remote.test", "@olga:remote.test"
    for user in (rob, olga):
        await hs.services.room_events.send(
            room_id, user, "m.room.member", {"membership": "join"}, user
        )
    presence = hs.services.presence
    _, _, since = await contribute(hs, presence, alice, None)
    await presence.remote_update(rob, "online", None, 5, True)
    await presence.remote_update(olga, "offline", None, 60_000, False)
    response, _, _ = await contribute(hs, presence, alice, None)
    initial = presence_events(response)
    assert initial[rob]["presence"] == "online" and olga not in initial
    response, _, _ = await contribute(hs, presence, alice, since)
    assert presence_events(response)[olga]["presence"] == "offline"

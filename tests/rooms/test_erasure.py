"""Erased users (deactivated with `erase: true`): their messages stay whole for users who
were joined when they were sent, and are redacted for everyone who joined later
(Synapse's rule; starling/rooms/erasure.py). Both engines."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from starling.rooms.erasure import ErasedUsers
from tests.support.harness import Harness

V3 = "/_matrix/client/v3"


async def test_only_members_at_the_time_see_an_erased_users_messages(hs: Harness) -> None:
    _, admin = await hs.register(admin=True)
    alice, alice_token = await hs.register()
    _, bob = await hs.register()
    _, carol = await hs.register()
    room = await hs.create_room(alice_token, preset="public_chat")
    assert (await hs.request("POST", f"{V3}/rooms/{room}/join", bob, {}))[0] == 200
    status, sent = await hs.request(
        "PUT",
        f"{V3}/rooms/{room}/send/m.room.message/t1",
        alice_token,
        {"msgtype": "m.text", "body": "body1"},
    )
    assert status == 200, sent
    event_id = sent["event_id"]
    assert (await hs.request("POST", f"{V3}/rooms/{room}/join", carol, {}))[0] == 200

    async def content(token: str) -> dict[str, object]:
        status, body = await hs.request("GET", f"{V3}/rooms/{room}/event/{quote(event_id)}", token)
        assert status == 200, body
        got: dict[str, object] = body["content"]
        return got

    assert (await content(carol))["body"] == "body1"  # not erased yet: shared history
    # a deactivation without erase changes nothing
    status, body = await hs.request(
        "POST", f"/_synapse/admin/v1/deactivate/{quote(alice)}", admin, {"erase": False}
    )
    assert status == 200, body
    assert (await content(carol))["body"] == "body1"
    status, body = await hs.request(
        "POST", f"/_synapse/admin/v1/deactivate/{quote(alice)}", admin, {"erase": True}
    )
    assert status == 200, body
    assert (await content(bob))["body"] == "body1"  # joined when it was sent
    assert await content(carol) == {}  # joined later: the redacted form
    status, page = await hs.request("GET", f"{V3}/rooms/{room}/messages?dir=b&limit=20", carol)
    assert status == 200, page
    (message,) = [e for e in page["chunk"] if e["event_id"] == event_id]
    assert message["type"] == "m.room.message" and message["content"] == {}
    status, page = await hs.request("GET", f"{V3}/rooms/{room}/messages?dir=b&limit=20", bob)
    (message,) = [e for e in page["chunk"] if e["event_id"] == event_id]
    assert message["content"]["body"] == "body1"


async def test_a_look_up_overlapping_an_erasure_is_not_cached() -> None:
    """A look-up that began before an erasure here answers what it read, but does not
    cache it: the next read asks again and sees the user erased (not for CACHE_SECONDS
    later)."""
    erased_now: set[str] = set()
    read, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def lookup(user_ids: list[str]) -> set[str]:
        nonlocal calls
        calls += 1
        answer = erased_now & set(user_ids)
        if calls == 1:
            read.set()
            await release.wait()
        return answer

    users = ErasedUsers(lookup, "test.local")
    early = asyncio.ensure_future(users.erased_among(["@alice:test.local"]))
    await asyncio.wait_for(read.wait(), 10)
    erased_now.add("@alice:test.local")
    users.changed("@alice:test.local")
    release.set()
    assert await asyncio.wait_for(early, 10) == set()
    assert await users.erased_among(["@alice:test.local"]) == {"@alice:test.local"}
    assert calls == 2

"""Ignoring users: their messages and invites leave the ignorer's sync; state stays."""

from __future__ import annotations

from tests.support.harness import Harness
from tests.sync.helpers import V3, invite, join, settled_token, sync, timeline_bodies


async def test_ignored_sender_messages_and_invites_are_hidden(hs: Harness) -> None:
    alice, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    room = await hs.create_room(
        atok, preset="public_chat", power_level_content_override={"users": {bob: 50}}
    )
    await join(hs, btok, room)
    path = f"{V3}/user/{alice}/account_data/m.ignored_user_list"
    status, _ = await hs.request("PUT", path, atok, {"ignored_users": {bob: {}}})
    assert status == 200
    since = await settled_token(hs, atok)

    await hs.send_message(btok, room, "from bob")
    await hs.send_message(atok, room, "from alice")
    status, _ = await hs.request(
        "PUT", f"{V3}/rooms/{room}/state/m.room.topic", btok, {"topic": "bob's topic"}
    )
    assert status == 200
    other = await hs.create_room(btok)
    await invite(hs, btok, other, alice)

    body = await sync(hs, atok, since=since)
    joined = body["rooms"]["join"][room]
    assert timeline_bodies(joined) == ["from alice"]
    # State events from ignored users are still sent.
    topics = [e for e in joined["timeline"]["events"] if e["type"] == "m.room.topic"]
    assert [(e["sender"], e["content"]["topic"]) for e in topics] == [(bob, "bob's topic")]
    assert other not in body["rooms"].get("invite", {})

    # Un-ignoring: new messages from Bob arrive again.
    status, _ = await hs.request("PUT", path, atok, {"ignored_users": {}})
    assert status == 200
    since = body["next_batch"]
    await hs.send_message(btok, room, "bob again")
    body = await sync(hs, atok, since=since)
    assert timeline_bodies(body["rooms"]["join"][room]) == ["bob again"]

"""Unread notification counts and highlights, through the UnreadCounts extension."""

from __future__ import annotations

import secrets
from typing import Any

from tests.extras.helpers import V3, contribute, shared_room
from tests.support.harness import Harness


async def counts(hs: Harness, user_id: str, filter: dict[str, Any] | None = None) -> dict[str, Any]:
    response, added, _ = await contribute(hs, hs.services.unread_counts, user_id, None, filter)
    assert not added
    rooms: dict[str, Any] = response.get("rooms", {}).get("join", {})
    return rooms


async def send(
    hs: Harness, token: str, room_id: str, content: dict[str, Any], kind: str = "m.room.message"
) -> str:
    status, body = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/send/{kind}/{secrets.token_hex(8)}", token, content
    )
    assert status == 200, body
    event_id: str = body["event_id"]
    return event_id


async def test_counts_messages_after_read_receipt(hs: Harness) -> None:
    alice, alice_token, bob, bob_token, room_id = await shared_room(hs)
    assert (await counts(hs, bob))[room_id]["unread_notifications"] == {
        "notification_count": 0,
        "highlight_count": 0,
    }
    first = await hs.send_message(alice_token, room_id, "one")
    await hs.send_message(alice_token, room_id, "two")
    await hs.send_message(bob_token, room_id, "my own message does not count")
    await send(hs, alice_token, room_id, {"msgtype": "m.notice", "body": "notices do not"})
    await send(
        hs,
        alice_token,
        room_id,
        {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"},
        "m.room.encrypted",
    )
    # A state event other than an invite does not count.
    status, _ = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/state/m.room.topic", alice_token, {"topic": "t"}
    )
    assert status == 200
    assert (await counts(hs, bob))[room_id]["unread_notifications"]["notification_count"] == 3

    status, _ = await hs.request(
        "POST", f"{V3}/rooms/{room_id}/receipt/m.read/{first}", bob_token, {}
    )
    assert status == 200
    assert (await counts(hs, bob))[room_id]["unread_notifications"]["notification_count"] == 2
    last = await hs.send_message(alice_token, room_id, "three")
    assert (await counts(hs, bob))[room_id]["unread_notifications"]["notification_count"] == 3
    # A private receipt counts as read too.
    await hs.request("POST", f"{V3}/rooms/{room_id}/receipt/m.read.private/{last}", bob_token, {})
    assert (await counts(hs, bob))[room_id]["unread_notifications"]["notification_count"] == 0
    # alice's own messages never count for her.
    assert (await counts(hs, alice))[room_id]["unread_notifications"]["notification_count"] == 1


async def test_highlights(hs: Harness) -> None:
    alice, alice_token, bob, bob_token, room_id = await shared_room(hs)
    bob_localpart = bob[1:].split(":")[0]
    await hs.send_message(alice_token, room_id, "nothing for bob")
    await hs.send_message(alice_token, room_id, f"hey {bob_localpart}, look")
    await send(
        hs,
        alice_token,
        room_id,
        {"msgtype": "m.text", "body": "pill", "m.mentions": {"user_ids": [bob]}},
    )
    # m.mentions present but not naming bob: his name in the body does not highlight.
    await send(
        hs,
        alice_token,
        room_id,
        {"msgtype": "m.text", "body": f"{bob_localpart}!", "m.mentions": {}},
    )
    # alice created the room, so she may @room.
    await send(
        hs, alice_token, room_id, {"msgtype": "m.text", "body": "all", "m.mentions": {"room": True}}
    )
    got = (await counts(hs, bob))[room_id]["unread_notifications"]
    # The pill and the @room highlight. The localpart in the body alone does not: spec
    # v1.17 removed the body-based default rules (.m.rule.contains_user_name and friends).
    assert got == {"notification_count": 5, "highlight_count": 2}
    # bob has no power for @room: alice gets no highlight from it.
    await send(
        hs, bob_token, room_id, {"msgtype": "m.text", "body": "all", "m.mentions": {"room": True}}
    )
    got = (await counts(hs, alice))[room_id]["unread_notifications"]
    assert got == {"notification_count": 1, "highlight_count": 0}


async def test_display_name_highlights(hs: Harness) -> None:
    _alice, alice_token, bob, bob_token, room_id = await shared_room(hs)
    status, _ = await hs.request(
        "PUT", f"{V3}/profile/{bob}/displayname", bob_token, {"displayname": "Robert Tables"}
    )
    assert status == 200
    # The spec's defaults no longer look for display names in bodies (v1.17): bob opts in
    # with his own rule using the contains_display_name condition.
    status, _ = await hs.request(
        "PUT",
        f"{V3}/pushrules/global/override/my-name",
        bob_token,
        {
            "conditions": [{"kind": "contains_display_name"}],
            "actions": ["notify", {"set_tweak": "highlight"}],
        },
    )
    assert status == 200
    await hs.send_message(alice_token, room_id, "ask robert tables about it")
    await hs.send_message(alice_token, room_id, "Robert Tablesque is someone else")
    got = (await counts(hs, bob))[room_id]["unread_notifications"]
    assert got == {"notification_count": 2, "highlight_count": 1}


async def test_invites_count_and_events_before_join_do_not(hs: Harness) -> None:
    _alice, alice_token = await hs.register()
    bob, bob_token = await hs.register()
    room_id = await hs.create_room(alice_token, preset="public_chat")
    await hs.send_message(alice_token, room_id, "before bob")
    status, _ = await hs.request("POST", f"{V3}/join/{room_id}", bob_token, {})
    assert status == 200
    assert (await counts(hs, bob))[room_id]["unread_notifications"]["notification_count"] == 0
    await hs.send_message(alice_token, room_id, "after bob")
    assert (await counts(hs, bob))[room_id]["unread_notifications"]["notification_count"] == 1


async def test_thread_counts_when_requested(hs: Harness) -> None:
    _alice, alice_token, bob, bob_token, room_id = await shared_room(hs)
    root = await hs.send_message(alice_token, room_id, "root")
    reply = await send(
        hs,
        alice_token,
        room_id,
        {
            "msgtype": "m.text",
            "body": "in thread",
            "m.relates_to": {"rel_type": "m.thread", "event_id": root},
        },
    )
    flat = (await counts(hs, bob))[room_id]
    assert flat["unread_notifications"]["notification_count"] == 2
    assert "unread_thread_notifications" not in flat
    threaded_filter = {"room": {"timeline": {"unread_thread_notifications": True}}}
    threaded = (await counts(hs, bob, threaded_filter))[room_id]
    assert threaded["unread_notifications"]["notification_count"] == 1
    assert threaded["unread_thread_notifications"] == {
        root: {"notification_count": 1, "highlight_count": 0}
    }
    # Reading the thread clears only the thread.
    await hs.request(
        "POST", f"{V3}/rooms/{room_id}/receipt/m.read/{reply}", bob_token, {"thread_id": root}
    )
    threaded = (await counts(hs, bob, threaded_filter))[room_id]
    assert threaded["unread_notifications"]["notification_count"] == 1
    assert "unread_thread_notifications" not in threaded


async def test_incremental_fills_only_rooms_in_the_response(hs: Harness) -> None:
    _alice, alice_token, bob, bob_token, room_id = await shared_room(hs)
    other = await hs.create_room(bob_token)
    ext = hs.services.unread_counts
    since = ext.current_position()
    await hs.send_message(alice_token, room_id, "hi")
    assert ext.current_position() > since
    from starling.sync.extension import SyncContext

    ctx = SyncContext(
        user_id=bob,
        device_id="DEV",
        since=since,
        upto=ext.current_position(),
        joined_rooms=frozenset({room_id, other}),
    )
    response: dict[str, Any] = {"rooms": {"join": {room_id: {"timeline": {"events": []}}}}}
    assert not await ext.contribute(ctx, response)
    assert set(response["rooms"]["join"]) == {room_id}
    assert response["rooms"]["join"][room_id]["unread_notifications"]["notification_count"] == 1


async def test_count_is_capped(hs: Harness) -> None:
    from starling.receipts import unread

    _alice, alice_token, bob, _, room_id = await shared_room(hs)
    old = unread.UNREAD_CAP
    unread.UNREAD_CAP = 3
    try:
        for i in range(5):
            await hs.send_message(alice_token, room_id, f"m{i}")
        got = (await counts(hs, bob))[room_id]["unread_notifications"]
        assert got["notification_count"] == 3
    finally:
        unread.UNREAD_CAP = old


async def test_remembered_counts_follow_new_events_redactions_and_rule_changes(
    hs: Harness,
) -> None:
    """Counts are evaluated incrementally between syncs: what was remembered must
    still change with new events, redactions, receipts and the user's rules."""
    _alice, alice_token, bob, bob_token, room_id = await shared_room(hs)

    async def count() -> int:
        got: int = (await counts(hs, bob))[room_id]["unread_notifications"]["notification_count"]
        return got

    first = await hs.send_message(alice_token, room_id, "one")
    assert await count() == 1
    second = await hs.send_message(alice_token, room_id, "two")
    assert await count() == 2
    # A redaction of a counted message (here by alice, the room's creator) uncounts it.
    status, _ = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/redact/{first}/{secrets.token_hex(8)}", alice_token, {}
    )
    assert status == 200
    assert await count() == 1
    # A rule that silences alice applies to what was already evaluated too.
    status, _ = await hs.request(
        "PUT",
        f"{V3}/pushrules/global/sender/{_alice}",
        bob_token,
        {"actions": []},
    )
    assert status == 200
    assert await count() == 0
    status, _ = await hs.request("DELETE", f"{V3}/pushrules/global/sender/{_alice}", bob_token)
    assert status == 200
    assert await count() == 1
    await hs.send_message(alice_token, room_id, "three")
    assert await count() == 2
    status, _ = await hs.request(
        "POST", f"{V3}/rooms/{room_id}/receipt/m.read/{second}", bob_token, {}
    )
    assert status == 200
    assert await count() == 1

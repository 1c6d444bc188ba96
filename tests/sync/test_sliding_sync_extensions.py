"""Sliding sync's extensions: to_device, e2ee, account_data, receipts, typing (both
engines), and a long-poll woken by an extension's stream."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.e2ee.support import alice_and_bob_in_a_room, new_device, upload_ok
from tests.support.harness import Harness
from tests.sync.helpers import V3, join
from tests.sync.test_sliding_sync import all_rooms, ss


def with_ext(**extensions: Any) -> dict[str, Any]:
    return {**all_rooms(), "extensions": extensions}


async def test_to_device_and_e2ee(hs: Harness) -> None:
    alice, bob, _ = await alice_and_bob_in_a_room(hs)
    ext = {"to_device": {"enabled": True}, "e2ee": {"enabled": True}}
    first = await ss(hs, bob.token, with_ext(**ext))
    e2ee = first["extensions"]["e2ee"]
    assert e2ee["device_one_time_keys_count"] == {"signed_curve25519": 0}
    assert e2ee["device_unused_fallback_key_types"] == []
    assert "device_lists" not in e2ee
    assert first["extensions"]["to_device"]["events"] == []
    alice_first = await ss(hs, alice.token, with_ext(**ext))

    await upload_ok(
        hs,
        bob,
        device_keys=bob.device_keys(),
        one_time_keys=bob.one_time_keys(4),
        fallback_keys=bob.fallback_key(),
    )
    status, _ = await hs.request(
        "PUT",
        f"{V3}/sendToDevice/m.room_key_request/t1",
        alice.token,
        {"messages": {bob.user_id: {"DEV": {"hello": "bob"}}}},
    )
    assert status == 200
    since = first["extensions"]["to_device"]["next_batch"]
    ext["to_device"]["since"] = since
    second = await ss(hs, bob.token, with_ext(**ext), pos=first["pos"])
    to_device = second["extensions"]["to_device"]
    assert to_device["events"] == [
        {"content": {"hello": "bob"}, "sender": alice.user_id, "type": "m.room_key_request"}
    ]
    assert to_device["next_batch"] != since
    e2ee = second["extensions"]["e2ee"]
    assert e2ee["device_one_time_keys_count"] == {"signed_curve25519": 4}
    assert e2ee["device_unused_fallback_key_types"] == ["signed_curve25519"]
    ext["to_device"]["since"] = to_device["next_batch"]
    third = await ss(hs, bob.token, with_ext(**ext), pos=second["pos"])
    assert third["extensions"]["to_device"]["events"] == []
    # Delivered once: acknowledged by the next since.
    assert await hs.services.db.fetch_val("SELECT COUNT(*) FROM to_device_inbox") == 0

    await hs.services.e2ee.device_lists.flush()
    alice_next = await ss(hs, alice.token, with_ext(**ext), pos=alice_first["pos"])
    assert bob.user_id in alice_next["extensions"]["e2ee"]["device_lists"]["changed"]


async def test_account_data_receipts_and_typing(hs: Harness) -> None:
    alice, atok = await hs.register("alice")
    _, btok = await hs.register("bob")
    room = await hs.create_room(atok, preset="public_chat")
    await join(hs, btok, room)
    event_id = await hs.send_message(btok, room, "read me")
    status, _ = await hs.request(
        "PUT", f"{V3}/user/{alice}/account_data/org.example.global", atok, {"a": 1}
    )
    assert status == 200
    status, _ = await hs.request(
        "PUT", f"{V3}/user/{alice}/rooms/{room}/account_data/org.example.room", atok, {"b": 2}
    )
    assert status == 200
    status, _ = await hs.request("POST", f"{V3}/rooms/{room}/receipt/m.read/{event_id}", btok, {})
    assert status == 200
    ext = {
        "account_data": {"enabled": True},
        "receipts": {"enabled": True},
        "typing": {"enabled": True},
    }
    first = await ss(hs, atok, with_ext(**ext))
    exts = first["extensions"]
    assert {"type": "org.example.global", "content": {"a": 1}} in exts["account_data"]["global"]
    assert exts["account_data"]["rooms"][room] == [
        {"type": "org.example.room", "content": {"b": 2}}
    ]
    receipt = exts["receipts"]["rooms"][room]
    assert receipt["type"] == "m.receipt"
    assert f"@bob:{hs.server_name}" in receipt["content"][event_id]["m.read"]
    assert exts["typing"]["rooms"] == {}

    status, _ = await hs.request(
        "PUT",
        f"{V3}/rooms/{room}/typing/@bob:{hs.server_name}",
        btok,
        {"typing": True, "timeout": 30000},
    )
    assert status == 200
    second = await ss(hs, atok, with_ext(**ext), pos=first["pos"])
    exts = second["extensions"]
    assert exts["typing"]["rooms"][room]["content"]["user_ids"] == [f"@bob:{hs.server_name}"]
    # Only changes: the receipt and account data already sent are not repeated.
    assert exts["receipts"]["rooms"] == {}
    assert exts["account_data"] == {"global": [], "rooms": {}}


async def test_long_poll_woken_by_to_device(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    bob = await new_device(hs, "bob")
    ext = {"to_device": {"enabled": True}}
    first = await ss(hs, bob.token, with_ext(**ext))
    ext["to_device"]["since"] = first["extensions"]["to_device"]["next_batch"]
    settled = await ss(hs, bob.token, with_ext(**ext), pos=first["pos"])

    async def later() -> None:
        await asyncio.sleep(0.2)
        status, _ = await hs.request(
            "PUT",
            f"{V3}/sendToDevice/m.test/t1",
            alice.token,
            {"messages": {bob.user_id: {"DEV": {"x": 1}}}},
        )
        assert status == 200

    task = asyncio.create_task(later())
    woke = await asyncio.wait_for(
        ss(hs, bob.token, with_ext(**ext), pos=settled["pos"], timeout=20000), timeout=15
    )
    await task
    assert woke["extensions"]["to_device"]["events"][0]["content"] == {"x": 1}


async def test_room_back_in_range_gets_receipts_it_missed(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    room_a = await hs.create_room(atok, preset="public_chat")
    room_b = await hs.create_room(atok, preset="public_chat")
    await join(hs, btok, room_b)
    event_b = await hs.send_message(atok, room_b, "in b")
    body = {**all_rooms(range_end=0), "extensions": {"receipts": {"enabled": True}}}
    first = await ss(hs, atok, body)
    assert first["lists"]["all"]["ops"][0]["room_ids"] == [room_b]
    await hs.send_message(atok, room_a, "a moves up")
    status, _ = await hs.request("POST", f"{V3}/rooms/{room_b}/receipt/m.read/{event_b}", btok, {})
    assert status == 200
    second = await ss(hs, atok, body, pos=first["pos"])
    assert second["lists"]["all"]["ops"][0]["room_ids"] == [room_a]
    assert room_b not in second["extensions"]["receipts"]["rooms"]
    await hs.send_message(atok, room_b, "b is back")
    third = await ss(hs, atok, body, pos=second["pos"])
    assert third["lists"]["all"]["ops"][0]["room_ids"] == [room_b]
    receipt = third["extensions"]["receipts"]["rooms"][room_b]
    assert bob in receipt["content"][event_b]["m.read"]


async def test_polling_marks_the_user_online(hs: Harness) -> None:
    alice, tok = await hs.register("alice")
    await ss(hs, tok, all_rooms())
    status, body = await hs.request("GET", f"{V3}/presence/{alice}/status", tok)
    assert status == 200
    assert body["presence"] == "online"


async def thread_reply(hs: Harness, token: str, room: str, root: str, body: str) -> str:
    status, resp = await hs.request(
        "PUT",
        f"{V3}/rooms/{room}/send/m.room.message/{body.replace(' ', '_')}",
        token,
        {
            "msgtype": "m.text",
            "body": body,
            "m.relates_to": {"rel_type": "m.thread", "event_id": root},
        },
    )
    assert status == 200, resp
    return str(resp["event_id"])


async def test_threads_extension_and_thread_updates(hs: Harness) -> None:
    """MSC4360 under its unstable name: updates per thread (not per reply), roots with
    their latest reply bundled, prev_batch for threads with several replies (usable with
    /relations), threads already in a timeline left out without include_roots, only the
    user's joined rooms, and /thread_updates paging the rest."""
    name = "io.element.msc4360.threads"
    _, atok = await hs.register("alice")
    _, btok = await hs.register("bob")
    room = await hs.create_room(atok, preset="public_chat")
    await join(hs, btok, room)
    other = await hs.create_room(atok, preset="public_chat")  # bob is not in it
    root = await hs.send_message(atok, room, "root")
    quiet_root = await hs.send_message(atok, room, "quiet root")
    await thread_reply(hs, atok, room, quiet_root, "quiet reply")
    await thread_reply(hs, atok, room, root, "reply 1")
    latest = await thread_reply(hs, atok, room, root, "reply 2")
    other_root = await hs.send_message(atok, other, "elsewhere")
    await thread_reply(hs, atok, other, other_root, "not for bob")

    body = {
        "lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 0, "required_state": []}},
        "extensions": {name: {"enabled": True, "include_roots": True}},
    }
    first = await ss(hs, btok, body)
    updates = first["extensions"][name]["updates"]
    assert set(updates) == {room} and set(updates[room]) == {root, quiet_root}
    shown = updates[room][root]["thread_root"]
    assert shown["event_id"] == root
    assert shown["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"] == latest
    assert "prev_batch" not in updates[room][quiet_root]  # one reply only
    # prev_batch continues in /relations with dir=b, before the latest reply.
    status, rel = await hs.request(
        "GET",
        f"{V3.replace('v3', 'v1')}/rooms/{room}/relations/{root}/m.thread",
        btok,
        params={"dir": "b", "from": updates[room][root]["prev_batch"]},
    )
    assert status == 200, rel
    assert [e["content"]["body"] for e in rel["chunk"]] == ["reply 1"]

    # Nothing new: the extension is left out.
    quiet = await ss(hs, btok, body, pos=first["pos"], timeout=0)
    assert name not in quiet["extensions"]

    # Without include_roots, a reply the timeline carries is not repeated.
    body_tl = {
        "lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 5, "required_state": []}},
        "extensions": {name: {"enabled": True}},
    }
    await thread_reply(hs, atok, room, quiet_root, "seen in timeline")
    seen = await ss(hs, btok, body_tl, pos=quiet["pos"])
    assert name not in seen["extensions"], seen["extensions"]

    # A limit of 1 leaves a prev_batch for /thread_updates.
    body_one = {**body, "extensions": {name: {"enabled": True, "limit": 1}}}
    one = await ss(hs, btok, body_one)
    assert len(one["extensions"][name]["updates"][room]) == 1
    token = one["extensions"][name]["prev_batch"]
    path = "/_matrix/client/unstable/io.element.msc4360/thread_updates"
    status, page = await hs.request("GET", path, btok, params={"dir": "b", "from": token})
    assert status == 200, page
    assert list(page["chunk"][room]) == [root]
    assert page["chunk"][room][root]["thread_root"]["event_id"] == root
    assert "next_batch" not in page
    status, err = await hs.request("GET", path, btok, params={"dir": "f"})
    assert status == 400 and err["errcode"] == "M_INVALID_PARAM"
    status, err = await hs.request("GET", path, btok, params={"dir": "b", "from": "junk"})
    assert status == 400

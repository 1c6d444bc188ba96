"""Admin API, history: purge history (docs/admin_api/purge_history_api.md) and redacting a
user's events (user_admin_api.md), Synapse's paths and shapes, both engines."""

from __future__ import annotations

import asyncio
from typing import Any

from starling.rooms.persister import EventContext
from starling.rooms.state_calculator import StateSnapshot
from tests.support.harness import Harness

V1 = "/_synapse/admin/v1"
C = "/_matrix/client/v3"


async def _count(hs: Harness, sql: str, *args: Any) -> int:
    return int(await hs.services.db.fetch_val(sql, *args) or 0)


async def _messages(hs: Harness, token: str, room_id: str) -> list[dict[str, Any]]:
    status, resp = await hs.request(
        "GET", f"{C}/rooms/{room_id}/messages", token, params={"dir": "b", "limit": "100"}
    )
    assert status == 200, resp
    chunk: list[dict[str, Any]] = resp["chunk"]
    return chunk


async def test_history_endpoints_refuse_non_admins(hs: Harness) -> None:
    _, plain = await hs.register("plain")
    for method, path in [
        ("POST", f"{V1}/purge_history/!r:test.local"),
        ("POST", f"{V1}/purge_history/!r:test.local/$e"),
        ("GET", f"{V1}/purge_history_status/x"),
        ("POST", f"{V1}/user/@a:test.local/redact"),
        ("GET", f"{V1}/user/redact_status/x"),
        ("GET", f"{V1}/scheduled_tasks"),
    ]:
        status, resp = await hs.request(method, path, plain, {"rooms": []})
        assert (status, resp["errcode"]) == (403, "M_FORBIDDEN"), path


async def test_purge_history(hs: Harness, admin: str) -> None:
    alice, alice_token = await hs.register("alice")
    room = await hs.create_room(alice_token, name="Old")
    other = await hs.create_room(alice_token)
    bob, bob_token = await hs.register("bob")
    for who, what, body in [(alice_token, "invite", {"user_id": bob}), (bob_token, "join", {})]:
        status, _ = await hs.request("POST", f"{C}/rooms/{room}/{what}", who, body)
        assert status == 200
    old = [await hs.send_message(alice_token, room, f"old {i}") for i in range(3)]
    status, _ = await hs.request(
        "PUT",
        f"{C}/rooms/{room}/send/m.reaction/t1",
        alice_token,
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": old[0], "key": "x"}},
    )
    assert status == 200
    cut = await hs.send_message(alice_token, room, "cut")
    await hs.send_message(alice_token, room, "new")

    # Bad input: Matrix errors, nothing started.
    for path, body, want in [
        (f"{V1}/purge_history/!nope:test.local/{cut}", {}, (404, "M_NOT_FOUND")),
        (f"{V1}/purge_history/{other}/{cut}", {}, (400, "M_UNKNOWN")),
        (f"{V1}/purge_history/{room}/$missing", {}, (404, "M_NOT_FOUND")),
        (f"{V1}/purge_history/{room}", {}, (400, "M_UNKNOWN")),
        (f"{V1}/purge_history/{room}", {"purge_up_to_ts": "soon"}, (400, "M_INVALID_PARAM")),
        (f"{V1}/purge_history/{room}", {"purge_up_to_ts": 1}, (404, "M_NOT_FOUND")),
        (f"{V1}/purge_history/{room}/{cut}", {"delete_local_events": "yes"}, (400, "M_BAD_JSON")),
        (f"{V1}/purge_history/{room}", [], (400, "M_NOT_JSON")),
    ]:
        status, resp = await hs.request("POST", path, admin, body)
        assert (status, resp.get("errcode")) == want, (path, body, resp)
    status, resp = await hs.request("GET", f"{V1}/purge_history_status/nope", admin)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")

    # Bob has read nothing yet: every message of Alice's counts.
    status, resp = await hs.request("GET", f"{C}/sync", bob_token)
    assert resp["rooms"]["join"][room]["unread_notifications"]["notification_count"] == 5

    # By default this server's users' events stay stored, but as outliers: out of every
    # timeline (/messages, /sync, unread counts, search, relations), still readable alone.
    messages = "SELECT COUNT(*) FROM events WHERE room_id = ? AND state_key IS NULL"
    outliers = messages + " AND outlier"
    before = await _count(hs, messages, room)
    status, resp = await hs.request("POST", f"{V1}/purge_history/{room}/{cut}", admin, {})
    assert status == 200, resp
    await hs.services.admin_history.settle()
    status, resp = await hs.request("GET", f"{V1}/purge_history_status/{resp['purge_id']}", admin)
    assert (status, resp) == (200, {"status": "complete"})
    assert await _count(hs, messages, room) == before
    assert await _count(hs, outliers, room) == 4  # the three old messages and the reaction
    # State stays too, as outliers: the current state is whole, the timeline starts at
    # the cut-off.
    state = "SELECT COUNT(*) FROM events WHERE room_id = ? AND state_key IS NOT NULL"
    state_before = await _count(hs, state, room)
    assert await _count(hs, state + " AND NOT outlier", room) == 0
    chunk = await _messages(hs, alice_token, room)
    assert [e["content"].get("body") for e in chunk] == ["new", "cut"]
    status, resp = await hs.request("GET", f"{C}/sync", alice_token)
    timeline = resp["rooms"]["join"][room]["timeline"]["events"]
    assert not {e["event_id"] for e in timeline} & set(old)
    assert any(e["type"] == "m.room.name" for e in resp["rooms"]["join"][room]["state"]["events"])
    status, resp = await hs.request("GET", f"{C}/sync", bob_token)
    assert resp["rooms"]["join"][room]["unread_notifications"]["notification_count"] == 2
    status, resp = await hs.request(
        "POST",
        f"{C}/search",
        alice_token,
        {"search_categories": {"room_events": {"search_term": "old"}}},
    )
    assert status == 200 and resp["search_categories"]["room_events"]["count"] == 0, resp
    status, resp = await hs.request(
        "GET", f"/_matrix/client/v1/rooms/{room}/relations/{old[0]}", alice_token
    )
    assert (status, resp["chunk"]) == (200, []), resp
    status, resp = await hs.request("GET", f"{C}/rooms/{room}/event/{old[1]}", alice_token)
    assert (status, resp["content"]["body"]) == (200, "old 1"), resp
    # They keep their state, so history visibility still decides who reads them (a
    # remote server backfilling from us included).
    state_at = await hs.services.event_store.get_state_ids_before(old[1])
    assert state_at is not None and ("m.room.name", "") in state_at
    # The event the cut-off follows is where backfill starts; backfilled again (as
    # another server in the room would send it), it is back in the history.
    store = hs.services.event_store
    (reaction,) = await store.get_backward_extremities(room)
    found = await store.get_event(reaction)
    assert found is not None and found.meta.outlier
    before_reaction = await store.get_state_ids_before(reaction)
    assert before_reaction is not None
    async with hs.services.room_locks.lock(room):
        position = await hs.services.persister.persist(
            found.event, EventContext(StateSnapshot(before_reaction, None), backfilled=True)
        )
    assert position is not None and position < 0
    assert await store.get_backward_extremities(room) == [old[2]]
    chunk = await _messages(hs, alice_token, room)
    assert [e["event_id"] for e in chunk][2:] == [reaction]

    status, resp = await hs.request(
        "POST",
        f"{V1}/purge_history/{room}",
        admin,
        {"purge_up_to_event_id": cut, "delete_local_events": True},
    )
    assert status == 200, resp
    await hs.services.admin_history.settle()
    status, resp = await hs.request("GET", f"{V1}/purge_history_status/{resp['purge_id']}", admin)
    assert resp == {"status": "complete"}
    # The rows are gone: events, relations, search entries, graph edges; state stays.
    assert await _count(hs, messages, room) == before - 4
    assert await _count(hs, state, room) == state_before
    ids = hs.services.db.sql.array(old)
    for table in ("events", "event_search", "event_auth"):
        sql = f"SELECT COUNT(*) FROM {table} WHERE {hs.services.db.sql.in_array('event_id')}"
        assert await _count(hs, sql, ids) == 0, table
    assert await _count(hs, "SELECT COUNT(*) FROM event_relations WHERE room_id = ?", room) == 0
    assert await hs.services.event_store.get_event(old[0]) is None
    bodies = [e["content"].get("body") for e in await _messages(hs, alice_token, room)]
    assert bodies[:2] == ["new", "cut"] and "old 0" not in bodies
    # The room still works, and the current state is whole.
    await hs.send_message(alice_token, room, "after")
    status, resp = await hs.request("GET", f"{C}/rooms/{room}/state/m.room.name/", alice_token)
    assert (status, resp) == (200, {"name": "Old"})
    status, resp = await hs.request("GET", f"{C}/sync", alice_token)
    assert status == 200 and room in resp["rooms"]["join"]

    # The newest event cannot be a cut-off beyond every forward extremity.
    status, resp = await hs.request(
        "POST", f"{V1}/purge_history/{room}", admin, {"purge_up_to_ts": 2**52}
    )
    assert status == 200  # the newest event before that time stays: nothing to refuse
    await hs.services.admin_history.settle()
    newest = (await _messages(hs, alice_token, room))[0]
    assert newest["content"].get("body") == "after"

    # Every purge is a scheduled task (Synapse's listing), filtered as asked.
    status, resp = await hs.request(
        "GET", f"{V1}/scheduled_tasks", admin, params={"action_name": "purge_history"}
    )
    tasks = resp["scheduled_tasks"]
    assert status == 200 and len(tasks) == 3
    assert {(t["status"], t["resource_id"], t["error"]) for t in tasks} == {
        ("complete", room, None)
    }
    assert sorted(t["result"]["deleted_events"] for t in tasks) == [0, 0, 4]
    status, resp = await hs.request(
        "GET", f"{V1}/scheduled_tasks", admin, params={"resource_id": other}
    )
    assert resp == {"scheduled_tasks": []}
    status, resp = await hs.request("GET", f"{V1}/scheduled_tasks", admin, params={"status": "x"})
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")
    status, resp = await hs.request(
        "GET", f"{V1}/audit_log", admin, params={"target": room, "limit": "50"}
    )
    assert any("/purge_history/" in e["path"] for e in resp["entries"]), resp
    assert alice


async def test_redact_user_events(hs: Harness, admin: str) -> None:
    root = f"@root:{hs.server_name}"
    bob, bob_token = await hs.register("bob")
    _, alice_token = await hs.register("alice")
    admin_room = await hs.create_room(admin, preset="public_chat")
    alice_room = await hs.create_room(alice_token, preset="public_chat")
    for room in (admin_room, alice_room):
        status, _ = await hs.request("POST", f"{C}/join/{room}", bob_token, {})
        assert status == 200
    spam = [await hs.send_message(bob_token, r, "spam") for r in (admin_room, alice_room)]
    keep = await hs.send_message(alice_token, alice_room, "hello")

    for body, want in [
        ({}, (400, "M_MISSING_PARAM")),
        ({"rooms": "all"}, (400, "M_BAD_JSON")),
        ({"rooms": [], "limit": 0}, (400, "M_INVALID_PARAM")),
        ({"rooms": [], "limit": True}, (400, "M_INVALID_PARAM")),
        ({"rooms": [], "reason": 5}, (400, "M_BAD_JSON")),
        ({"rooms": ["!x:y"] * 1001}, (400, "M_BAD_JSON")),
    ]:
        status, resp = await hs.request("POST", f"{V1}/user/{bob}/redact", admin, body)
        assert (status, resp["errcode"]) == want, body
    status, resp = await hs.request("POST", f"{V1}/user/not-a-user/redact", admin, {"rooms": []})
    assert status == 400
    status, resp = await hs.request("GET", f"{V1}/user/redact_status/nope", admin)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")

    # Bob is local: he redacts his own events (every room he is in), with the reason.
    status, resp = await hs.request(
        "POST", f"{V1}/user/{bob}/redact", admin, {"rooms": [], "reason": "spam"}
    )
    assert status == 200, resp
    await hs.services.admin_history.settle()
    status, resp = await hs.request("GET", f"{V1}/user/redact_status/{resp['redact_id']}", admin)
    assert (status, resp) == (200, {"status": "complete", "failed_redactions": {}})
    for event_id in spam:
        found = await hs.services.event_store.get_event(event_id)
        assert found is not None and found.meta.redacted_by is not None
        redaction = await hs.services.event_store.get_event(found.meta.redacted_by)
        assert redaction is not None
        assert (redaction.event.sender, redaction.event.content.get("reason")) == (bob, "spam")
    untouched = await hs.services.event_store.get_event(keep)
    assert untouched is not None and untouched.meta.redacted_by is None

    # Alice's message, redacted by the admin: allowed where the admin may redact, and
    # refused (listed in failed_redactions) where the room's power levels say no.
    status, _ = await hs.request("POST", f"{C}/join/{admin_room}", alice_token, {})
    assert status == 200
    await hs.send_message(alice_token, admin_room, "mine")
    status, _ = await hs.request("POST", f"{C}/join/{alice_room}", admin, {})
    assert status == 200
    status, resp = await hs.request(
        "POST",
        f"{V1}/user/@alice:{hs.server_name}/redact",
        admin,
        {"rooms": [admin_room, alice_room], "use_admin": True, "limit": 5},
    )
    assert status == 200
    await hs.services.admin_history.settle()
    status, resp = await hs.request("GET", f"{V1}/user/redact_status/{resp['redact_id']}", admin)
    assert resp["status"] == "complete"
    failed = resp["failed_redactions"]
    assert set(failed) >= {keep} and len(failed) == 2, failed  # alice's room: message, join
    status, resp = await hs.request("GET", f"{V1}/audit_log", admin, params={"target": bob})
    assert any(e["path"].endswith("/redact") and e["admin"] == root for e in resp["entries"])


async def test_purge_history_by_ts(hs: Harness, admin: str) -> None:
    """The cut-off for a time is the first event sent at or after it (Synapse's: the
    event at the first stream position received then): every event before goes."""
    _, token = await hs.register("carol")
    room = await hs.create_room(token, name="By time")
    sent = []
    for i in range(3):
        sent.append(await hs.send_message(token, room, f"m{i}"))
        await asyncio.sleep(0.01)
    ts = int(
        await hs.services.db.fetch_val(
            "SELECT origin_server_ts FROM events WHERE event_id = ?", sent[1]
        )
    )
    status, resp = await hs.request(
        "POST", f"{V1}/purge_history/{room}", admin, {"purge_up_to_ts": ts}
    )
    assert status == 200, resp
    await hs.services.admin_history.settle()
    assert [e["content"].get("body") for e in await _messages(hs, token, room)] == ["m2", "m1"]
    # Past every event: the newest one is the cut-off, and stays.
    status, resp = await hs.request(
        "POST", f"{V1}/purge_history/{room}", admin, {"purge_up_to_ts": ts + 10**9}
    )
    assert status == 200, resp
    await hs.services.admin_history.settle()
    assert [e["content"].get("body") for e in await _messages(hs, token, room)] == ["m2"]


async def test_purged_events_leave_notifications(hs: Harness, admin: str) -> None:
    """Purged events, deleted or kept as outliers, are no longer in /notifications."""
    evaluator = hs.services.push_evaluator
    await evaluator.start()
    try:
        _, alice_token = await hs.register("alice")
        _bob, bob_token = await hs.register("bob")
        room = await hs.create_room(alice_token, preset="public_chat")
        status, _ = await hs.request("POST", f"{C}/join/{room}", bob_token, {})
        assert status == 200
        old = [await hs.send_message(alice_token, room, f"old {i}") for i in range(2)]
        cut = await hs.send_message(alice_token, room, "cut")
        new = await hs.send_message(alice_token, room, "new")

        async def listed() -> list[str]:
            await evaluator.caught_up()
            status, resp = await hs.request("GET", f"{C}/notifications", bob_token)
            assert status == 200, resp
            return [n["event"]["event_id"] for n in resp["notifications"]]

        assert await listed() == [new, cut, *reversed(old)]
        status, resp = await hs.request("POST", f"{V1}/purge_history/{room}/{cut}", admin, {})
        assert status == 200, resp
        await hs.services.admin_history.settle()
        # Alice is local, so her old messages are kept as outliers, not deleted.
        assert await _count(hs, "SELECT COUNT(*) FROM events WHERE outlier AND room_id = ?", room)
        assert await listed() == [new, cut]
    finally:
        await evaluator.stop()

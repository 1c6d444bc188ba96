"""Bundled aggregations in unsigned.m.relations: threads, edits, references; redactions,
malformed relations and ignored users; every read path that formats events."""

from __future__ import annotations

from typing import Any

import pytest

from tests.relations.helpers import (
    V3,
    edit,
    get_event,
    react,
    redact,
    reference,
    relations,
    relations_of,
    reply_in_thread,
    send,
    text,
    threads,
)
from tests.support.harness import Harness


async def _room_with(hs: Harness, *names: str) -> tuple[str, list[tuple[str, str]]]:
    users = [await hs.register(n) for n in names]
    room_id = await hs.create_room(users[0][1], preset="public_chat")
    for _, tok in users[1:]:
        status, body = await hs.request("POST", f"{V3}/join/{room_id}", tok, {})
        assert status == 200, body
    return room_id, users


async def test_thread_summary_count_latest_and_participation(hs: Harness) -> None:
    room_id, [(_, atok), (_, btok), (_, ctok)] = await _room_with(hs, "alice", "bob", "carol")
    root = await hs.send_message(atok, room_id, "root")
    await reply_in_thread(hs, btok, room_id, root, "r1")
    last = await reply_in_thread(hs, btok, room_id, root, "r2")
    latest_edit = await edit(hs, btok, room_id, last, "r2 edited")

    for tok, participated in ((atok, True), (btok, True), (ctok, False)):
        thread = relations_of(await get_event(hs, tok, room_id, root))["m.thread"]
        assert thread["count"] == 2
        assert thread["current_user_participated"] is participated
        latest = thread["latest_event"]
        assert latest["event_id"] == last
        assert latest["content"]["body"] == "r2"
        assert latest["room_id"] == room_id
        # The latest event carries its own aggregations: here its edit.
        assert relations_of(latest)["m.replace"]["event_id"] == latest_edit

    # A reply is not a thread root and the root gets no other bundles.
    reply = await get_event(hs, atok, room_id, last)
    assert "m.thread" not in relations_of(reply)
    assert set(relations_of(await get_event(hs, atok, room_id, root))) == {"m.thread"}


async def test_latest_valid_edit_wins(hs: Harness) -> None:
    room_id, [(_, atok), (_, btok)] = await _room_with(hs, "alice", "bob")
    original = await hs.send_message(atok, room_id, "v1")
    first = await edit(hs, atok, room_id, original, "v2")
    second = await edit(hs, atok, room_id, original, "v3")
    # Invalid: another sender, another type, no m.new_content.
    await edit(hs, btok, room_id, original, "bob's edit")
    await edit(hs, atok, room_id, original, "typed", etype="m.custom")
    await send(
        hs,
        atok,
        room_id,
        text("no new content", **{"m.relates_to": {"rel_type": "m.replace", "event_id": original}}),
    )

    got = await get_event(hs, atok, room_id, original)
    replace = relations_of(got)["m.replace"]
    edits = [await get_event(hs, atok, room_id, e) for e in (first, second)]
    expected = max(edits, key=lambda e: (e["origin_server_ts"], e["event_id"]))
    assert replace["event_id"] == expected["event_id"]
    assert replace["content"]["m.new_content"]["body"] in ("v2", "v3")
    assert replace["sender"] == got["sender"]
    # The original's content is left as it was.
    assert got["content"]["body"] == "v1"

    # An edit gets no aggregations of its own: editing an edit is not valid.
    await edit(hs, atok, room_id, second, "edit of an edit")
    assert relations_of(await get_event(hs, atok, room_id, second)) == {}

    # Redacting the latest edit falls back to the previous one; redacting the
    # original drops the m.replace bundle altogether.
    await redact(hs, atok, room_id, expected["event_id"])
    other = first if expected["event_id"] == second else second
    assert (
        relations_of(await get_event(hs, atok, room_id, original))["m.replace"]["event_id"] == other
    )
    await redact(hs, atok, room_id, original)
    assert "m.replace" not in relations_of(await get_event(hs, atok, room_id, original))


async def test_encrypted_edit_is_the_edit_event(hs: Harness) -> None:
    room_id, [(_, atok)] = await _room_with(hs, "alice")
    megolm = {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AAAA", "session_id": "S"}
    original = await send(hs, atok, room_id, megolm, "m.room.encrypted")
    edit_id = await send(
        hs,
        atok,
        room_id,
        {**megolm, "m.relates_to": {"rel_type": "m.replace", "event_id": original}},
        "m.room.encrypted",
    )
    replace = relations_of(await get_event(hs, atok, room_id, original))["m.replace"]
    assert replace["event_id"] == edit_id
    assert replace["type"] == "m.room.encrypted"


async def test_references_and_no_annotations(hs: Harness) -> None:
    room_id, [(_, atok), (_, btok)] = await _room_with(hs, "alice", "bob")
    target = await hs.send_message(atok, room_id, "poll")
    r1 = await reference(hs, btok, room_id, target, "vote 1")
    r2 = await reference(hs, atok, room_id, target, "vote 2")
    await react(hs, btok, room_id, target, "👍")
    bundled = relations_of(await get_event(hs, atok, room_id, target))
    assert bundled == {"m.reference": {"chunk": [{"event_id": r1}, {"event_id": r2}]}}
    await redact(hs, btok, room_id, r1)
    bundled = relations_of(await get_event(hs, atok, room_id, target))
    assert bundled == {"m.reference": {"chunk": [{"event_id": r2}]}}


async def test_redacted_thread_replies_drop_out(hs: Harness) -> None:
    room_id, [(_, atok), (_, btok)] = await _room_with(hs, "alice", "bob")
    root = await hs.send_message(atok, room_id, "root")
    first = await reply_in_thread(hs, btok, room_id, root, "one")
    second = await reply_in_thread(hs, btok, room_id, root, "two")
    await redact(hs, btok, room_id, second)
    thread = relations_of(await get_event(hs, atok, room_id, root))["m.thread"]
    assert thread["count"] == 1
    assert thread["latest_event"]["event_id"] == first
    status, body = await relations(hs, atok, room_id, root)
    assert status == 200 and [e["event_id"] for e in body["chunk"]] == [first]
    status, body = await threads(hs, atok, room_id)
    assert [e["event_id"] for e in body["chunk"]] == [root]

    await redact(hs, btok, room_id, first)
    assert relations_of(await get_event(hs, atok, room_id, root)) == {}
    status, body = await threads(hs, atok, room_id)
    assert status == 200 and body["chunk"] == []


@pytest.mark.parametrize(
    "relates_to",
    [
        "not an object",
        {"event_id": "$x"},  # no rel_type
        {"rel_type": "m.thread"},  # no event_id
        {"rel_type": "m.thread", "event_id": 5},
        {"rel_type": 5, "event_id": "{target}"},
        {"rel_type": "m.thread", "event_id": "no-dollar"},
        {"rel_type": "", "event_id": "{target}"},
        {"rel_type": "m.annotation", "event_id": "{target}"},  # an annotation needs a key
        {"m.in_reply_to": {"event_id": "{target}"}},  # a reply is not a relation
    ],
)
async def test_malformed_relations_are_ignored(hs: Harness, relates_to: Any) -> None:
    room_id, [(_, atok)] = await _room_with(hs, "alice")
    target = await hs.send_message(atok, room_id, "target")
    if isinstance(relates_to, dict):
        relates_to = {
            k: (v.replace("{target}", target) if isinstance(v, str) else v)
            for k, v in relates_to.items()
        }
        if "m.in_reply_to" in relates_to:
            relates_to = {"m.in_reply_to": {"event_id": target}}
    await send(hs, atok, room_id, text("child", **{"m.relates_to": relates_to}))
    assert relations_of(await get_event(hs, atok, room_id, target)) == {}
    status, body = await relations(hs, atok, room_id, target)
    assert status == 200 and body["chunk"] == []


async def test_relation_to_an_event_of_another_room_is_ignored(hs: Harness) -> None:
    room_a, [(_, atok)] = await _room_with(hs, "alice")
    room_b = await hs.create_room(atok)
    target = await hs.send_message(atok, room_a, "in a")
    await reply_in_thread(hs, atok, room_b, target, "from b")
    await reference(hs, atok, room_b, target, "ref from b")
    assert relations_of(await get_event(hs, atok, room_a, target)) == {}
    status, body = await relations(hs, atok, room_a, target)
    assert status == 200 and body["chunk"] == []


async def test_ignored_users_left_out_of_aggregations(hs: Harness) -> None:
    room_id, [(alice, atok), (bob, btok), (_, ctok)] = await _room_with(hs, "alice", "bob", "carol")
    root = await hs.send_message(atok, room_id, "root")
    own = await reply_in_thread(hs, ctok, room_id, root, "carol")
    await reply_in_thread(hs, btok, room_id, root, "bob")
    await reference(hs, btok, room_id, root, "bob ref")
    status, body = await hs.request(
        "PUT",
        f"{V3}/user/{alice}/account_data/m.ignored_user_list",
        atok,
        {"ignored_users": {bob: {}}},
    )
    assert status == 200, body
    bundled = relations_of(await get_event(hs, atok, room_id, root))
    assert bundled["m.thread"]["count"] == 1
    assert bundled["m.thread"]["latest_event"]["event_id"] == own
    assert "m.reference" not in bundled
    # Bob's view is unaffected.
    assert relations_of(await get_event(hs, btok, room_id, root))["m.thread"]["count"] == 2


async def test_bundles_on_every_read_path(hs: Harness) -> None:
    room_id, [(_, atok)] = await _room_with(hs, "alice")
    root = await hs.send_message(atok, room_id, "root")
    reply = await reply_in_thread(hs, atok, room_id, root, "reply")
    ref_parent = await hs.send_message(atok, room_id, "parent")
    ref = await reference(hs, atok, room_id, ref_parent, "ref")

    def check(events: list[dict[str, Any]]) -> None:
        by_id = {e["event_id"]: e for e in events}
        assert relations_of(by_id[root])["m.thread"]["latest_event"]["event_id"] == reply
        assert relations_of(by_id[ref_parent])["m.reference"]["chunk"] == [{"event_id": ref}]

    status, body = await hs.request(
        "GET", f"{V3}/rooms/{room_id}/messages", atok, params={"dir": "b", "limit": "20"}
    )
    assert status == 200, body
    check(body["chunk"])
    status, body = await hs.request(
        "GET", f"{V3}/rooms/{room_id}/context/{root}", atok, params={"limit": "10"}
    )
    assert status == 200, body
    check([*body["events_before"], body["event"], *body["events_after"]])
    status, body = await hs.request("GET", f"{V3}/sync", atok)
    assert status == 200, body
    check(body["rooms"]["join"][room_id]["timeline"]["events"])
    status, body = await relations(hs, atok, room_id, ref_parent)
    assert status == 200
    assert [e["event_id"] for e in body["chunk"]] == [ref]
    # State events get no bundles.
    status, body = await hs.request("GET", f"{V3}/rooms/{room_id}/state", atok)
    assert all("m.relations" not in e.get("unsigned", {}) for e in body)


async def test_one_batch_of_queries_per_formatting_call(
    hs: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bundling a page costs the same few statements whatever the number of events: one
    for the events' threads, edits and references, one more for the threads' latest
    replies when there are threads."""
    room_id, [(_, atok)] = await _room_with(hs, "alice")
    for i in range(6):
        root = await hs.send_message(atok, room_id, f"root {i}")
        await reply_in_thread(hs, atok, room_id, root, f"reply {i}")
        await edit(hs, atok, room_id, root, f"root {i} edited")
    plain_room = await hs.create_room(atok)
    for i in range(6):
        parent = await hs.send_message(atok, plain_room, f"parent {i}")
        await reference(hs, atok, plain_room, parent, f"ref {i}")
    db = hs.services.db
    seen: list[str] = []
    original = db.fetch_all

    async def counting(sql: str, *args: Any) -> Any:
        seen.append(sql)
        return await original(sql, *args)

    monkeypatch.setattr(db, "fetch_all", counting)

    def relation_queries() -> int:
        return len([q for q in seen if "event_relations" in q])

    status, body = await hs.request(
        "GET", f"{V3}/rooms/{room_id}/messages", atok, params={"dir": "b", "limit": "30"}
    )
    assert status == 200, body
    threaded = [e for e in body["chunk"] if "m.thread" in relations_of(e)]
    assert len(threaded) == 6
    assert all("m.replace" in relations_of(e) for e in threaded)
    # The latest replies are on the page too, so one statement covers them.
    assert relation_queries() == 1
    seen.clear()
    root = threaded[0]["event_id"]
    bundled = relations_of(await get_event(hs, atok, room_id, root))
    assert bundled["m.thread"]["count"] == 1
    # The second round (the latest reply's edits and references) is skipped: the reply
    # was built here and nothing relates to it (RelationStore remembers that).
    assert relation_queries() == 1
    hs.services.relations._store._childless.clear()  # forgotten (e.g. after a restart)
    seen.clear()
    again = relations_of(await get_event(hs, atok, room_id, root))
    assert (
        again["m.thread"]["latest_event"]["event_id"]
        == (bundled["m.thread"]["latest_event"]["event_id"])
    )
    assert again["m.replace"]["event_id"] == bundled["m.replace"]["event_id"]
    assert relation_queries() == 2
    seen.clear()
    status, body = await hs.request(
        "GET", f"{V3}/rooms/{plain_room}/messages", atok, params={"dir": "b", "limit": "30"}
    )
    assert status == 200, body
    assert len([e for e in body["chunk"] if "m.reference" in relations_of(e)]) == 6
    assert relation_queries() == 1

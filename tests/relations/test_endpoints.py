"""GET /v1/rooms/{roomId}/relations/... and /v1/rooms/{roomId}/threads: pagination,
filters, recursion, visibility and parameter checking."""

from __future__ import annotations

import pytest

from tests.relations.helpers import (
    V3,
    ids,
    react,
    reference,
    relations,
    relations_of,
    reply_in_thread,
    send,
    text,
    threads,
)
from tests.support.harness import Harness


async def _paginate(
    hs: Harness, tok: str, room_id: str, parent: str, **params: str
) -> tuple[list[str], int]:
    """Every child, page by page; returns the IDs and the number of pages."""
    out: list[str] = []
    pages = 0
    token: str | None = None
    while True:
        query = dict(params)
        if token is not None:
            query["from"] = token
        status, body = await relations(hs, tok, room_id, parent, **query)
        assert status == 200, body
        pages += 1
        if token is not None:
            assert body["prev_batch"] == token
        else:
            assert "prev_batch" not in body
        out += ids(body["chunk"])
        token = body.get("next_batch")
        if token is None:
            return out, pages
        assert pages < 20


async def test_relations_pagination_both_directions(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    root = await hs.send_message(tok, room_id, "root")
    children = [await reply_in_thread(hs, tok, room_id, root, f"r{i}") for i in range(7)]
    await hs.send_message(tok, room_id, "unrelated")

    backwards, pages = await _paginate(hs, tok, room_id, root, limit="3")
    assert backwards == children[::-1] and pages == 3
    forwards, pages = await _paginate(hs, tok, room_id, root, limit="3", dir="f")
    assert forwards == children and pages == 3
    # The default direction is backwards; the default limit is small but pages on.
    status, body = await relations(hs, tok, room_id, root)
    assert status == 200 and ids(body["chunk"]) == children[::-1][:5] and "next_batch" in body

    # `to` bounds a page: backwards from the end down to the first page's boundary.
    status, first = await relations(hs, tok, room_id, root, limit="2")
    status, body = await relations(hs, tok, room_id, root, limit="10", to=first["next_batch"])
    assert ids(body["chunk"]) == children[::-1][:2] and "next_batch" not in body
    status, body = await relations(
        hs, tok, room_id, root, dir="f", limit="10", to=first["next_batch"]
    )
    assert ids(body["chunk"]) == children[:5]
    # A /messages token is accepted as `from` ("unrelated", r6 and r5 are behind it).
    status, msgs = await hs.request(
        "GET", f"{V3}/rooms/{room_id}/messages", tok, params={"dir": "b", "limit": "3"}
    )
    status, body = await relations(hs, tok, room_id, root, limit="10", **{"from": msgs["end"]})
    assert status == 200 and ids(body["chunk"]) == children[::-1][2:]


async def test_relations_filtered_by_type(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    parent = await hs.send_message(tok, room_id, "parent")
    thread_reply = await reply_in_thread(hs, tok, room_id, parent, "in thread")
    ref = await reference(hs, tok, room_id, parent, "ref")
    reaction = await react(hs, tok, room_id, parent, "👍")
    custom = await send(
        hs,
        tok,
        room_id,
        {"m.relates_to": {"rel_type": "m.reference", "event_id": parent}},
        "org.example.custom",
    )
    status, body = await relations(hs, tok, room_id, parent, limit="10")
    assert ids(body["chunk"]) == [custom, reaction, ref, thread_reply]
    status, body = await relations(hs, tok, room_id, parent, "m.reference", limit="10")
    assert status == 200 and ids(body["chunk"]) == [custom, ref]
    _, body = await relations(hs, tok, room_id, parent, "m.reference", "m.room.message", limit="10")
    assert ids(body["chunk"]) == [ref]
    _, body = await relations(hs, tok, room_id, parent, "m.annotation", "m.reaction")
    assert ids(body["chunk"]) == [reaction]
    assert body["chunk"][0]["content"]["m.relates_to"]["key"] == "👍"


async def test_recurse(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    root = await hs.send_message(tok, room_id, "root")
    level1 = await reply_in_thread(hs, tok, room_id, root, "level 1")
    level2 = await reference(hs, tok, room_id, level1, "level 2")
    level3 = await react(hs, tok, room_id, level2, "3")
    await reference(hs, tok, room_id, level3, "level 4")  # beyond the depth of 3
    other_ref = await reference(hs, tok, room_id, root, "direct ref")

    status, body = await relations(hs, tok, room_id, root, limit="10")
    assert ids(body["chunk"]) == [other_ref, level1] and "recursion_depth" not in body
    status, body = await relations(hs, tok, room_id, root, limit="10", recurse="true")
    assert status == 200
    assert ids(body["chunk"]) == [other_ref, level3, level2, level1]
    assert body["recursion_depth"] == 3
    # Paginating a recursive listing.
    status, page = await relations(hs, tok, room_id, root, limit="2", recurse="true", dir="f")
    assert ids(page["chunk"]) == [level1, level2]
    status, page = await relations(
        hs, tok, room_id, root, limit="2", recurse="true", dir="f", **{"from": page["next_batch"]}
    )
    assert ids(page["chunk"]) == [level3, other_ref]
    # Filters apply at every level: the reference under the thread reply is reached only
    # through an m.thread event, so asking for m.reference leaves it out.
    status, body = await relations(hs, tok, room_id, root, "m.reference", recurse="true")
    assert ids(body["chunk"]) == [other_ref]
    status, body = await relations(hs, tok, room_id, level1, "m.reference", recurse="1")
    assert ids(body["chunk"]) == [level2]


async def test_threads_list(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    _, btok = await hs.register("bob")
    room_id = await hs.create_room(atok, preset="public_chat")
    status, _ = await hs.request("POST", f"{V3}/join/{room_id}", btok, {})
    assert status == 200
    t1 = await hs.send_message(atok, room_id, "thread 1")
    t2 = await hs.send_message(atok, room_id, "thread 2")
    t3 = await hs.send_message(btok, room_id, "thread 3 (bob's)")
    await hs.send_message(atok, room_id, "not a thread")
    await reply_in_thread(hs, atok, room_id, t1, "a")
    await reply_in_thread(hs, btok, room_id, t2, "b")
    await reply_in_thread(hs, atok, room_id, t3, "c")
    await reply_in_thread(hs, atok, room_id, t1, "d")  # t1 is the latest now

    status, body = await threads(hs, atok, room_id)
    assert status == 200, body
    assert ids(body["chunk"]) == [t1, t3, t2] and "next_batch" not in body
    summaries = [relations_of(e)["m.thread"] for e in body["chunk"]]
    assert [s["count"] for s in summaries] == [2, 1, 1]
    assert summaries[0]["latest_event"]["content"]["body"] == "d"

    # Bob started t3 and replied in t2; he has not taken part in t1.
    status, body = await threads(hs, btok, room_id, include="participated")
    assert ids(body["chunk"]) == [t3, t2]
    assert all(relations_of(e)["m.thread"]["current_user_participated"] for e in body["chunk"])
    status, body = await threads(hs, atok, room_id, include="participated")
    assert ids(body["chunk"]) == [t1, t3, t2]

    # Page by page.
    seen: list[str] = []
    token: str | None = None
    for _ in range(5):
        params = {"limit": "1"} if token is None else {"limit": "1", "from": token}
        status, body = await threads(hs, atok, room_id, **params)
        assert status == 200, body
        seen += ids(body["chunk"])
        token = body.get("next_batch")
        if token is None:
            break
    assert seen == [t1, t3, t2]


async def test_visibility(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    _, btok = await hs.register("bob")
    _, otok = await hs.register("outsider")
    room_id = await hs.create_room(atok, preset="public_chat")
    status, _ = await hs.request(
        "PUT",
        f"{V3}/rooms/{room_id}/state/m.room.history_visibility/",
        atok,
        {"history_visibility": "joined"},
    )
    assert status == 200
    early = await hs.send_message(atok, room_id, "before bob")
    early_reply = await reply_in_thread(hs, atok, room_id, early, "early reply")
    status, _ = await hs.request("POST", f"{V3}/join/{room_id}", btok, {})
    assert status == 200
    late = await hs.send_message(atok, room_id, "after bob")
    await reply_in_thread(hs, atok, room_id, early, "late reply in old thread")
    late_reply = await reply_in_thread(hs, atok, room_id, late, "late reply")

    # Not in the room: 403 for the room, whatever the event.
    status, body = await relations(hs, otok, room_id, late)
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    status, body = await threads(hs, otok, room_id)
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    # Unknown events, events of another room and events bob may not see: 404.
    status, body = await relations(hs, atok, room_id, "$unknown")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    other_room = await hs.create_room(atok)
    status, body = await relations(hs, atok, other_room, late)
    assert status == 404
    status, body = await relations(hs, btok, room_id, early)
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    # Children from before bob joined are left out of his pages.
    status, body = await relations(hs, atok, room_id, early, limit="10")
    assert len(body["chunk"]) == 2 and early_reply in ids(body["chunk"])
    status, body = await relations(hs, btok, room_id, late)
    assert status == 200 and ids(body["chunk"]) == [late_reply]
    # /threads shows bob only the roots he can see.
    status, body = await threads(hs, btok, room_id)
    assert status == 200 and ids(body["chunk"]) == [late]
    status, body = await threads(hs, atok, room_id)
    assert ids(body["chunk"]) == [late, early]


@pytest.mark.parametrize(
    "params",
    [
        {"dir": "x"},
        {"limit": "-1"},
        {"limit": "0"},
        {"limit": "abc"},
        {"recurse": "maybe"},
        {"from": "garbage"},
        {"to": "t12x"},
    ],
)
async def test_relations_bad_params(hs: Harness, params: dict[str, str]) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    parent = await hs.send_message(tok, room_id, "parent")
    status, body = await relations(hs, tok, room_id, parent, **params)
    assert status == 400, body
    assert body["errcode"] == "M_INVALID_PARAM"


@pytest.mark.parametrize(
    "params", [{"include": "some"}, {"limit": "0"}, {"limit": "x"}, {"from": "nope"}]
)
async def test_threads_bad_params(hs: Harness, params: dict[str, str]) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    status, body = await threads(hs, tok, room_id, **params)
    assert status == 400, body
    assert body["errcode"] == "M_INVALID_PARAM"


async def test_bad_ids_and_auth(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    parent = await send(hs, tok, room_id, text("p"))
    status, body = await relations(hs, tok, "not-a-room", parent)
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM"
    status, body = await relations(hs, tok, room_id, "not-an-event")
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM"
    status, _ = await relations(hs, "", room_id, parent)
    assert status == 401

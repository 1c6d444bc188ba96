"""Read paths: what a user may see (history visibility, membership, redactions)."""

from __future__ import annotations

from typing import Any

from tests.relations.helpers import edit, reply_in_thread, send, text
from tests.support.harness import Harness

V1 = "/_matrix/client/v1"
V3 = "/_matrix/client/v3"


async def _join(hs: Harness, tok: str, room_id: str) -> None:
    status, body = await hs.request("POST", f"{V3}/rooms/{room_id}/join", tok, {})
    assert status == 200, body


async def _leave(hs: Harness, tok: str, room_id: str) -> None:
    status, body = await hs.request("POST", f"{V3}/rooms/{room_id}/leave", tok, {})
    assert status == 200, body


async def _public_room(hs: Harness, tok: str, **extra: Any) -> str:
    return await hs.create_room(tok, preset="public_chat", **extra)


def _relations(event: dict[str, Any]) -> dict[str, Any]:
    relations: dict[str, Any] = event["unsigned"].get("m.relations", {})
    return relations


async def test_bundled_aggregations_hide_what_a_departed_user_cannot_see(hs: Harness) -> None:
    """A thread reply, an edit or a reference sent after Bob left is not bundled into
    what Bob reads; he gets the latest ones from while he was there."""
    _, a = await hs.register("alice")
    _, b = await hs.register("bob")
    room = await _public_room(hs, a)
    await _join(hs, b, room)
    root = await hs.send_message(a, room, "root")
    early = await reply_in_thread(hs, a, room, root, "early reply")
    early_edit = await edit(hs, a, room, root, "edit bob saw")
    await _leave(hs, b, room)
    await reply_in_thread(hs, a, room, root, "secret reply")
    await edit(hs, a, room, root, "secret edit")
    await send(
        hs, a, room, text("ref", **{"m.relates_to": {"rel_type": "m.reference", "event_id": root}})
    )

    status, event = await hs.request("GET", f"{V3}/rooms/{room}/event/{root}", b)
    assert status == 200, event
    status, threads = await hs.request("GET", f"{V1}/rooms/{room}/threads", b)
    assert status == 200 and [e["event_id"] for e in threads["chunk"]] == [root]
    status, msgs = await hs.request("GET", f"{V3}/rooms/{room}/messages", b, params={"dir": "b"})
    assert status == 200
    (in_messages,) = [e for e in msgs["chunk"] if e["event_id"] == root]
    for seen in (event, threads["chunk"][0], in_messages):
        relations = _relations(seen)
        assert "secret" not in str(relations)
        thread = relations["m.thread"]
        assert thread["latest_event"]["event_id"] == early and thread["count"] == 1
        assert relations["m.replace"]["event_id"] == early_edit
        assert "m.reference" not in relations

    # Alice, still in the room, sees everything.
    status, event = await hs.request("GET", f"{V3}/rooms/{room}/event/{root}", a)
    relations = _relations(event)
    assert relations["m.thread"]["count"] == 2
    assert relations["m.replace"]["content"]["m.new_content"]["body"] == "secret edit"
    assert len(relations["m.reference"]["chunk"]) == 1


async def test_forgotten_room_history_is_no_longer_readable(hs: Harness) -> None:
    """Spec (/forget): after forgetting a room the user can no longer retrieve its
    history: every read path answers 403 (and /search finds nothing), as Synapse does."""
    _, a = await hs.register("alice")
    _, b = await hs.register("bob")
    room = await _public_room(hs, a)
    await _join(hs, b, room)
    event = await hs.send_message(a, room, "findme before forgetting")
    await _leave(hs, b, room)
    search = {"search_categories": {"room_events": {"search_term": "findme"}}}
    status, body = await hs.request("POST", f"{V3}/search", b, search)
    assert status == 200 and len(body["search_categories"]["room_events"]["results"]) == 1
    status, _ = await hs.request("GET", f"{V3}/rooms/{room}/event/{event}", b)
    assert status == 200

    status, body = await hs.request("POST", f"{V3}/rooms/{room}/forget", b, {})
    assert status == 200, body
    status, body = await hs.request("GET", f"{V3}/rooms/{room}/event/{event}", b)
    assert status == 404 and body["errcode"] == "M_NOT_FOUND", body  # the spec's only error
    for path in (
        f"{V3}/rooms/{room}/context/{event}",
        f"{V3}/rooms/{room}/state",
        f"{V3}/rooms/{room}/state/m.room.create",
        f"{V3}/rooms/{room}/members",
        f"{V1}/rooms/{room}/relations/{event}",
        f"{V1}/rooms/{room}/threads",
    ):
        status, body = await hs.request("GET", path, b)
        assert status == 403, (path, body)
    status, body = await hs.request("GET", f"{V3}/rooms/{room}/messages", b, params={"dir": "b"})
    assert status == 403, body
    status, body = await hs.request("POST", f"{V3}/search", b, search)
    assert status == 200 and body["search_categories"]["room_events"]["results"] == []

    # Joining again makes the room theirs again.
    await _join(hs, b, room)
    status, _ = await hs.request("GET", f"{V3}/rooms/{room}/event/{event}", b)
    assert status == 200


async def test_never_joined_departure_gives_no_view_of_the_room(hs: Harness) -> None:
    """A rejected invite or a ban from outside the room is a "leave"/"ban" membership,
    but the user never saw the room: /state, /members and the leave section of an
    initial sync must not hand them its state (member list, topic)."""
    _, a = await hs.register("alice")
    bob, b = await hs.register("bob")
    carol, c = await hs.register("carol")
    room = await hs.create_room(
        a,
        preset="private_chat",
        initial_state=[
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "joined"},
            },
            {"type": "m.room.topic", "state_key": "", "content": {"topic": "secret topic"}},
        ],
    )
    status, body = await hs.request("POST", f"{V3}/rooms/{room}/invite", a, {"user_id": bob})
    assert status == 200, body
    await _leave(hs, b, room)  # rejects the invite
    status, body = await hs.request("POST", f"{V3}/rooms/{room}/ban", a, {"user_id": carol})
    assert status == 200, body

    for tok in (b, c):
        for path in ("state", "state/m.room.topic", "members", "messages?dir=b"):
            status, body = await hs.request("GET", f"{V3}/rooms/{room}/{path}", tok)
            assert status == 403, (path, body)
        status, sync = await hs.request(
            "GET", f"{V3}/sync", tok, params={"filter": '{"room":{"include_leave":true}}'}
        )
        assert status == 200, sync
        left = sync["rooms"]["leave"][room]
        assert left["state"]["events"] == []
        assert "secret" not in str(left)
        status, again = await hs.request(
            "GET",
            f"{V3}/sync",
            tok,
            params={
                "since": sync["next_batch"],
                "full_state": "true",
                "filter": '{"room":{"include_leave":true}}',
            },
        )
        assert status == 200 and "secret" not in str(again["rooms"]["leave"])

    # Someone who was in the room and left still reads it as it was when they left.
    dave, d = await hs.register("dave")
    status, body = await hs.request("POST", f"{V3}/rooms/{room}/invite", a, {"user_id": dave})
    await _join(hs, d, room)
    await _leave(hs, d, room)
    status, body = await hs.request("GET", f"{V3}/rooms/{room}/state/m.room.topic", d)
    assert status == 200 and body == {"topic": "secret topic"}


async def test_a_banned_user_reads_nothing_more_unless_world_readable(hs: Harness) -> None:
    """Spec ("Banning users in a room"): a banned user "will not be able to send or receive
    events in the room". Unlike a user who left (who reads the room as of their
    departure), a banned one gets 403 on every room read, as Synapse's
    check_user_in_room_or_world_readable (and /event's 404, its only error), and /search
    leaves the room out; a world-readable room stays readable, as for anyone."""
    _, a = await hs.register("alice")
    bob, b = await hs.register("bob")
    carol, c = await hs.register("carol")
    room = await _public_room(hs, a)
    for tok in (b, c):
        await _join(hs, tok, room)
    event = await hs.send_message(a, room, "findme before the ban")
    await _leave(hs, c, room)  # carol left: she keeps her view, as of her departure
    status, body = await hs.request("POST", f"{V3}/rooms/{room}/ban", a, {"user_id": bob})
    assert status == 200, body
    search = {"search_categories": {"room_events": {"search_term": "findme"}}}

    status, body = await hs.request("GET", f"{V3}/rooms/{room}/event/{event}", b)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), body
    for path in (
        f"{V3}/rooms/{room}/context/{event}",
        f"{V3}/rooms/{room}/state",
        f"{V3}/rooms/{room}/state/m.room.member/{bob}",
        f"{V3}/rooms/{room}/state/m.room.create",
        f"{V3}/rooms/{room}/members",
        f"{V3}/rooms/{room}/joined_members",
        f"{V3}/rooms/{room}/messages?dir=b",
        f"{V3}/rooms/{room}/initialSync",
        f"{V1}/rooms/{room}/relations/{event}",
        f"{V1}/rooms/{room}/threads",
    ):
        status, body = await hs.request("GET", path, b)
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), (path, body)
    status, body = await hs.request("POST", f"{V3}/search", b, search)
    assert status == 200 and body["search_categories"]["room_events"]["results"] == []

    # The one who left still reads the room as it was when she left.
    for path in (
        f"{V3}/rooms/{room}/event/{event}",
        f"{V3}/rooms/{room}/context/{event}",
        f"{V3}/rooms/{room}/state/m.room.member/{carol}",
        f"{V3}/rooms/{room}/members",
        f"{V3}/rooms/{room}/messages?dir=b",
    ):
        status, body = await hs.request("GET", path, c)
        assert status == 200, (path, body)
    status, body = await hs.request("POST", f"{V3}/search", c, search)
    assert status == 200 and len(body["search_categories"]["room_events"]["results"]) == 1

    # World-readable: the banned user reads the room as anyone may (its current state).
    visibility = {"history_visibility": "world_readable"}
    status, body = await hs.request(
        "PUT", f"{V3}/rooms/{room}/state/m.room.history_visibility/", a, visibility
    )
    assert status == 200, body
    status, body = await hs.request("GET", f"{V3}/rooms/{room}/state/m.room.member/{bob}", b)
    assert status == 200 and body["membership"] == "ban", body
    status, body = await hs.request("GET", f"{V3}/rooms/{room}/state/m.room.history_visibility", b)
    assert status == 200 and body == visibility, body
    later = await hs.send_message(a, room, "said after the ban")
    for path in (f"{V3}/rooms/{room}/event/{later}", f"{V3}/rooms/{room}/members"):
        status, body = await hs.request("GET", path, b)
        assert status == 200, (path, body)
    status, body = await hs.request("GET", f"{V3}/rooms/{room}/messages?dir=b", b)
    assert status == 200 and later in [e["event_id"] for e in body["chunk"]], body

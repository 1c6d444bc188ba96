"""Room reads: /context, /members, /joined_members, /state, /state/{type}/{key}."""

from __future__ import annotations

from tests.support.harness import Harness
from tests.sync.helpers import V3, invite, join, leave, set_state, sync


async def test_context(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    ids = [await hs.send_message(tok, room_id, f"c{i}") for i in range(9)]
    status, ctx = await hs.request(
        "GET", f"{V3}/rooms/{room_id}/context/{ids[4]}", tok, params={"limit": "4"}
    )
    assert status == 200, ctx
    assert ctx["event"]["event_id"] == ids[4]
    assert [e["event_id"] for e in ctx["events_before"]] == [ids[3], ids[2]]
    assert [e["event_id"] for e in ctx["events_after"]] == [ids[5], ids[6]]
    assert "m.room.create" in {e["type"] for e in ctx["state"]}
    # start/end continue the pagination without gaps.
    status, back = await hs.request(
        "GET",
        f"{V3}/rooms/{room_id}/messages",
        tok,
        params={"dir": "b", "from": ctx["start"], "limit": "1"},
    )
    assert back["chunk"][0]["event_id"] == ids[1]
    status, fwd = await hs.request(
        "GET",
        f"{V3}/rooms/{room_id}/messages",
        tok,
        params={"dir": "f", "from": ctx["end"], "limit": "1"},
    )
    assert fwd["chunk"][0]["event_id"] == ids[7]
    # Filter and lazy loading.
    status, ctx = await hs.request(
        "GET",
        f"{V3}/rooms/{room_id}/context/{ids[4]}",
        tok,
        params={"limit": "2", "filter": '{"lazy_load_members": true, "types": ["m.room.message"]}'},
    )
    assert status == 200, ctx
    assert {e["type"] for e in ctx["state"] if e["type"] == "m.room.member"} <= {"m.room.member"}
    assert len([e for e in ctx["state"] if e["type"] == "m.room.member"]) == 1
    status, _body = await hs.request(
        "GET", f"{V3}/rooms/{room_id}/context/{ids[0]}", tok, params={"limit": "x"}
    )
    assert status == 400


async def test_members_and_joined_members(hs: Harness) -> None:
    alice, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    carol, _ = await hs.register("carol")
    room_id = await hs.create_room(atok, preset="public_chat")
    before_bob = (await sync(hs, atok))["next_batch"]
    await join(hs, btok, room_id)
    await invite(hs, atok, room_id, carol)
    path = f"{V3}/rooms/{room_id}/members"
    status, body = await hs.request("GET", path, atok)
    assert status == 200
    got = {e["state_key"]: e["content"]["membership"] for e in body["chunk"]}
    assert got == {alice: "join", bob: "join", carol: "invite"}
    status, body = await hs.request("GET", path, atok, params={"membership": "invite"})
    assert [e["state_key"] for e in body["chunk"]] == [carol]
    status, body = await hs.request("GET", path, atok, params={"not_membership": "invite"})
    assert {e["state_key"] for e in body["chunk"]} == {alice, bob}
    status, body = await hs.request(
        "GET", path, atok, params={"membership": "invite", "not_membership": "join"}
    )
    assert {e["state_key"] for e in body["chunk"]} == {carol}
    status, body = await hs.request("GET", path, atok, params={"at": before_bob})
    assert {e["state_key"] for e in body["chunk"]} == {alice}
    for params in ({"membership": "sleeping"}, {"at": "bogus"}):
        status, body = await hs.request("GET", path, atok, params=params)
        assert status == 400, params
    status, body = await hs.request("GET", f"{V3}/rooms/{room_id}/joined_members", btok)
    assert status == 200
    assert body["joined"][alice] == {"display_name": "alice", "avatar_url": None}
    assert set(body["joined"]) == {alice, bob}
    await leave(hs, btok, room_id)
    status, body = await hs.request("GET", path, btok)
    assert status == 200
    assert {e["state_key"]: e["content"]["membership"] for e in body["chunk"]}[bob] == "leave"


async def test_state_reads(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok, name="Named")
    await set_state(hs, tok, room_id, "org.example.thing", {"k": 1}, key="sk")
    status, state = await hs.request("GET", f"{V3}/rooms/{room_id}/state", tok)
    assert status == 200
    assert {"m.room.create", "m.room.name", "org.example.thing"} <= {e["type"] for e in state}
    assert all(e["room_id"] == room_id for e in state)
    status, content = await hs.request("GET", f"{V3}/rooms/{room_id}/state/m.room.name", tok)
    assert status == 200 and content == {"name": "Named"}
    status, content = await hs.request("GET", f"{V3}/rooms/{room_id}/state/m.room.name/", tok)
    assert status == 200 and content == {"name": "Named"}
    status, event = await hs.request(
        "GET", f"{V3}/rooms/{room_id}/state/org.example.thing/sk", tok, params={"format": "event"}
    )
    assert status == 200 and event["content"] == {"k": 1} and event["state_key"] == "sk"
    assert event["event_id"].startswith("$")
    status, body = await hs.request("GET", f"{V3}/rooms/{room_id}/state/m.room.topic/", tok)
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    status, body = await hs.request(
        "GET", f"{V3}/rooms/{room_id}/state/m.room.name", tok, params={"format": "xml"}
    )
    assert status == 400

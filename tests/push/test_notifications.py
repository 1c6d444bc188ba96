"""GET /notifications (spec: client-server-api #get_matrixclientv3notifications) on both
engines: what the push evaluator stored, newest first, with actions, read state, paging
by `from`/`limit`, `only=highlight`, and bad parameters."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest

from tests.support.harness import Harness

V3 = "/_matrix/client/v3"


@pytest.fixture
async def evaluating(hs: Harness) -> AsyncIterator[Harness]:
    evaluator = hs.services.push_evaluator
    await evaluator.start()
    try:
        yield hs
    finally:
        await evaluator.stop()


async def ok(hs: Harness, method: str, path: str, token: str, body: Any = None, **kw: Any) -> Any:
    status, resp = await hs.request(method, path, token, body, **kw)
    assert status == 200, resp
    return resp


async def send(hs: Harness, token: str, room: str, content: dict[str, Any]) -> str:
    path = f"{V3}/rooms/{quote(room)}/send/m.room.message/{secrets.token_hex(6)}"
    return str((await ok(hs, "PUT", path, token, content))["event_id"])


async def notifications(hs: Harness, token: str, **params: str) -> Any:
    await hs.services.push_evaluator.caught_up()
    return await ok(hs, "GET", f"{V3}/notifications", token, params=params)


async def test_notifications_paging_highlight_and_read(evaluating: Harness) -> None:
    hs = evaluating
    alice, atok = await hs.register()
    bob, btok = await hs.register()
    room = await hs.create_room(atok, preset="public_chat")
    await ok(hs, "POST", f"{V3}/join/{quote(room)}", btok, {})
    plain = await send(hs, atok, room, {"msgtype": "m.text", "body": "one"})
    mention = await send(
        hs,
        atok,
        room,
        {"msgtype": "m.text", "body": "bob!", "m.mentions": {"user_ids": [bob]}},
    )
    last = await send(hs, atok, room, {"msgtype": "m.text", "body": "three"})
    await send(hs, btok, room, {"msgtype": "m.text", "body": "my own"})  # never listed

    everything = await notifications(hs, btok)
    listed = everything["notifications"]
    assert [n["event"]["event_id"] for n in listed] == [last, mention, plain]
    assert "next_token" not in everything  # fewer than the limit: the last page
    first = listed[0]
    assert first["room_id"] == room and "room_id" not in first["event"]
    assert first["event"]["content"]["body"] == "three" and first["event"]["sender"] == alice
    assert "notify" in first["actions"] and first["read"] is False
    assert isinstance(first["ts"], int) and first["ts"] > 0
    assert first["profile_tag"] is None  # the key is there, as Synapse sends it
    highlight = {"set_tweak": "highlight"}
    assert any(a == highlight or a == {**highlight, "value": True} for a in listed[1]["actions"])

    # Paging: limit 2, then from the token.
    page = await notifications(hs, btok, limit="2")
    assert [n["event"]["event_id"] for n in page["notifications"]] == [last, mention]
    rest = await notifications(hs, btok, limit="2", **{"from": page["next_token"]})
    assert [n["event"]["event_id"] for n in rest["notifications"]] == [plain]
    assert "next_token" not in rest

    only = await notifications(hs, btok, only="highlight")
    assert [n["event"]["event_id"] for n in only["notifications"]] == [mention]

    # A read receipt on the middle one marks it and the older one read.
    await ok(hs, "POST", f"{V3}/rooms/{quote(room)}/receipt/m.read/{quote(mention)}", btok, {})
    read = {
        n["event"]["event_id"]: n["read"] for n in (await notifications(hs, btok))["notifications"]
    }
    assert read == {last: False, mention: True, plain: True}
    # Each user has their own: alice only bob's message (not her own, nor member events).
    alice_has = (await notifications(hs, atok))["notifications"]
    assert [n["event"]["content"]["body"] for n in alice_has] == ["my own"]


async def test_ignored_sender_and_bad_parameters(evaluating: Harness) -> None:
    hs = evaluating
    alice, atok = await hs.register()
    bob, btok = await hs.register()
    room = await hs.create_room(atok, preset="public_chat")
    await ok(hs, "POST", f"{V3}/join/{quote(room)}", btok, {})
    await ok(
        hs,
        "PUT",
        f"{V3}/user/{quote(bob)}/account_data/m.ignored_user_list",
        btok,
        {"ignored_users": {alice: {}}},
    )
    await send(hs, atok, room, {"msgtype": "m.text", "body": "ignored"})
    assert (await notifications(hs, btok))["notifications"] == []
    for params in ({"from": "abc"}, {"from": "-1"}, {"limit": "x"}, {"limit": "-3"}):
        status, resp = await hs.request("GET", f"{V3}/notifications", btok, params=params)
        assert status == 400 and resp["errcode"] == "M_INVALID_PARAM", (params, resp)
    status, resp = await hs.request("GET", f"{V3}/notifications")
    assert status == 401

"""NUL and other control characters in identifiers and text: refused where they enter,
with a Matrix error, on both engines (PostgreSQL cannot even store NUL in text)."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.support.harness import Harness

V3 = "/_matrix/client/v3"
CONTROL = ["\x00", "\x01", "\n", "\x1f", "\x7f"]


@pytest.mark.parametrize("char", CONTROL, ids=[f"U+{ord(c):04X}" for c in CONTROL])
async def test_create_room_alias_name_with_control_characters(hs: Harness, char: str) -> None:
    _, tok = await hs.register()
    status, resp = await hs.request(
        "POST", f"{V3}/createRoom", tok, {"room_alias_name": f"bad{char}alias"}
    )
    assert status == 400 and resp["errcode"] in ("M_INVALID_PARAM", "M_BAD_JSON"), resp


@pytest.mark.parametrize("char", CONTROL, ids=[f"U+{ord(c):04X}" for c in CONTROL])
async def test_control_characters_in_path_and_query(hs: Harness, char: str) -> None:
    _, tok = await hs.register()
    room = await hs.create_room(tok)
    c = quote(char, safe="")
    for method, path, body in [
        ("GET", f"{V3}/rooms/{room}{c}/state", None),
        ("PUT", f"{V3}/directory/room/%23a{c}b:test.local", {"room_id": room}),
        ("GET", f"{V3}/profile/@a{c}b:test.local", None),
        ("POST", f"{V3}/join/%23a{c}b:test.local", {}),
        ("PUT", f"{V3}/rooms/{room}/send/m.room.message/txn{c}", {"body": "x"}),
        ("GET", f"{V3}/rooms/{room}/messages?from=t1{c}", None),
        ("GET", f"{V3}/publicRooms?server=test.local{c}", None),
    ]:
        status, resp = await hs.request(method, path, tok, body)
        assert status == 400 and resp["errcode"] == "M_INVALID_PARAM", (path, status, resp)


@pytest.mark.parametrize("char", CONTROL, ids=[f"U+{ord(c):04X}" for c in CONTROL])
async def test_control_characters_in_body_identifiers(hs: Harness, char: str) -> None:
    _, tok = await hs.register()
    room = await hs.create_room(tok)
    for method, path, body in [
        ("POST", f"{V3}/rooms/{room}/invite", {"user_id": f"@a{char}b:test.local"}),
        ("POST", f"{V3}/createRoom", {"invite": [f"@a{char}b:test.local"]}),
        ("PUT", f"{V3}/directory/room/%23ok:test.local", {"room_id": f"!a{char}:test.local"}),
    ]:
        status, resp = await hs.request(method, path, tok, body)
        assert status == 400 and resp["errcode"] in ("M_INVALID_PARAM", "M_BAD_JSON"), (
            path,
            resp,
        )


async def test_nul_in_free_text_never_500s(hs: Harness) -> None:
    user_id, tok = await hs.register()
    room = await hs.create_room(tok)
    for method, path, body in [
        ("PUT", f"{V3}/profile/{user_id}/displayname", {"displayname": "a\x00b"}),
        ("PUT", f"{V3}/devices/DEV", {"display_name": "a\x00b"}),
        ("PUT", f"{V3}/rooms/{room}/send/m.room.message/t1", {"body": "a\x00b"}),
        ("POST", f"{V3}/createRoom", {"name": "a\x00b", "topic": "a\x00b"}),
        ("PUT", f"{V3}/user/{user_id}/rooms/{room}/tags/t", {"order": 0.5, "x": "a\x00"}),
        ("POST", f"{V3}/user/{user_id}/filter", {"room": {"types": ["a\x00"]}}),
        ("POST", f"{V3}/search", {"search_categories": {"room_events": {"search_term": "\x00"}}}),
    ]:
        status, resp = await hs.request(method, path, tok, body)
        assert status < 500, (path, resp)
        if status >= 400:
            assert resp["errcode"] in ("M_INVALID_PARAM", "M_BAD_JSON"), (path, resp)

"""Server notices (Synapse: docs/admin_api/server_notices.md), both engines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starling.storage import Database
from tests.admin.conftest import CONFIG
from tests.support.harness import Harness, make_harness

V1 = "/_synapse/admin/v1"
HS = "test.local"


async def test_server_notices(database: Database, tmp_path: Path) -> None:
    config: dict[str, Any] = {
        **CONFIG,
        "server_notices": {"system_mxid_localpart": "notices", "room_name": "From the admins"},
    }
    async with make_harness(database, tmp_path, **config) as hs:
        _, admin = await hs.register("root", admin=True)
        bob, bob_token = await hs.register("bob")
        body = {"user_id": bob, "content": {"msgtype": "m.text", "body": "Maintenance at 6"}}
        status, resp = await hs.request("POST", f"{V1}/send_server_notice", admin, body)
        assert status == 200, resp
        first = resp["event_id"]
        status, resp = await hs.request("POST", f"{V1}/send_server_notice", admin, body)
        assert status == 200
        # one room, bob invited, tagged m.server_notice, named as configured
        rooms = await hs.services.membership_store.get_rooms_for_user(bob)
        assert [m.membership for m in rooms.values()] == ["invite"]
        room_id = next(iter(rooms))
        tags = await hs.services.account_data.get_tags(bob, room_id)
        assert "m.server_notice" in tags
        status, resp = await hs.request("POST", f"/_matrix/client/v3/join/{room_id}", bob_token, {})
        assert status == 200
        status, resp = await hs.request(
            "GET", f"/_matrix/client/v3/rooms/{room_id}/event/{first}", bob_token
        )
        assert resp["sender"] == f"@notices:{HS}" and resp["content"]["body"] == "Maintenance at 6"
        status, resp = await hs.request(
            "GET", f"/_matrix/client/v3/rooms/{room_id}/state/m.room.name/", bob_token
        )
        assert resp == {"name": "From the admins"}
        # bob cannot write there
        status, resp = await hs.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1",
            bob_token,
            {"msgtype": "m.text", "body": "hi"},
        )
        assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")
        for bad, status_code, errcode in [
            ({"content": {}}, 400, "M_MISSING_PARAM"),
            ({"user_id": bob}, 400, "M_MISSING_PARAM"),
            ({"user_id": bob, "content": "text"}, 400, "M_BAD_JSON"),
            ({"user_id": "bob", "content": {}}, 400, "M_BAD_JSON"),
            ({"user_id": bob, "content": {}, "type": 5}, 400, "M_BAD_JSON"),
            ({"user_id": "@x:elsewhere.org", "content": {}}, 400, "M_INVALID_PARAM"),
            ({"user_id": f"@ghost:{HS}", "content": {}}, 404, "M_NOT_FOUND"),
        ]:
            status, resp = await hs.request("POST", f"{V1}/send_server_notice", admin, bad)
            assert (status, resp["errcode"]) == (status_code, errcode), bad
        status, resp = await hs.request("POST", f"{V1}/send_server_notice", bob_token, body)
        assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")


async def test_server_notices_off_by_default(hs: Harness, admin: str) -> None:
    bob, _ = await hs.register("bob")
    body = {"user_id": bob, "content": {"msgtype": "m.text", "body": "x"}}
    status, resp = await hs.request("POST", f"{V1}/send_server_notice", admin, body)
    assert status == 400 and "not enabled" in resp["error"]

"""The admin audit log (Starling's), the server version and users' media statistics
(Synapse: docs/admin_api/version_api.md, statistics.md), both engines."""

from __future__ import annotations

from starling import __version__
from tests.support.harness import Harness

V1 = "/_synapse/admin/v1"
V2 = "/_synapse/admin/v2"
HS = "test.local"


async def test_every_admin_change_is_audited(hs: Harness, admin: str) -> None:
    bob, bob_token = await hs.register("bob")
    status, _ = await hs.request("PUT", f"{V2}/users/{bob}", admin, {"locked": True})
    assert status == 200
    status, _ = await hs.request("POST", f"{V1}/deactivate/@ghost:{HS}", admin, {})
    assert status == 404
    status, _ = await hs.request("POST", f"{V1}/media/quarantine/{HS}/abc", admin, {})
    assert status == 200
    status, _ = await hs.request("GET", f"{V2}/users", admin)  # reads are not recorded
    status, _ = await hs.request("POST", f"{V1}/deactivate/{bob}", bob_token, {})
    assert status == 401  # locked: never reaches the handler, nothing to record
    status, resp = await hs.request("GET", f"{V1}/audit_log", admin)
    assert status == 200, resp
    assert resp["total"] == 3
    entries = resp["entries"]  # newest first
    assert [(e["method"], e["target"], e["status"]) for e in entries] == [
        ("POST", f"mxc://{HS}/abc", 200),
        ("POST", f"@ghost:{HS}", 404),
        ("PUT", bob, 200),
    ]
    assert all(e["admin"] == f"@root:{HS}" for e in entries)
    assert entries[2]["path"] == f"{V2}/users/{bob}" and entries[2]["ts"] > 0
    status, resp = await hs.request("GET", f"{V1}/audit_log", admin, params={"target": bob})
    assert [e["method"] for e in resp["entries"]] == ["PUT"]
    status, resp = await hs.request("GET", f"{V1}/audit_log", admin, params={"limit": "1"})
    assert len(resp["entries"]) == 1 and resp["next_token"] == 1
    status, resp = await hs.request("GET", f"{V1}/audit_log", admin, params={"limit": "x"})
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")
    _, plain = await hs.register("plain")
    status, resp = await hs.request("GET", f"{V1}/audit_log", plain)
    assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")
    # a non-admin's refused attempt is not an admin action
    status, _ = await hs.request("PUT", f"{V2}/users/{bob}", plain, {"admin": True})
    assert status == 403
    status, resp = await hs.request("GET", f"{V1}/audit_log", admin)
    assert resp["total"] == 3


async def test_server_version(hs: Harness) -> None:
    status, resp = await hs.request("GET", f"{V1}/server_version")
    assert (status, resp) == (200, {"server_version": f"Starling {__version__}"})


async def test_media_statistics(hs: Harness, admin: str) -> None:
    _, bob_token = await hs.register("bob")
    _, carol_token = await hs.register("carol")
    for token, data in [(bob_token, b"a" * 10), (bob_token, b"b" * 20), (carol_token, b"c" * 5)]:
        async with hs.client.post(
            "/_matrix/media/v3/upload",
            data=data,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
        ) as resp:
            assert resp.status == 200
    status, resp = await hs.request("GET", f"{V1}/statistics/users/media", admin)
    assert status == 200, resp
    assert resp == {
        "users": [
            {"user_id": f"@bob:{HS}", "displayname": "bob", "media_count": 2, "media_length": 30},
            {
                "user_id": f"@carol:{HS}",
                "displayname": "carol",
                "media_count": 1,
                "media_length": 5,
            },
        ],
        "total": 2,
    }
    status, resp = await hs.request(
        "GET",
        f"{V1}/statistics/users/media",
        admin,
        params={"order_by": "media_length", "dir": "f", "limit": "1"},
    )
    assert [u["user_id"] for u in resp["users"]] == [f"@carol:{HS}"] and resp["next_token"] == 1
    status, resp = await hs.request(
        "GET", f"{V1}/statistics/users/media", admin, params={"search_term": "CAR"}
    )
    assert [u["user_id"] for u in resp["users"]] == [f"@carol:{HS}"]
    status, resp = await hs.request(
        "GET", f"{V1}/statistics/users/media", admin, params={"until_ts": "1"}
    )
    assert resp == {"users": [], "total": 0}
    for params in ({"order_by": "size"}, {"dir": "x"}, {"from_ts": "soon"}):
        status, resp = await hs.request("GET", f"{V1}/statistics/users/media", admin, params=params)
        assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM"), params
    status, resp = await hs.request("GET", f"{V1}/statistics/users/media", bob_token)
    assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")


async def test_largest_rooms_and_background_updates(hs: Harness, admin: str) -> None:
    _, bob_token = await hs.register("bob")
    small = await hs.create_room(bob_token)
    big = await hs.create_room(bob_token)
    for i in range(5):
        await hs.send_message(bob_token, big, "x" * 500 + str(i))
    status, resp = await hs.request("GET", f"{V1}/statistics/database/rooms", admin)
    assert status == 200, resp
    assert [r["room_id"] for r in resp["rooms"]] == [big, small]
    assert resp["rooms"][0]["estimated_size"] > resp["rooms"][1]["estimated_size"] > 0
    status, resp = await hs.request("GET", f"{V1}/background_updates/status", admin)
    assert (status, resp) == (200, {"enabled": True, "current_updates": {}})
    for path in ("/statistics/database/rooms", "/background_updates/status"):
        status, resp = await hs.request("GET", f"{V1}{path}", bob_token)
        assert (status, resp["errcode"]) == (403, "M_FORBIDDEN"), path

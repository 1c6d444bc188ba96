"""registration_requires_approval (Synapse's MSC3866): accounts from /register wait for an
admin, who finds them with approved=false and approves them; both engines."""

from __future__ import annotations

from pathlib import Path

from starling.storage import Database
from tests.admin.conftest import CONFIG, login
from tests.support.harness import make_harness

V2 = "/_synapse/admin/v2"
HS = "test.local"
WAITING = "ORG.MATRIX.MSC3866_USER_AWAITING_APPROVAL"


async def test_registration_waits_for_approval(database: Database, tmp_path: Path) -> None:
    config = {
        **CONFIG,
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "registration_requires_approval": True,
    }
    async with make_harness(database, tmp_path, **config) as hs:
        _, admin = await hs.register("root", admin=True)
        body = {"username": "newbie", "password": "pw", "auth": {"type": "m.login.dummy"}}
        status, resp = await hs.request("POST", "/_matrix/client/v3/register", body=body)
        assert (status, resp["errcode"]) == (403, WAITING), resp
        assert resp["approval_notice_medium"] == "org.matrix.msc3866.none"
        newbie = f"@newbie:{HS}"
        assert await hs.services.account_store.user_exists(newbie)
        status, resp = await login(hs, "newbie", "pw")
        assert (status, resp["errcode"]) == (403, WAITING)
        status, resp = await login(hs, "newbie", "wrong")
        assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")  # no hint without the password
        status, resp = await hs.request("GET", f"{V2}/users", admin, params={"approved": "false"})
        assert [u["name"] for u in resp["users"]] == [newbie]
        assert resp["users"][0]["approved"] is False
        status, resp = await hs.request("GET", f"{V2}/users", admin, params={"approved": "true"})
        assert [u["name"] for u in resp["users"]] == [f"@root:{HS}"]
        status, resp = await hs.request("PUT", f"{V2}/users/{newbie}", admin, {"approved": "yes"})
        assert (status, resp["errcode"]) == (400, "M_BAD_JSON")
        status, resp = await hs.request("PUT", f"{V2}/users/{newbie}", admin, {"approved": True})
        assert status == 200 and resp["approved"] is True
        status, resp = await login(hs, "newbie", "pw")
        assert status == 200, resp
        # accounts an admin creates need no approval
        status, resp = await hs.request("PUT", f"{V2}/users/@made:{HS}", admin, {"password": "pw"})
        assert status == 201 and resp["approved"] is True
        status, _ = await login(hs, "made", "pw")
        assert status == 200

"""GET /capabilities."""

from __future__ import annotations

from tests.extras.helpers import V3
from tests.support.harness import Harness


async def test_capabilities(hs: Harness) -> None:
    _, token = await hs.register()
    status, body = await hs.request("GET", f"{V3}/capabilities", token)
    assert status == 200
    caps = body["capabilities"]
    assert caps["m.change_password"] == {"enabled": True}
    assert caps["m.set_displayname"] == {"enabled": True}
    assert caps["m.set_avatar_url"] == {"enabled": True}
    assert caps["m.3pid_changes"] == {"enabled": False}
    assert caps["m.get_login_token"] == {"enabled": False}
    versions = caps["m.room_versions"]
    assert versions["default"] == hs.services.config.default_room_version
    assert versions["available"] == {str(v): "stable" for v in range(1, 13)}
    status, body = await hs.request("GET", f"{V3}/capabilities")
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")

"""password_config.policy (Synapse's, MSC2000's error codes) on registration and password
change; admins setting a password are not held to it. Both engines."""

from __future__ import annotations

from pathlib import Path

import pytest

from starling.config import ConfigError
from starling.storage import Database
from tests.admin.conftest import CONFIG
from tests.support.harness import make_harness, make_test_config

POLICY = {
    "enabled": True,
    "minimum_length": 10,
    "require_digit": True,
    "require_symbol": True,
    "require_lowercase": True,
    "require_uppercase": True,
}


async def test_password_policy(database: Database, tmp_path: Path) -> None:
    config = {
        **CONFIG,
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "password_config": {"policy": POLICY},
    }
    async with make_harness(database, tmp_path, **config) as hs:
        for password, errcode in [
            ("Short1!", "M_PASSWORD_TOO_SHORT"),
            ("NoDigitsHere!", "M_PASSWORD_NO_DIGIT"),
            ("NoSymbols123", "M_PASSWORD_NO_SYMBOL"),
            ("NOLOWER123!", "M_PASSWORD_NO_LOWERCASE"),
            ("noupper123!", "M_PASSWORD_NO_UPPERCASE"),
        ]:
            body = {"username": "u1", "password": password, "auth": {"type": "m.login.dummy"}}
            status, resp = await hs.request("POST", "/_matrix/client/v3/register", body=body)
            assert (status, resp["errcode"]) == (400, errcode), password
        assert not await hs.services.account_store.user_exists("@u1:test.local")
        body = {"username": "u1", "password": "Good-pass-123", "auth": {"type": "m.login.dummy"}}
        status, resp = await hs.request("POST", "/_matrix/client/v3/register", body=body)
        assert status == 200, resp
        token = resp["access_token"]
        auth = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "u1"},
            "password": "Good-pass-123",
        }
        status, resp = await hs.request(
            "POST",
            "/_matrix/client/v3/account/password",
            token,
            {"new_password": "weak", "auth": auth},
        )
        assert (status, resp["errcode"]) == (400, "M_PASSWORD_TOO_SHORT")
        status, resp = await hs.request(
            "POST",
            "/_matrix/client/v3/account/password",
            token,
            {"new_password": "Better-pass-456", "auth": auth, "logout_devices": False},
        )
        assert status == 200, resp
        # an admin may set any non-empty password
        _, admin = await hs.register("root", admin=True)
        status, resp = await hs.request(
            "POST", "/_synapse/admin/v1/reset_password/@u1:test.local", admin, {"new_password": "x"}
        )
        assert status == 200, resp


def test_policy_config_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="minimum_length"):
        make_test_config(tmp_path, password_config={"policy": {"minimum_length": -1}})
    with pytest.raises(ConfigError, match="password_config"):
        make_test_config(tmp_path, password_config={"pepper": "x"})

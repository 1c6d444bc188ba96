"""matrix-nio as a real client: one-shot registration, login on the same device, whoami,\ndevices, logout."""

from __future__ import annotations

from nio import AsyncClient, LoginResponse, LogoutResponse, RegisterResponse

from tests.accounts.conftest import PASSWORD
from tests.support.harness import Harness


async def test_nio_register_login_logout(ohs: Harness) -> None:
    url = str(ohs.client.make_url("")).rstrip("/")
    client = AsyncClient(url, "@niouser:test.local")
    try:
        registered = await client.register("niouser", PASSWORD, device_name="nio")
        assert isinstance(registered, RegisterResponse), registered
        assert registered.user_id == "@niouser:test.local"
        logged_in = await client.login(PASSWORD, device_name="nio laptop")
        assert isinstance(logged_in, LoginResponse), logged_in
        # nio keeps the device from registration and logs in on it again.
        assert logged_in.device_id == registered.device_id
        assert logged_in.access_token != registered.access_token
        whoami = await client.whoami()
        assert whoami.user_id == "@niouser:test.local"  # type: ignore[union-attr]
        devices = await client.devices()
        assert [d.id for d in devices.devices] == [registered.device_id]  # type: ignore[union-attr]
        logged_out = await client.logout()
        assert isinstance(logged_out, LogoutResponse), logged_out
    finally:
        await client.close()

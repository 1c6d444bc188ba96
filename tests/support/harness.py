"""An in-process homeserver for API tests: real services on a real database, the client
listener's aiohttp app behind aiohttp's test client, and helpers to make users."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from aiohttp.test_utils import BaseRunner, TestClient, TestServer

from starling.api.http_server import MatrixAppRunner
from starling.app import Components, build_listener_app, build_services
from starling.config import Config, Listener, ListenerResource, load_config_dict
from starling.federation.transport import build_federation_transport
from starling.protocol.signing import SigningKey
from starling.storage import Database
from starling.storage.server_keys import ServerKeyStore
from tests.support.offline_dns import TableHostResolver, TableSrvResolver

SERVER_NAME = "test.local"

_FAST = {"per_second": 1000, "burst_count": 1000}
# For tests that send many events, joins and invites quickly on purpose.
UNLIMITED_ROOM_RATES: dict[str, Any] = {
    "rc_message": _FAST,
    "rc_joins": {"local": _FAST, "remote": _FAST},
    "rc_joins_per_room": _FAST,
    "rc_invites": {"per_room": _FAST, "per_user": _FAST, "per_issuer": _FAST},
}


class Harness:
    def __init__(self, services: Components, client: TestClient) -> None:
        self.services = services
        self.client = client
        self.server_name = services.config.server_name

    async def register(
        self, localpart: str | None = None, *, admin: bool = False, device_id: str = "DEV"
    ) -> tuple[str, str]:
        """Create a user with a device and access token directly; returns (user_id, token)."""
        localpart = localpart or f"u{secrets.token_hex(4)}"
        user_id = f"@{localpart}:{self.server_name}"
        store = self.services.account_store
        await store.create_user(user_id, None, admin=admin)
        await self.services.profile_store.create_profile(user_id, localpart)
        await store.upsert_device(user_id, device_id, None)
        token = secrets.token_urlsafe(24)
        await store.add_access_token(token, user_id, device_id)
        return user_id, token

    async def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        *,
        raw: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        async with self.client.request(
            method, path, headers=headers, data=data, params=params
        ) as resp:
            text = await resp.read()
            try:
                parsed = orjson.loads(text) if text else None
            except orjson.JSONDecodeError:
                parsed = text
            return resp.status, parsed

    async def create_room(self, token: str, **body: Any) -> str:
        status, resp = await self.request("POST", "/_matrix/client/v3/createRoom", token, body)
        assert status == 200, resp
        room_id: str = resp["room_id"]
        return room_id

    async def send_message(
        self, token: str, room_id: str, text: str, txn: str | None = None
    ) -> str:
        txn = txn or secrets.token_hex(8)
        status, resp = await self.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}",
            token,
            {"msgtype": "m.text", "body": text},
        )
        assert status == 200, resp
        event_id: str = resp["event_id"]
        return event_id


class MatrixTestServer(TestServer):
    """aiohttp's TestServer on the runner `starling serve` uses (its limits and errors)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return MatrixAppRunner(self.app, **kwargs)


def make_test_config(tmp_path: Path, **overrides: Any) -> Config:
    data: dict[str, Any] = {
        "server_name": SERVER_NAME,
        "media_store_path": str(tmp_path / "media"),
        "signing_key_path": str(tmp_path / "signing.key"),
        "registration_shared_secret": "test-shared-secret",
    }
    data.update(overrides)
    return load_config_dict(data, environ={}, config_dir=str(tmp_path))


@asynccontextmanager
async def make_harness(
    database: Database, tmp_path: Path, **config_overrides: Any
) -> AsyncIterator[Harness]:
    config = make_test_config(tmp_path, **config_overrides)
    signing_key = SigningKey.generate()
    # Federation never leaves the machine in tests: SRV and host names from empty tables.
    federation = build_federation_transport(
        config,
        ServerKeyStore(database),
        signing_key,
        srv_resolver=TableSrvResolver(),
        host_resolver=TableHostResolver(),
    )
    services = await build_services(config, database, signing_key, federation=federation)
    listener = Listener(port=0, resources=[ListenerResource(names=["client", "media"])])
    app = build_listener_app(services, listener)
    try:
        async with TestClient(MatrixTestServer(app)) as client:
            yield Harness(services, client)
    finally:
        await federation.close()

"""A real application service for tests: an aiohttp server on loopback that records the
transactions and queries the homeserver sends it, and a homeserver registered with it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from starling.storage import Database
from tests.support.harness import SERVER_NAME, Harness, make_harness

AS_TOKEN = "as-token-for-tests"
HS_TOKEN = "hs-token-for-tests"
AS_ID = "bridge"


class FakeAppService:
    """Records every request; `fail_transactions` makes transactions answer 500."""

    def __init__(self) -> None:
        self.transactions: list[tuple[str, dict[str, Any]]] = []
        self.queries: list[str] = []
        self.auth_headers: list[str | None] = []
        self.fail_transactions = False
        self.on_user_query: Callable[[str], Any] | None = None
        self.on_alias_query: Callable[[str], Any] | None = None
        self.protocol_answer: dict[str, Any] | None = None
        self.changed = asyncio.Event()
        self.registration_extra: dict[str, Any] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    def registration(self, **overrides: Any) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": AS_ID,
            "url": self.url,
            "as_token": AS_TOKEN,
            "hs_token": HS_TOKEN,
            "sender_localpart": "bridgebot",
            "namespaces": {
                "users": [{"regex": f"@bridge_.*:{SERVER_NAME}", "exclusive": True}],
                "aliases": [{"regex": f"#bridge_.*:{SERVER_NAME}", "exclusive": True}],
                "rooms": [],
            },
            "rate_limited": False,
            "protocols": ["fakenet"],
            "receive_ephemeral": True,
        }
        data.update(self.registration_extra)
        data.update(overrides)
        return data

    async def _transaction(self, request: web.Request) -> web.Response:
        self.auth_headers.append(request.headers.get("Authorization"))
        if self.fail_transactions:
            return web.json_response({"errcode": "M_UNKNOWN"}, status=500)
        txn_id = request.match_info["txn"]
        # As the spec asks of services: a transaction ID seen before is answered, not
        # processed again (a sender stopped mid-request sends it again).
        if txn_id not in {t for t, _ in self.transactions}:
            self.transactions.append((txn_id, await request.json()))
        self.changed.set()
        return web.json_response({})

    async def _user(self, request: web.Request) -> web.Response:
        user_id = request.match_info["user"]
        self.queries.append(user_id)
        self.auth_headers.append(request.headers.get("Authorization"))
        if self.on_user_query is not None and await self.on_user_query(user_id):
            return web.json_response({})
        return web.json_response({"errcode": "M_NOT_FOUND"}, status=404)

    async def _alias(self, request: web.Request) -> web.Response:
        alias = request.match_info["alias"]
        self.queries.append(alias)
        if self.on_alias_query is not None and await self.on_alias_query(alias):
            return web.json_response({})
        return web.json_response({"errcode": "M_NOT_FOUND"}, status=404)

    async def _protocol(self, request: web.Request) -> web.Response:
        if self.protocol_answer is None:
            return web.json_response({"errcode": "M_NOT_FOUND"}, status=404)
        return web.json_response(self.protocol_answer)

    async def _ping(self, request: web.Request) -> web.Response:
        self.auth_headers.append(request.headers.get("Authorization"))
        self.queries.append("ping:" + str((await request.json()).get("transaction_id")))
        return web.json_response({})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_put("/_matrix/app/v1/transactions/{txn}", self._transaction)
        app.router.add_get("/_matrix/app/v1/users/{user}", self._user)
        app.router.add_get("/_matrix/app/v1/rooms/{alias}", self._alias)
        app.router.add_get("/_matrix/app/v1/thirdparty/protocol/{protocol}", self._protocol)
        app.router.add_post("/_matrix/app/v1/ping", self._ping)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def events(self) -> list[dict[str, Any]]:
        return [e for _, body in self.transactions for e in body.get("events", [])]

    async def wait_for(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        """Until `check()` holds (bounded)."""
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.2)


def write_registration(tmp_path: Path, data: dict[str, Any], name: str = "as.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


@asynccontextmanager
async def appservice_harness(
    database: Database, tmp_path: Path, fake: FakeAppService, **config: Any
) -> AsyncIterator[Harness]:
    """A homeserver with `fake` registered, its sender running."""
    path = write_registration(tmp_path, fake.registration())
    async with make_harness(
        database,
        tmp_path,
        app_service_config_files=[path],
        enable_registration=True,
        enable_registration_without_verification=True,
        **config,
    ) as hs:
        await hs.services.accounts.ensure_app_service_senders()
        await hs.services.app_service_sender.start()
        try:
            yield hs
        finally:
            await hs.services.app_service_sender.stop()
            await hs.services.app_service_client.close()

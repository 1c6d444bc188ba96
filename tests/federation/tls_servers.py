"""Local HTTPS test servers for federation unit tests: an aiohttp app served over TLS on
127.0.0.1 with a certificate from a throwaway CA, and a FederationClient config that
reaches it without leaving the machine."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from starling.config import Config, load_config_dict
from tests.federation.harness import TestPKI, make_test_pki


def pki_for(tmp_path: Path, hostnames: tuple[str, ...] = ("localhost", "example.test")) -> TestPKI:
    return make_test_pki(tmp_path / "pki", hostnames)


@asynccontextmanager
async def tls_app(
    app: web.Application, pki: TestPKI, host: str = "127.0.0.1"
) -> AsyncIterator[int]:
    """Serve `app` over TLS on `host` (127.0.0.1 or ::1); yields the port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pki.cert), str(pki.key))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0, ssl_context=context)
    await site.start()
    port = int(runner.addresses[0][1])
    try:
        yield port
    finally:
        await runner.cleanup()


def client_config(tmp_path: Path, **overrides: Any) -> Config:
    data: dict[str, Any] = {
        "server_name": "origin.test",
        "trusted_key_servers": [],
    }
    data.update(overrides)
    return load_config_dict(data, environ={}, config_dir=str(tmp_path))

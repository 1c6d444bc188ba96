"""The access log never records a secret: token-bearing query parameters are redacted."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from starling.api.http import make_web_app

SECRET = "syt_c2VjcmV0_token_value"


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({})


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    app = make_web_app(1024)
    app.router.add_get("/_matrix/client/v3/account/whoami", _ok)
    async with TestClient(TestServer(app)) as c:
        yield c


@pytest.mark.parametrize(
    "query",
    [
        f"access_token={SECRET}",
        f"a=1&access_token={SECRET}&b=2",
        f"access%5Ftoken={SECRET}",
        f"token={SECRET}",
        f"login_token={SECRET}",
        f"loginToken={SECRET}",
        f"refresh_token={SECRET}",
        f"client_secret={SECRET}",
    ],
)
async def test_the_access_log_redacts_tokens(
    client: TestClient, caplog: pytest.LogCaptureFixture, query: str
) -> None:
    with caplog.at_level(logging.INFO, logger="starling.access"):
        r = await client.get(f"/_matrix/client/v3/account/whoami?{query}")
        assert r.status == 200
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "starling.access"]
    assert len(lines) == 1
    assert SECRET not in lines[0]
    assert "/_matrix/client/v3/account/whoami?" in lines[0] and "<redacted>" in lines[0]


async def test_other_parameters_stay_in_the_access_log(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="starling.access"):
        await client.get("/_matrix/client/v3/account/whoami?since=s1_2&timeout=30000")
    (line,) = [rec.getMessage() for rec in caplog.records if rec.name == "starling.access"]
    assert "?since=s1_2&timeout=30000" in line

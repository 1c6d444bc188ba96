"""The HTTP edge: Matrix errors for unknown paths and methods, limits, CORS, discovery."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from starling.api.discovery import DiscoveryResource, register_metrics
from starling.api.http import make_web_app, read_json_object
from starling.config import load_config_dict
from starling.errors import MatrixError
from starling.storage.database import UniqueViolation


async def _echo(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    return web.json_response({"got": body})


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError("a bug")


async def _forbidden(request: web.Request) -> web.Response:
    raise MatrixError(403, "M_FORBIDDEN", "no")


async def _unique(request: web.Request) -> web.Response:
    raise UniqueViolation("UNIQUE constraint failed: events.event_id")


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    config = load_config_dict(
        {
            "server_name": "example.org",
            "serve_server_wellknown": True,
            "public_baseurl": "https://matrix.example.org",
            "extra_well_known_client_content": {"org.example.custom": {"x": 1}},
            "max_request_body_size": 2048,
        },
        environ={},
    )
    app = make_web_app(config.max_request_body_size)
    DiscoveryResource(config).register(app, client=True, federation=True)
    register_metrics(app)
    app.router.add_post("/echo", _echo)
    app.router.add_get("/boom", _boom)
    app.router.add_get("/forbidden", _forbidden)
    app.router.add_get("/unique", _unique)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_versions(client: TestClient) -> None:
    r = await client.get("/_matrix/client/versions")
    assert r.status == 200
    body = await r.json()
    assert "v1.11" in body["versions"] and "v1.1" in body["versions"]
    assert r.headers["Access-Control-Allow-Origin"] == "*"


async def test_unknown_endpoint_is_m_unrecognized_404(client: TestClient) -> None:
    r = await client.get("/_matrix/client/v3/nope")
    assert r.status == 404
    assert (await r.json())["errcode"] == "M_UNRECOGNIZED"


async def test_wrong_method_is_m_unrecognized_405(client: TestClient) -> None:
    r = await client.post("/_matrix/client/versions")
    assert r.status == 405
    assert (await r.json())["errcode"] == "M_UNRECOGNIZED"


async def test_cors_preflight_on_any_path(client: TestClient) -> None:
    r = await client.options("/_matrix/client/v3/sync")
    assert r.status in (200, 204)
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    assert "PUT" in r.headers["Access-Control-Allow-Methods"]


async def test_body_over_limit_is_m_too_large(client: TestClient) -> None:
    r = await client.post("/echo", data=b'{"a":"' + b"x" * 5000 + b'"}')
    assert r.status == 413
    assert (await r.json())["errcode"] == "M_TOO_LARGE"


@pytest.mark.parametrize(
    "body", [b"{not json", b"[1,2]", b'"str"', b"", b"\xff\xfe", b"[" * 100 + b"]" * 100]
)
async def test_malformed_json_is_m_not_json(client: TestClient, body: bytes) -> None:
    r = await client.post("/echo", data=body)
    assert r.status == 400
    assert (await r.json())["errcode"] == "M_NOT_JSON"


async def test_deeply_nested_object_is_refused(client: TestClient) -> None:
    deep = b'{"a":' * 70 + b"1" + b"}" * 70
    r = await client.post("/echo", data=deep)
    assert r.status == 400
    assert (await r.json())["errcode"] == "M_NOT_JSON"


async def test_valid_json_passes(client: TestClient) -> None:
    r = await client.post("/echo", data=b'{"a": [1, {"b": null}]}')
    assert r.status == 200
    assert (await r.json()) == {"got": {"a": [1, {"b": None}]}}


async def test_matrix_error_and_bug(client: TestClient) -> None:
    r = await client.get("/forbidden")
    assert r.status == 403 and (await r.json())["errcode"] == "M_FORBIDDEN"
    r = await client.get("/boom")
    assert r.status == 500
    assert (await r.json()) == {"errcode": "M_UNKNOWN", "error": "Internal server error"}
    assert r.headers["Access-Control-Allow-Origin"] == "*"


async def test_well_known(client: TestClient) -> None:
    r = await client.get("/.well-known/matrix/client")
    body = await r.json()
    assert body["m.homeserver"]["base_url"] == "https://matrix.example.org/"
    assert body["org.example.custom"] == {"x": 1}
    # Delegation to port 443 of the server name (Synapse's rule): whoever fetched this
    # reached us there; the federation listener's port may be behind a proxy.
    r = await client.get("/.well-known/matrix/server")
    assert (await r.json()) == {"m.server": "example.org:443"}


async def test_health_and_metrics(client: TestClient) -> None:
    r = await client.get("/health")
    assert r.status == 200 and await r.text() == "OK"
    await client.get("/_matrix/client/versions")
    r = await client.get("/metrics")
    text = await r.text()
    assert "starling_http_requests_total" in text
    assert 'route="/_matrix/client/versions"' in text


async def test_unexpected_unique_violation_is_a_retryable_conflict(client: TestClient) -> None:
    resp = await client.get("/unique")
    assert resp.status == 409
    body = await resp.json()
    assert body["errcode"] == "M_UNKNOWN" and "retry" in body["error"]

"""Inbound federation in-process, on both engines: X-Matrix authentication of every
federation request (destination, own name, whitelist, body, keys), the on_inbound_request
hooks, /version, the key endpoints and notary queries, and rc_federation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from starling.app import build_listener_app
from starling.config import FederationRateLimit, Listener, ListenerResource
from starling.errors import MatrixError
from starling.federation.ratelimit import FederationRateLimiter
from starling.protocol.signing import SigningKey, build_server_keys, verify_signed_json
from starling.protocol.x_matrix import sign_request
from tests.support.harness import Harness

REMOTE = "remote.test"
PUBLIC_ROOMS = "/_matrix/federation/v1/publicRooms"


@pytest.fixture
def hs_config() -> dict[str, Any]:
    return {
        "federation_domain_whitelist": [REMOTE, "unknown.test"],
        "allow_public_rooms_over_federation": True,
    }


@pytest.fixture
async def fed(hs: Harness) -> AsyncIterator[TestClient]:
    listener = Listener(port=0, resources=[ListenerResource(names=["federation", "keys"])])
    app = build_listener_app(hs.services, listener)
    async with TestClient(TestServer(app)) as client:
        yield client


async def remote_key(hs: Harness) -> SigningKey:
    """A key of REMOTE's that hs already holds (as if fetched)."""
    key = SigningKey.generate("r1")
    keyring = hs.services.federation.keyring
    await keyring.accept_response(
        REMOTE, build_server_keys(REMOTE, [key], keyring.now_ms() + 86_400_000), from_server=REMOTE
    )
    return key


async def call(
    fed: TestClient,
    method: str,
    path: str,
    *,
    origin: str = REMOTE,
    key: SigningKey | None = None,
    destination: str = "test.local",
    body: Any = None,
    raw: bytes | None = None,
    header: str | None = None,
) -> tuple[int, Any]:
    headers = {}
    if header is not None:
        headers["Authorization"] = header
    elif key is not None:
        headers["Authorization"] = sign_request(
            key, method=method, uri=path, origin=origin, destination=destination, content=body
        )
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    async with fed.request(method, path, headers=headers, data=data) as resp:
        text = await resp.read()
        return resp.status, orjson.loads(text) if text else None


async def test_authentication(hs: Harness, fed: TestClient) -> None:
    key = await remote_key(hs)
    seen: list[str] = []
    hs.services.federation.on_inbound_request.append(seen.append)

    assert (await call(fed, "GET", PUBLIC_ROOMS, key=key))[0] == 200
    status, body = await call(fed, "POST", PUBLIC_ROOMS, key=key, body={"limit": 1})
    assert status == 200 and body["chunk"] == [], body
    assert seen == [REMOTE, REMOTE]

    def errcode(result: tuple[int, Any]) -> tuple[int, str]:
        return result[0], result[1]["errcode"]

    unauthorized = (401, "M_UNAUTHORIZED")
    assert errcode(await call(fed, "GET", PUBLIC_ROOMS)) == unauthorized
    # A header that does not parse is a malformed request (400), as is an origin that is
    # not a server name ("localhost:http": SyTest's non-numeric port test).
    malformed = (400, "M_UNAUTHORIZED")
    assert errcode(await call(fed, "GET", PUBLIC_ROOMS, header="X-Matrix garbage")) == malformed
    bad_origin = 'X-Matrix origin="localhost:http",key="ed25519:1",sig="c2ln"'
    assert errcode(await call(fed, "GET", PUBLIC_ROOMS, header=bad_origin)) == malformed
    assert errcode(await call(fed, "GET", PUBLIC_ROOMS, key=key, destination="x.test")) == (
        unauthorized
    )
    assert (
        errcode(await call(fed, "GET", PUBLIC_ROOMS, key=SigningKey.generate("r1"))) == unauthorized
    )
    # Signed for one URI, sent to another.
    signed_get = sign_request(
        key, method="GET", uri=PUBLIC_ROOMS, origin=REMOTE, destination="test.local"
    )
    assert errcode(await call(fed, "GET", PUBLIC_ROOMS + "?x=1", header=signed_get)) == (
        unauthorized
    )
    assert (await call(fed, "GET", PUBLIC_ROOMS, header=signed_get))[0] == 200
    # The signed body is not the one sent.
    signed = sign_request(
        key,
        method="POST",
        uri=PUBLIC_ROOMS,
        origin=REMOTE,
        destination="test.local",
        content={"limit": 1},
    )
    assert (
        errcode(await call(fed, "POST", PUBLIC_ROOMS, header=signed, body={"limit": 2}))
        == unauthorized
    )
    # A key of an algorithm that does not exist: refused without asking for keys.
    fetches_before = len(hs.services.federation.keyring._last_fetch)
    odd = signed_get.replace('key="ed25519:r1"', 'key="curve9:r1"')
    assert errcode(await call(fed, "GET", PUBLIC_ROOMS, header=odd)) == unauthorized
    assert len(hs.services.federation.keyring._last_fetch) == fetches_before
    # Our own name, a server whose keys cannot be had, one outside the whitelist.
    own = hs.services.signing_key
    assert errcode(await call(fed, "GET", PUBLIC_ROOMS, origin="test.local", key=own)) == (
        unauthorized
    )
    assert (
        errcode(
            await call(fed, "GET", PUBLIC_ROOMS, origin="unknown.test", key=SigningKey.generate())
        )
        == unauthorized
    )
    assert errcode(
        await call(fed, "GET", PUBLIC_ROOMS, origin="other.test", key=SigningKey.generate())
    ) == (403, "M_FORBIDDEN")
    # A body that is not JSON.
    bad = sign_request(
        key, method="POST", uri=PUBLIC_ROOMS, origin=REMOTE, destination="test.local"
    )
    assert errcode(await call(fed, "POST", PUBLIC_ROOMS, header=bad, raw=b"{nope")) == (
        400,
        "M_NOT_JSON",
    )
    assert seen == [REMOTE, REMOTE, REMOTE]  # failures call no hook
    # A federation listener takes bodies the size of a full transaction (client: 1 MiB).
    big = {"limit": 1, "padding": "x" * (3 * 1024 * 1024)}
    assert (await call(fed, "POST", PUBLIC_ROOMS, key=key, body=big))[0] == 200


async def test_version_and_key_endpoints(hs: Harness, fed: TestClient) -> None:
    status, body = await call(fed, "GET", "/_matrix/federation/v1/version")
    assert status == 200 and body["server"]["name"] == "Starling"
    ours = hs.services.signing_key
    status, keys = await call(fed, "GET", "/_matrix/key/v2/server")
    assert status == 200 and keys["server_name"] == "test.local"
    verify_signed_json(keys, "test.local", ours.key_id, ours.verify_key)
    assert (await call(fed, "GET", f"/_matrix/key/v2/server/{ours.key_id}"))[1] == keys

    key = await remote_key(hs)
    status, body = await call(fed, "GET", f"/_matrix/key/v2/query/{REMOTE}")
    assert status == 200, body
    (answer,) = body["server_keys"]
    verify_signed_json(answer, REMOTE, key.key_id, key.verify_key)
    verify_signed_json(answer, "test.local", ours.key_id, ours.verify_key)
    # The deprecated form naming the key: the same answer.
    status, named = await call(fed, "GET", f"/_matrix/key/v2/query/{REMOTE}/{key.key_id}")
    assert status == 200 and named["server_keys"][0]["verify_keys"] == answer["verify_keys"]

    status, body = await call(
        fed,
        "POST",
        "/_matrix/key/v2/query",
        body={
            "server_keys": {
                REMOTE: {key.key_id: {"minimum_valid_until_ts": 0}},
                "test.local": {},
                "not a name!": {},
            }
        },
    )
    assert status == 200
    assert sorted(a["server_name"] for a in body["server_keys"]) == [REMOTE, "test.local"]
    status, body = await call(fed, "POST", "/_matrix/key/v2/query", body={"server_keys": {}})
    assert (status, body) == (200, {"server_keys": []})
    for bad in (
        {},
        {"server_keys": []},
        {"server_keys": {REMOTE: []}},
        {"server_keys": {REMOTE: {"k": {"minimum_valid_until_ts": "x"}}}},
        {"server_keys": {f"s{i}.test": {} for i in range(101)}},
        {"server_keys": {REMOTE: {f"ed25519:{i}": {} for i in range(21)}}},
    ):
        status, body = await call(fed, "POST", "/_matrix/key/v2/query", body=bad)
        assert status == 400 and body["errcode"].startswith("M_"), bad
    status, body = await call(
        fed, "GET", f"/_matrix/key/v2/query/{REMOTE}?minimum_valid_until_ts=soon"
    )
    assert status == 400


# --- rc_federation -----------------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(0)


async def test_rate_limiter_sleeps_queues_and_rejects() -> None:
    t = FakeTime()
    limits = FederationRateLimit(
        window_size=1000, sleep_limit=2, sleep_delay=500, reject_limit=1, concurrent=2
    )
    limiter = FederationRateLimiter(limits, clock=t.clock, sleep=t.sleep)
    r1 = await limiter.acquire("a.test")
    r2 = await limiter.acquire("a.test")
    assert t.slept == []
    # Third in the window: delayed, then queued behind the two in progress.
    third = asyncio.create_task(limiter.acquire("a.test"))
    await asyncio.sleep(0.01)
    assert t.slept == [0.5] and not third.done()
    # Another origin is not affected.
    (await limiter.acquire("b.test"))()
    fourth = asyncio.create_task(limiter.acquire("a.test"))
    await asyncio.sleep(0.01)
    # Two waiting now: more than reject_limit (1) → the next is refused.
    with pytest.raises(MatrixError) as e:
        await limiter.acquire("a.test")
    assert (e.value.status, e.value.errcode) == (429, "M_LIMIT_EXCEEDED")
    r1()
    r3 = await asyncio.wait_for(third, 5)
    assert not fourth.done()
    r2()
    r4 = await asyncio.wait_for(fourth, 5)
    r1()  # releasing twice is harmless
    r3()
    r4()
    # A new window: no delay.
    t.now += 2
    t.slept.clear()
    (await limiter.acquire("a.test"))()
    assert t.slept == []


async def test_no_rate_limit_config_never_limits(tmp_path: Path) -> None:
    from starling.config import load_config_dict
    from starling.generate_config import build_config

    cfg = load_config_dict(build_config("x.test", no_rate_limit=True), environ={})
    limiter = FederationRateLimiter(cfg.rc_federation)
    releases = [await limiter.acquire("a.test") for _ in range(500)]
    for release in releases:
        release()

"""CBOR over HTTP (MSC3079 "JSON -> CBOR"): CBOR request bodies are read, answers are CBOR
only when the request's Accept asks, with integer keys only for clients that used them."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

from starling.protocol.lowbandwidth import codec
from tests.support.harness import UNLIMITED_ROOM_RATES, Harness

CBOR = "application/cbor"


@pytest.fixture
def hs_config() -> dict[str, Any]:
    return UNLIMITED_ROOM_RATES


async def post_cbor(
    hs: Harness, path: str, token: str, body: bytes, accept: str | None = CBOR
) -> tuple[int, str, bytes]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": CBOR}
    if accept:
        headers["Accept"] = accept
    async with hs.client.post(path, data=body, headers=headers) as resp:
        return resp.status, resp.content_type, await resp.read()


async def test_cbor_request_and_answer(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    # {56: "lb room"}: "name" by its integer key (version 1).
    status, ctype, raw = await post_cbor(
        hs, "/_matrix/client/v3/createRoom", tok, cbor2.dumps({56: "lb room"})
    )
    assert status == 200 and ctype == CBOR
    decoded = cbor2.loads(raw)
    assert 5 in decoded  # room_id by its integer key: the client used integer keys
    room_id = codec.expand(decoded)["room_id"]
    status, name = await hs.request(
        "GET", f"/_matrix/client/v3/rooms/{room_id}/state/m.room.name/", tok
    )
    assert status == 200 and name["name"] == "lb room"

    # Without Accept: a CBOR body is read, the answer stays JSON.
    status, ctype, raw = await post_cbor(
        hs, "/_matrix/client/v3/createRoom", tok, cbor2.dumps({"name": "x"}), accept=None
    )
    assert status == 200 and ctype == "application/json"

    # A GET asking for CBOR gets string keys (the client never used integer keys).
    async with hs.client.get(
        "/_matrix/client/v3/sync", headers={"Authorization": f"Bearer {tok}", "Accept": CBOR}
    ) as resp:
        assert resp.status == 200 and resp.content_type == CBOR
        sync = cbor2.loads(await resp.read())
    assert room_id in sync["rooms"]["join"]


@pytest.mark.parametrize(
    "body, errcode",
    [(b"\xa5\x02", "M_NOT_JSON"), (cbor2.dumps({"x": 1.5}), "M_BAD_JSON")],
)
async def test_bad_cbor_is_a_matrix_error(hs: Harness, body: bytes, errcode: str) -> None:
    _, tok = await hs.register("bob")
    status, ctype, raw = await post_cbor(hs, "/_matrix/client/v3/createRoom", tok, body)
    assert status == 400 and ctype == CBOR
    assert codec.decode(raw)["errcode"] == errcode
    # And in JSON for a client that did not ask for CBOR.
    status, ctype, raw = await post_cbor(
        hs, "/_matrix/client/v3/createRoom", tok, body, accept=None
    )
    assert status == 400 and ctype == "application/json"

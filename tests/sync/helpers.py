"""Helpers shared by the sync tests."""

from __future__ import annotations

from typing import Any

import orjson

from tests.support.harness import Harness

V3 = "/_matrix/client/v3"


async def sync(hs: Harness, token: str, since: str | None = None, **params: Any) -> dict[str, Any]:
    query: dict[str, str] = {}
    if since is not None:
        query["since"] = since
    for key, value in params.items():
        if isinstance(value, dict):
            query[key] = orjson.dumps(value).decode()
        elif isinstance(value, bool):
            query[key] = "true" if value else "false"
        else:
            query[key] = str(value)
    status, body = await hs.request("GET", f"{V3}/sync", token, params=query)
    assert status == 200, body
    result: dict[str, Any] = body
    return result


async def settled_token(hs: Harness, token: str, **params: Any) -> str:
    """A since token with everything so far consumed: an initial sync, then incremental
    ones until nothing is new (the first sync itself may move streams, e.g. presence)."""
    body = await sync(hs, token, **params)
    for _ in range(5):
        nxt = await sync(hs, token, since=body["next_batch"], **params)
        if nxt["next_batch"] == body["next_batch"]:
            break
        body = nxt
    batch: str = body["next_batch"]
    return batch


def timeline_bodies(room: dict[str, Any]) -> list[str]:
    return [
        e["content"]["body"]
        for e in room["timeline"]["events"]
        if e["type"] == "m.room.message" and "body" in e["content"]
    ]


async def join(hs: Harness, token: str, room_id: str) -> None:
    status, body = await hs.request("POST", f"{V3}/join/{room_id}", token, {})
    assert status == 200, body


async def invite(hs: Harness, token: str, room_id: str, user_id: str) -> None:
    status, body = await hs.request(
        "POST", f"{V3}/rooms/{room_id}/invite", token, {"user_id": user_id}
    )
    assert status == 200, body


async def leave(hs: Harness, token: str, room_id: str) -> None:
    status, body = await hs.request("POST", f"{V3}/rooms/{room_id}/leave", token, {})
    assert status == 200, body


async def set_state(
    hs: Harness, token: str, room_id: str, etype: str, content: dict[str, Any], key: str = ""
) -> str:
    status, body = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/state/{etype}/{key}", token, content
    )
    assert status == 200, body
    event_id: str = body["event_id"]
    return event_id

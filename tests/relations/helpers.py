"""Helpers shared by the relations tests."""

from __future__ import annotations

import secrets
from typing import Any

from tests.support.harness import Harness

V1 = "/_matrix/client/v1"
V3 = "/_matrix/client/v3"


async def send(
    hs: Harness, token: str, room_id: str, content: dict[str, Any], etype: str = "m.room.message"
) -> str:
    status, body = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/send/{etype}/{secrets.token_hex(8)}", token, content
    )
    assert status == 200, body
    event_id: str = body["event_id"]
    return event_id


def text(body: str, **extra: Any) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body, **extra}


async def reply_in_thread(hs: Harness, token: str, room_id: str, root: str, body: str) -> str:
    return await send(
        hs,
        token,
        room_id,
        text(body, **{"m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
    )


async def edit(
    hs: Harness, token: str, room_id: str, target: str, body: str, etype: str = "m.room.message"
) -> str:
    content = text(
        f"* {body}",
        **{
            "m.new_content": text(body),
            "m.relates_to": {"rel_type": "m.replace", "event_id": target},
        },
    )
    return await send(hs, token, room_id, content, etype)


async def reference(hs: Harness, token: str, room_id: str, target: str, body: str) -> str:
    return await send(
        hs,
        token,
        room_id,
        text(body, **{"m.relates_to": {"rel_type": "m.reference", "event_id": target}}),
    )


async def react(hs: Harness, token: str, room_id: str, target: str, key: str) -> str:
    return await send(
        hs,
        token,
        room_id,
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": key}},
        "m.reaction",
    )


async def redact(hs: Harness, token: str, room_id: str, event_id: str) -> None:
    status, body = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/redact/{event_id}/{secrets.token_hex(8)}", token, {}
    )
    assert status == 200, body


async def get_event(hs: Harness, token: str, room_id: str, event_id: str) -> dict[str, Any]:
    status, body = await hs.request("GET", f"{V3}/rooms/{room_id}/event/{event_id}", token)
    assert status == 200, body
    result: dict[str, Any] = body
    return result


def relations_of(event: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = event.get("unsigned", {}).get("m.relations", {})
    return found


async def relations(
    hs: Harness, token: str, room_id: str, event_id: str, *path: str, **params: str
) -> tuple[int, Any]:
    tail = "".join(f"/{p}" for p in path)
    return await hs.request(
        "GET", f"{V1}/rooms/{room_id}/relations/{event_id}{tail}", token, params=params
    )


async def threads(hs: Harness, token: str, room_id: str, **params: str) -> tuple[int, Any]:
    return await hs.request("GET", f"{V1}/rooms/{room_id}/threads", token, params=params)


def ids(chunk: list[dict[str, Any]]) -> list[str]:
    return [e["event_id"] for e in chunk]

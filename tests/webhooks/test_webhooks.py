"""Webhooks end to end on both engines: a POST to an incoming hook's secret URL posts to
its room; a room's events reach a real HTTP receiver, signed, retried, and given up on
into a dead letter after the last attempt."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from starling.config import ConfigError, load_config_dict
from starling.storage import Database
from tests.support.harness import Harness, make_harness

V3 = "/_matrix/client/v3"
SECRET = "s3cret-s3cret-s3cret"


async def _room(database: Database, tmp_path: Path) -> tuple[str, str]:
    """A public room with an owner, made before the hooks are configured for it."""
    async with make_harness(database, tmp_path) as hs:
        _, token = await hs.register("owner")
        return await hs.create_room(token, preset="public_chat"), token


class Receiver:
    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self.attempts = 0
        self.changed = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        self.attempts += 1
        self.changed.set()
        if self.status != 200:
            return web.Response(status=self.status)
        self.received.append((dict(request.headers), await request.read()))
        return web.json_response({})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, check: Callable[[], bool], timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.2)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


async def _messages(hs: Harness, token: str, room_id: str) -> list[dict[str, Any]]:
    status, body = await hs.request("GET", f"{V3}/rooms/{room_id}/messages?dir=b&limit=20", token)
    assert status == 200, body
    return [e for e in body["chunk"] if e["type"] == "m.room.message"]


async def test_incoming_webhook_posts_as_its_bot(database: Database, tmp_path: Path) -> None:
    room_id, token = await _room(database, tmp_path)
    hooks = {
        "incoming": [
            {"id": "crm", "room_id": room_id, "secret": SECRET, "sender_localpart": "crm-bot"},
            {
                "id": "lead",
                "room_id": room_id,
                "secret": SECRET + "2",
                "template": "New lead: $name ($value €) $missing",
            },
        ]
    }
    async with make_harness(database, tmp_path, webhooks=hooks) as hs:
        path = "/_starling/webhooks/v1/incoming"
        status, body = await hs.request("POST", f"{path}/crm/{SECRET}", None, {"text": "hi"})
        assert status == 200, body
        status, body = await hs.request(
            "POST",
            f"{path}/lead/{SECRET}2",
            None,
            {"name": "ACME", "value": 1200, "nested": {"x": 1}},
        )
        assert status == 200, body
        messages = await _messages(hs, token, room_id)
        texts = [(m["sender"], m["content"]["body"]) for m in reversed(messages)]
        assert texts == [
            ("@crm-bot:test.local", "hi"),
            ("@webhook:test.local", "New lead: ACME (1200 €) $missing"),
        ]
        # A wrong secret and an unknown hook look the same.
        for bad in (f"{path}/crm/wrong-secret-wrong", f"{path}/nope/{SECRET}"):
            status, body = await hs.request("POST", bad, None, {"text": "x"})
            assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        status, body = await hs.request("POST", f"{path}/crm/{SECRET}", None, {"text": 5})
        assert (status, body["errcode"]) == (400, "M_BAD_JSON")


async def test_incoming_webhook_into_a_room_its_bot_cannot_join(
    database: Database, tmp_path: Path
) -> None:
    async with make_harness(database, tmp_path) as hs:
        _, token = await hs.register("owner")
        room_id = await hs.create_room(token)  # private
    hooks = {"incoming": [{"id": "crm", "room_id": room_id, "secret": SECRET}]}
    async with make_harness(database, tmp_path, webhooks=hooks) as hs:
        status, body = await hs.request(
            "POST", f"/_starling/webhooks/v1/incoming/crm/{SECRET}", None, {"text": "hi"}
        )
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")


async def test_outgoing_webhook_signs_filters_and_dead_letters(
    database: Database, tmp_path: Path, receiver: Receiver
) -> None:
    room_id, _ = await _room(database, tmp_path)
    hooks = {
        "outgoing": [
            {
                "id": "crm",
                "room_id": room_id,
                "url": receiver.url,
                "secret": SECRET,
                "keywords": ["invoice"],
                "max_attempts": 2,
            }
        ]
    }
    async with make_harness(database, tmp_path, webhooks=hooks) as hs:
        _, token = await hs.register("member")
        await hs.request("POST", f"{V3}/rooms/{room_id}/join", token, {})
        sender = hs.services.outgoing_webhooks
        await sender.start()
        try:
            await hs.send_message(token, room_id, "lunch?")
            await hs.send_message(token, room_id, "the Invoice is paid")
            await receiver.wait_for(lambda: len(receiver.received) >= 1)
            headers, raw = receiver.received[0]
            expected = hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
            assert headers["X-Starling-Signature"] == f"sha256={expected}"
            assert b"the Invoice is paid" in raw and b"lunch" not in raw
            # The receiver fails: two attempts, then a dead letter, and the next one goes.
            receiver.status = 500
            await hs.send_message(token, room_id, "invoice 2")
            await receiver.wait_for(lambda: receiver.attempts >= 3)
            await asyncio.sleep(0.2)
            receiver.status = 200
            await hs.send_message(token, room_id, "invoice 3")
            await receiver.wait_for(lambda: len(receiver.received) >= 2)
            assert b"invoice 3" in receiver.received[1][1]
            dead = await hs.services.outgoing_webhooks.dead_letters("crm")
            assert [(attempts, error) for _, attempts, error in dead] == [(2, "HTTP 500")]
        finally:
            await sender.stop()


def test_webhook_config_is_checked() -> None:
    base = {"server_name": "a.org"}
    good = {"id": "x", "room_id": "!r:a.org", "secret": SECRET}
    for bad, message in [
        ({**good, "secret": "short"}, "secret"),
        ({**good, "room_id": "nope"}, "room_id"),
        ({**good, "id": "bad id"}, "id"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config_dict({**base, "webhooks": {"incoming": [bad]}}, environ={})
    with pytest.raises(ConfigError, match="url"):
        load_config_dict(
            {**base, "webhooks": {"outgoing": [{**good, "url": "ftp://x"}]}}, environ={}
        )
    with pytest.raises(ConfigError, match="used twice"):
        load_config_dict({**base, "webhooks": {"incoming": [good, good]}}, environ={})

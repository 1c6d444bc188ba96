"""The module API with a module written here: it refuses messages containing a word,
is told of every new event, and sends a message through its handle (both engines)."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from starling.config import ConfigError
from starling.modules.api import NOT_SPAM, ModuleApi
from starling.storage import Database
from tests.support.harness import make_harness

V3 = "/_matrix/client/v3"
SEEN: list[dict[str, Any]] = []


class WordFilter:
    """Refuses events whose body contains the configured word; records every new event."""

    changed: asyncio.Event  # set by each test, on its own event loop

    def __init__(self, config: dict[str, Any], api: ModuleApi) -> None:
        self.word = str(config["word"]).casefold()
        self.api = api
        api.register_spam_checker_callbacks(check_event_for_spam=self.check)
        api.register_event_listener(self.seen)

    async def check(self, event: dict[str, Any]) -> str:
        body = event["content"].get("body")
        if isinstance(body, str) and self.word in body.casefold():
            return f"Messages may not mention {self.word}"
        return NOT_SPAM

    async def seen(self, event: dict[str, Any]) -> None:
        SEEN.append(event)
        WordFilter.changed.set()


class Broken:
    def __init__(self, config: dict[str, Any], api: ModuleApi) -> None:
        raise ValueError("needs a 'url'")


async def test_a_module_refuses_a_word_and_hears_events(database: Database, tmp_path: Path) -> None:
    SEEN.clear()
    WordFilter.changed = asyncio.Event()
    modules = [{"module": f"{__name__}.WordFilter", "config": {"word": "Rutabaga"}}]
    async with make_harness(database, tmp_path, modules=modules) as hs:
        _, token = await hs.register("alice")
        room_id = await hs.create_room(token)
        await hs.send_message(token, room_id, "hello")
        status, body = await hs.request(
            "PUT",
            f"{V3}/rooms/{room_id}/send/m.room.message/t2",
            token,
            {"msgtype": "m.text", "body": "I like rutabaga"},
        )
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        assert "rutabaga" in body["error"]
        status, body = await hs.request(
            "PUT", f"{V3}/rooms/{room_id}/state/org.example.note", token, {"body": "RUTABAGA"}
        )
        assert status == 403
        async with asyncio.timeout(10):
            while not any(e["content"].get("body") == "hello" for e in SEEN):
                WordFilter.changed.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(WordFilter.changed.wait(), 0.2)
        assert not any("rutabaga" in str(e["content"]).casefold() for e in SEEN)
        assert all(e["room_id"] == room_id for e in SEEN)


async def test_bad_modules_stop_the_start(database: Database, tmp_path: Path) -> None:
    for modules, message in [
        ([{"module": "no_such_package.Thing"}], "cannot load"),
        ([{"module": "nodots"}], "dotted path"),
        ([{"module": f"{__name__}.Broken"}], "needs a 'url'"),
        ([{"module": f"{__name__}.WordFilter", "config": ["x"]}], "must be a mapping"),
    ]:
        with pytest.raises(ConfigError, match=message):
            async with make_harness(database, tmp_path, modules=modules):
                pass

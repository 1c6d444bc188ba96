"""The module API with a module written here: it refuses messages containing a word,
is told of every new event, and sends a message through its handle (both engines)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from starling.config import ConfigError
from starling.modules.api import NOT_SPAM, ExternalIdentity, MediaUpload, ModuleApi
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


class Policy:
    """Every other callback of the API, a password provider with a login type of its own,
    and the handle (register a user, send an event, keep data)."""

    api: ModuleApi

    def __init__(self, config: dict[str, Any], api: ModuleApi) -> None:
        Policy.api = api
        api.register_spam_checker_callbacks(
            user_may_invite=self.may_invite,
            user_may_create_room=self.may_create_room,
            check_registration_for_spam=self.may_register,
            check_media_file_for_spam=self.media_ok,
        )
        api.register_password_auth_provider_callbacks(
            auth_checkers={("org.example.pin", ("pin",)): self.check_pin}
        )

    async def may_invite(self, inviter: str, invitee: str, room_id: str) -> str | None:
        return "No inviting the boss" if invitee.startswith("@boss:") else None

    async def may_create_room(self, user_id: str, request: dict[str, Any]) -> str:
        return "Rooms need a name" if not request.get("name") else NOT_SPAM

    async def may_register(self, localpart: str | None) -> str | None:
        return "That name is reserved" if localpart == "admin" else None

    async def media_ok(self, upload: MediaUpload) -> str | None:
        return "No executables" if (await upload.read()).startswith(b"MZ") else None

    async def check_pin(
        self, username: str, login_type: str, fields: Mapping[str, Any]
    ) -> ExternalIdentity | None:
        if fields["pin"] != "4711":
            return None
        return ExternalIdentity("pins", f"pin-{username}", username, display_name="Pin User")


async def test_module_callbacks_password_provider_and_handle(
    database: Database, tmp_path: Path
) -> None:
    modules = [{"module": f"{__name__}.Policy"}]
    async with make_harness(
        database,
        tmp_path,
        modules=modules,
        enable_registration=True,
        enable_registration_without_verification=True,
    ) as hs:
        alice, token = await hs.register("alice")
        await hs.register("boss")
        status, body = await hs.request("POST", f"{V3}/createRoom", token, {})
        assert (status, body["error"]) == (403, "Rooms need a name")
        room_id = await hs.create_room(token, name="Plans")
        status, body = await hs.request(
            "POST", f"{V3}/rooms/{room_id}/invite", token, {"user_id": "@boss:" + hs.server_name}
        )
        assert (status, body["error"]) == (403, "No inviting the boss")
        status, body = await hs.request(
            "POST", f"{V3}/register", None, {"username": "admin", "password": "xyzzy-12345"}
        )
        assert (status, body["error"]) == (403, "That name is reserved")
        for data, expected in [(b"MZ\x90\x00", 403), (b"plain text", 200)]:
            status, body = await hs.request("POST", "/_matrix/media/v3/upload", token, raw=data)
            assert status == expected, body
        # The module's own login type: listed, and a first login creates the account.
        status, body = await hs.request("GET", f"{V3}/login")
        assert {"type": "org.example.pin"} in body["flows"]
        login = {"type": "org.example.pin", "identifier": {"type": "m.id.user", "user": "Pat"}}
        status, body = await hs.request("POST", f"{V3}/login", None, {**login, "pin": "0000"})
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        status, body = await hs.request("POST", f"{V3}/login", None, {**login, "pin": "4711"})
        assert status == 200, body
        assert body["user_id"] == "@pat:" + hs.server_name
        status, body = await hs.request("GET", f"{V3}/profile/@pat:{hs.server_name}/displayname")
        assert body == {"displayname": "Pin User"}
        # The handle: a user, an event sent as them (a client's rules apply), data kept.
        api = Policy.api
        bot = await api.register_user("Bot", "The Bot")
        assert bot == "@bot:" + hs.server_name and await api.user_exists(bot)
        with pytest.raises(ValueError):
            await api.send_message(room_id, "@mallory:elsewhere.example", "hi")
        event_id = await api.send_event(room_id, alice, "m.room.topic", {"topic": "t"}, "")
        assert event_id.startswith("$")
        await api.put_data("counter", {"n": 1})
        assert await api.get_data("counter") == {"n": 1}
        await api.delete_data("counter")
        assert await api.get_data("counter") is None

"""room_list_publication_rules (Synapse's): who may list rooms in the room directory;
restrict_room_creation_to_admins: who may create rooms;
admins always may. Both engines."""

from __future__ import annotations

from pathlib import Path

from starling.storage import Database
from tests.admin.conftest import CONFIG
from tests.support.harness import make_harness

C = "/_matrix/client/v3"


async def test_publication_rules(database: Database, tmp_path: Path) -> None:
    rules = [
        {"user_id": "@mod*", "action": "allow"},
        {"alias": "#open-*", "action": "allow"},
        {"action": "deny"},
    ]
    async with make_harness(database, tmp_path, **CONFIG, room_list_publication_rules=rules) as hs:
        _, admin = await hs.register("root", admin=True)
        _, bob = await hs.register("bob")
        _, mod = await hs.register("mod1")
        room = await hs.create_room(bob)
        listing = f"{C}/directory/list/room/{room}"
        status, resp = await hs.request("PUT", listing, bob, {"visibility": "public"})
        assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")
        status, _ = await hs.request("PUT", listing, bob, {"visibility": "private"})
        assert status == 200  # unlisting is always allowed
        # an alias the rules allow
        status, _ = await hs.request(
            "PUT", f"{C}/directory/room/%23open-chat:test.local", bob, {"room_id": room}
        )
        assert status == 200
        status, _ = await hs.request("PUT", listing, bob, {"visibility": "public"})
        assert status == 200
        # a user the rules allow, and an admin
        other = await hs.create_room(mod)
        status, _ = await hs.request(
            "PUT", f"{C}/directory/list/room/{other}", mod, {"visibility": "public"}
        )
        assert status == 200
        # created public against the rules: created, not listed
        hidden = await hs.create_room(bob, visibility="public", preset="public_chat")
        listed = await hs.create_room(admin, visibility="public", preset="public_chat")
        status, resp = await hs.request("GET", f"{C}/publicRooms", bob)
        assert status == 200
        rooms = {r["room_id"] for r in resp["chunk"]}
        assert {room, other, listed} <= rooms and hidden not in rooms
        status, resp = await hs.request("GET", f"{C}/directory/list/room/{hidden}", bob)
        assert resp == {"visibility": "private"}


async def test_room_creation_restricted_to_admins(database: Database, tmp_path: Path) -> None:
    config = {**CONFIG, "restrict_room_creation_to_admins": True}
    async with make_harness(database, tmp_path, **config) as hs:
        _, admin = await hs.register("root", admin=True)
        _, bob = await hs.register("bob")
        status, resp = await hs.request("POST", f"{C}/createRoom", bob, {"name": "Mine"})
        assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")
        room = await hs.create_room(admin, preset="public_chat")
        status, _ = await hs.request("POST", f"{C}/join/{room}", bob, {})
        assert status == 200  # joining is not creating
        status, resp = await hs.request("GET", "/_synapse/admin/v1/rooms", admin)
        assert resp["total_rooms"] == 1

"""Interop with a real Synapse (issue 9, "Interop with Synapse"): rooms shared between a
Starling server (SQLite and PostgreSQL, started with the harness) and Synapse 1.163.2 (SQLite,
tests/federation/synapse.py), over TLS on loopback. One Synapse per module (per xdist
worker that runs some of its tests) serves every scenario; each scenario uses fresh users and rooms on it.

Joins both ways, messages both ways, history from before a server joined fetched by
/messages (backfill) both ways, invites both ways (one accepted, one rejected each way),
leaves both ways, and displaynames/profiles seen across servers."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.federation.harness import (
    FederatedServer,
    User,
    eventually,
    federation_servers,
    make_test_pki,
)
from tests.federation.synapse import SynapseServer, start_synapse
from tests.federation.test_media_two_servers import check_image_crosses

pytestmark = pytest.mark.integration

WAIT = 60.0  # hang guard for anything crossing servers


@pytest.fixture(scope="module")
def synapse_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseServer]:
    directory = tmp_path_factory.mktemp("synapse")
    server = start_synapse(directory, make_test_pki(directory / "pki"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def synapse(synapse_process: SynapseServer) -> AsyncIterator[SynapseServer]:
    """The module's Synapse, with a client session for this test's event loop."""
    try:
        yield synapse_process
    finally:
        await synapse_process.close()
        assert synapse_process.proc is not None
        assert synapse_process.proc.poll() is None, synapse_process.log_tail()


@pytest.fixture
async def starling(engine: str, tmp_path: Path) -> AsyncIterator[FederatedServer]:
    async with federation_servers(tmp_path, 1, engine=engine) as (server,):
        yield server


# --- helpers -----------------------------------------------------------------------------


async def membership(server: FederatedServer, user: User, room_id: str, target: str) -> str | None:
    status, body = await server.client_request(
        "GET", f"/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{quote(target)}", user.token
    )
    if status != 200:
        return None
    value: str = body["membership"]
    return value


async def member_content(
    server: FederatedServer, user: User, room_id: str, target: str
) -> dict[str, Any]:
    status, body = await server.client_request(
        "GET", f"/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{quote(target)}", user.token
    )
    assert status == 200, (status, body)
    content: dict[str, Any] = body
    return content


async def bodies(server: FederatedServer, user: User, room_id: str) -> list[str]:
    """The message bodies /messages returns, oldest first (backfilling as it goes)."""
    events = await server.messages(user, room_id)
    return [
        e["content"]["body"]
        for e in reversed(events)
        if e["type"] == "m.room.message" and "body" in e.get("content", {})
    ]


async def invited_rooms(server: FederatedServer, user: User) -> set[str]:
    status, body = await server.client_request(
        "GET", "/_matrix/client/v3/sync", user.token, params={"timeout": "0"}
    )
    assert status == 200, (status, body)
    return set(body.get("rooms", {}).get("invite", {}))


async def leave(server: FederatedServer, user: User, room_id: str) -> None:
    status, body = await server.client_request(
        "POST", f"/_matrix/client/v3/rooms/{room_id}/leave", user.token, {}
    )
    assert status == 200, (status, body)


async def set_displayname(server: FederatedServer, user: User, name: str) -> None:
    status, body = await server.client_request(
        "PUT",
        f"/_matrix/client/v3/profile/{quote(user.user_id)}/displayname",
        user.token,
        {"displayname": name},
    )
    assert status == 200, (status, body)


async def displayname(server: FederatedServer, user: User, target: str) -> str | None:
    status, body = await server.client_request(
        "GET", f"/_matrix/client/v3/profile/{quote(target)}", user.token
    )
    assert status == 200, (status, body)
    name: str | None = body.get("displayname")
    return name


async def wait_for_bodies(
    server: FederatedServer, user: User, room_id: str, expected: list[str], what: str
) -> list[str]:
    got: list[str] = []

    async def present() -> bool:
        nonlocal got
        got = await bodies(server, user, room_id)
        return all(text in got for text in expected)

    await eventually(present, timeout=WAIT, what=what)
    return got


# --- scenarios ---------------------------------------------------------------------------


async def test_starling_user_joins_room_on_synapse(
    synapse: SynapseServer, starling: FederatedServer
) -> None:
    sam = await synapse.register()
    alice = await starling.register()
    await set_displayname(synapse, sam, "Sam on Synapse")
    await set_displayname(starling, alice, "Alice on Starling")
    room_id = await synapse.create_room(sam, preset="public_chat", name="synapse room")
    await synapse.send_message(sam, room_id, "before alice joined 1")
    await synapse.send_message(sam, room_id, "before alice joined 2")

    assert await starling.join(alice, room_id, via=[synapse.server_name]) == room_id

    # History from before Starling joined, backfilled from Synapse by /messages, in order.
    got = await wait_for_bodies(
        starling, alice, room_id, ["before alice joined 1", "before alice joined 2"], "backfill"
    )
    assert got.index("before alice joined 1") < got.index("before alice joined 2")

    # Messages both ways.
    await starling.send_message(alice, room_id, "hello from starling")
    await wait_for_bodies(synapse, sam, room_id, ["hello from starling"], "starling -> synapse")
    await synapse.send_message(sam, room_id, "hello from synapse")
    await wait_for_bodies(starling, alice, room_id, ["hello from synapse"], "synapse -> starling")

    # Displaynames: each side sees the other's in the room and through profile queries.
    assert (await member_content(synapse, sam, room_id, alice.user_id)).get(
        "displayname"
    ) == "Alice on Starling"
    assert (await member_content(starling, alice, room_id, sam.user_id)).get(
        "displayname"
    ) == "Sam on Synapse"
    assert await displayname(starling, alice, sam.user_id) == "Sam on Synapse"
    assert await displayname(synapse, sam, alice.user_id) == "Alice on Starling"

    # Same room state on both servers.
    s_state = {
        (e["type"], e["state_key"], e["event_id"]) for e in await synapse.state(sam, room_id)
    }

    async def same_state() -> bool:
        mine = {
            (e["type"], e["state_key"], e["event_id"]) for e in await starling.state(alice, room_id)
        }
        return mine == s_state

    await eventually(same_state, timeout=WAIT, what="same state on both servers")

    # Alice leaves: Synapse sees it.
    await leave(starling, alice, room_id)

    async def left_on_synapse() -> bool:
        return await membership(synapse, sam, room_id, alice.user_id) == "leave"

    await eventually(left_on_synapse, timeout=WAIT, what="alice's leave on synapse")


async def test_synapse_user_joins_room_on_starling(
    synapse: SynapseServer, starling: FederatedServer
) -> None:
    alice = await starling.register()
    sam = await synapse.register()
    await set_displayname(starling, alice, "Alice Host")
    room_id = await starling.create_room(alice, preset="public_chat", name="starling room")
    await starling.send_message(alice, room_id, "before sam joined 1")
    await starling.send_message(alice, room_id, "before sam joined 2")

    assert await synapse.join(sam, room_id, via=[starling.server_name]) == room_id

    got = await wait_for_bodies(
        synapse, sam, room_id, ["before sam joined 1", "before sam joined 2"], "backfill"
    )
    assert got.index("before sam joined 1") < got.index("before sam joined 2")

    async def sam_joined_on_starling() -> bool:
        return await membership(starling, alice, room_id, sam.user_id) == "join"

    await eventually(sam_joined_on_starling, timeout=WAIT, what="sam's join on starling")

    await synapse.send_message(sam, room_id, "hi from synapse")
    await wait_for_bodies(starling, alice, room_id, ["hi from synapse"], "synapse -> starling")
    await starling.send_message(alice, room_id, "hi from starling")
    await wait_for_bodies(synapse, sam, room_id, ["hi from starling"], "starling -> synapse")

    assert (await member_content(synapse, sam, room_id, alice.user_id)).get(
        "displayname"
    ) == "Alice Host"

    # Sam leaves: Starling sees it, and later messages still reach... nobody on Synapse.
    await leave(synapse, sam, room_id)

    async def left_on_starling() -> bool:
        return await membership(starling, alice, room_id, sam.user_id) == "leave"

    await eventually(left_on_starling, timeout=WAIT, what="sam's leave on starling")


async def test_invites_both_ways(synapse: SynapseServer, starling: FederatedServer) -> None:
    alice = await starling.register()
    ann = await starling.register()
    sam = await synapse.register()
    sue = await synapse.register()

    # Synapse invites Starling users to a private room: alice accepts, ann rejects.
    s_room = await synapse.create_room(sam, preset="private_chat")
    await synapse.invite(sam, s_room, alice.user_id)
    await synapse.invite(sam, s_room, ann.user_id)
    for user in (alice, ann):

        async def invited(user: User = user) -> bool:
            return s_room in await invited_rooms(starling, user)

        await eventually(invited, timeout=WAIT, what=f"synapse's invite on starling for {user}")
    assert await starling.join(alice, s_room, via=[synapse.server_name]) == s_room
    await leave(starling, ann, s_room)

    async def answers_on_synapse() -> bool:
        return (
            await membership(synapse, sam, s_room, alice.user_id) == "join"
            and await membership(synapse, sam, s_room, ann.user_id) == "leave"
        )

    await eventually(answers_on_synapse, timeout=WAIT, what="invite answers on synapse")
    assert s_room not in await invited_rooms(starling, ann)

    # Starling invites Synapse users: sam accepts, sue rejects.
    a_room = await starling.create_room(alice, preset="private_chat")
    await starling.invite(alice, a_room, sam.user_id)
    await starling.invite(alice, a_room, sue.user_id)
    for user in (sam, sue):

        async def invited_s(user: User = user) -> bool:
            return a_room in await invited_rooms(synapse, user)

        await eventually(invited_s, timeout=WAIT, what=f"starling's invite on synapse for {user}")
    assert await synapse.join(sam, a_room, via=[starling.server_name]) == a_room
    await leave(synapse, sue, a_room)

    async def answers_on_starling() -> bool:
        return (
            await membership(starling, alice, a_room, sam.user_id) == "join"
            and await membership(starling, alice, a_room, sue.user_id) == "leave"
        )

    await eventually(answers_on_starling, timeout=WAIT, what="invite answers on starling")

    # The accepted invites lead to working rooms both ways.
    await synapse.send_message(sam, a_room, "thanks for the invite")
    await wait_for_bodies(starling, alice, a_room, ["thanks for the invite"], "sam -> alice")
    await starling.send_message(alice, s_room, "glad to be here")
    await wait_for_bodies(synapse, sam, s_room, ["glad to be here"], "alice -> sam")


async def history(server: FederatedServer, user: User, room_id: str, pages: int = 20) -> list[str]:
    """Every message body /messages pages back to (dir=b, 50 a page), oldest first."""
    found: list[str] = []
    params = {"dir": "b", "limit": "50"}
    for _ in range(pages):
        status, body = await server.client_request(
            "GET", f"/_matrix/client/v3/rooms/{room_id}/messages", user.token, params=params
        )
        assert status == 200, (status, body)
        found += [
            e["content"]["body"]
            for e in body["chunk"]
            if e["type"] == "m.room.message" and "body" in e.get("content", {})
        ]
        if "end" not in body or not body["chunk"]:
            break
        params = {"dir": "b", "limit": "50", "from": body["end"]}
    return found[::-1]


async def send_many(server: FederatedServer, user: User, room_id: str, texts: list[str]) -> None:
    for text in texts:
        await server.send_message(user, room_id, text)


async def test_long_history_backfilled_page_by_page_both_ways(
    synapse: SynapseServer, starling: FederatedServer
) -> None:
    """More history than one backfill request carries (Synapse asks for at most 100
    events), fetched by paging /messages."""
    alice = await starling.register()
    sam = await synapse.register()
    s_texts = [f"synapse history {i}" for i in range(105)]
    a_texts = [f"starling history {i}" for i in range(105)]
    s_room = await synapse.create_room(sam, preset="public_chat")
    a_room = await starling.create_room(alice, preset="public_chat")
    await send_many(synapse, sam, s_room, s_texts)
    await send_many(starling, alice, a_room, a_texts)
    assert await starling.join(alice, s_room, via=[synapse.server_name]) == s_room
    assert await synapse.join(sam, a_room, via=[starling.server_name]) == a_room

    for server, user, room_id, texts in (
        (starling, alice, s_room, s_texts),
        (synapse, sam, a_room, a_texts),
    ):
        got: list[str] = []

        async def complete(
            server: FederatedServer = server,
            user: User = user,
            room_id: str = room_id,
            texts: list[str] = texts,
        ) -> bool:
            nonlocal got
            got = await history(server, user, room_id)
            return got == texts

        try:
            await eventually(complete, timeout=WAIT, what=f"whole history on {server.label}")
        except AssertionError:
            raise AssertionError((server.label, len(got), got[:3], got[-3:])) from None


async def test_room_versions_both_ways(synapse: SynapseServer, starling: FederatedServer) -> None:
    """A room of each family of room versions on each server, joined from the other."""
    alice = await starling.register()
    sam = await synapse.register()
    for v in ("1", "3", "6", "9", "10", "11", "12"):
        s_room = await synapse.create_room(sam, preset="public_chat", room_version=v)
        a_room = await starling.create_room(alice, preset="public_chat", room_version=v)
        assert await starling.join(alice, s_room, via=[synapse.server_name]) == s_room
        assert await synapse.join(sam, a_room, via=[starling.server_name]) == a_room
        await starling.send_message(alice, s_room, f"v{v} from starling")
        await synapse.send_message(sam, a_room, f"v{v} from synapse")
        await wait_for_bodies(synapse, sam, s_room, [f"v{v} from starling"], f"v{v} to synapse")
        await wait_for_bodies(starling, alice, a_room, [f"v{v} from synapse"], f"v{v} to starling")


async def test_aliases_redactions_kicks_and_bans(
    synapse: SynapseServer, starling: FederatedServer
) -> None:
    alice = await starling.register()
    sam = await synapse.register()
    tag = secrets.token_hex(4)  # Synapse lives for the whole module
    s_room = await synapse.create_room(sam, preset="public_chat", room_alias_name=f"s-{tag}")
    a_room = await starling.create_room(alice, preset="public_chat", room_alias_name=f"a-{tag}")
    # Joins by alias: the alias is resolved at its server (/query/directory).
    assert await starling.join(alice, f"#s-{tag}:{synapse.server_name}") == s_room
    assert await synapse.join(sam, f"#a-{tag}:{starling.server_name}") == a_room

    # Redactions both ways.
    s_msg = await synapse.send_message(sam, a_room, "to be redacted by sam")
    a_msg = await starling.send_message(alice, s_room, "to be redacted by alice")
    await wait_for_bodies(starling, alice, a_room, ["to be redacted by sam"], "sam's message")
    await wait_for_bodies(synapse, sam, s_room, ["to be redacted by alice"], "alice's message")
    for server, user, room_id, event_id in (
        (synapse, sam, a_room, s_msg),
        (starling, alice, s_room, a_msg),
    ):
        status, body = await server.client_request(
            "PUT",
            f"/_matrix/client/v3/rooms/{room_id}/redact/{quote(event_id)}/r{event_id[1:9]}",
            user.token,
            {"reason": "oops"},
        )
        assert status == 200, (status, body)

    async def redacted(server: FederatedServer, user: User, room_id: str, event_id: str) -> bool:
        status, body = await server.client_request(
            "GET", f"/_matrix/client/v3/rooms/{room_id}/event/{quote(event_id)}", user.token
        )
        return status == 200 and body.get("content") == {}

    await eventually(
        lambda: redacted(starling, alice, a_room, s_msg), timeout=WAIT, what="redacted on starling"
    )
    await eventually(
        lambda: redacted(synapse, sam, s_room, a_msg), timeout=WAIT, what="redacted on synapse"
    )

    # Kicks and bans across servers: alice kicks sam from her room, sam bans alice from his.
    status, body = await starling.client_request(
        "POST",
        f"/_matrix/client/v3/rooms/{a_room}/kick",
        alice.token,
        {"user_id": sam.user_id, "reason": "kick"},
    )
    assert status == 200, (status, body)
    status, body = await synapse.client_request(
        "POST",
        f"/_matrix/client/v3/rooms/{s_room}/ban",
        sam.token,
        {"user_id": alice.user_id, "reason": "ban"},
    )
    assert status == 200, (status, body)

    async def kicked_on_synapse() -> bool:
        return await membership(synapse, sam, a_room, sam.user_id) == "leave"

    async def banned_on_starling() -> bool:
        # A banned user may no longer read the room's state (as on Synapse): her own
        # ban reaches her through /sync, among the rooms she left.
        status, body = await starling.client_request(
            "GET",
            "/_matrix/client/v3/sync",
            alice.token,
            params={"filter": '{"room": {"include_leave": true}}'},
        )
        assert status == 200, (status, body)
        left = body.get("rooms", {}).get("leave", {}).get(s_room, {})
        return any(
            e["type"] == "m.room.member"
            and e.get("state_key") == alice.user_id
            and e["content"].get("membership") == "ban"
            for e in left.get("timeline", {}).get("events", [])
        )

    await eventually(kicked_on_synapse, timeout=WAIT, what="sam's kick on synapse")
    await eventually(banned_on_starling, timeout=WAIT, what="alice's ban on starling")
    assert await membership(starling, alice, s_room, alice.user_id) is None  # 403 now
    # Alice cannot come back; sam can.
    status, body = await starling.client_request(
        "POST",
        f"/_matrix/client/v3/join/{quote(s_room)}?server_name={quote(synapse.server_name)}",
        alice.token,
        {},
    )
    assert status == 403, (status, body)
    assert await synapse.join(sam, a_room, via=[starling.server_name]) == a_room


async def put_state(
    server: FederatedServer, user: User, room_id: str, event_type: str, content: dict[str, Any]
) -> str:
    status, body = await server.client_request(
        "PUT", f"/_matrix/client/v3/rooms/{room_id}/state/{event_type}/", user.token, content
    )
    assert status == 200, (status, body)
    event_id: str = body["event_id"]
    return event_id


async def test_restricted_joins_and_knocks_both_ways(
    synapse: SynapseServer, starling: FederatedServer
) -> None:
    alice = await starling.register()
    sam = await synapse.register()
    await restricted_join_and_knock(synapse, sam, starling, alice)
    await restricted_join_and_knock(starling, alice, synapse, sam)


async def restricted_join_and_knock(
    host: FederatedServer, owner: User, guest_server: FederatedServer, guest: User
) -> None:
    """`guest` joins a restricted room on `host` (allowed by another room of `host`), and
    knocks on a room there, is invited in by `owner` and joins."""
    # A room the guest joins first, which lets them into a restricted room.
    space = await host.create_room(owner, preset="public_chat", room_version="10")
    assert await guest_server.join(guest, space, via=[host.server_name]) == space
    restricted = await host.create_room(
        owner,
        room_version="10",
        initial_state=[
            {
                "type": "m.room.join_rules",
                "state_key": "",
                "content": {
                    "join_rule": "restricted",
                    "allow": [{"type": "m.room_membership", "room_id": space}],
                },
            }
        ],
    )
    assert await guest_server.join(guest, restricted, via=[host.server_name]) == restricted

    async def joined(room: str = restricted, host: FederatedServer = host) -> bool:
        return await membership(host, owner, room, guest.user_id) == "join"

    await eventually(joined, timeout=WAIT, what=f"restricted join on {host.label}")

    # Knock, then the host's user invites the knocker in.
    knockable = await host.create_room(
        owner,
        room_version="10",
        initial_state=[
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
        ],
    )
    status, body = await guest_server.client_request(
        "POST",
        f"/_matrix/client/v3/knock/{quote(knockable)}?via={quote(host.server_name)}",
        guest.token,
        {"reason": "let me in"},
    )
    assert status == 200, (status, body)

    async def knocked(room: str = knockable, host: FederatedServer = host) -> bool:
        return await membership(host, owner, room, guest.user_id) == "knock"

    await eventually(knocked, timeout=WAIT, what=f"knock on {host.label}")
    await host.invite(owner, knockable, guest.user_id)

    async def invited(room: str = knockable, server: FederatedServer = guest_server) -> bool:
        return room in await invited_rooms(server, guest)

    await eventually(invited, timeout=WAIT, what=f"invite after knock on {guest_server.label}")
    assert await guest_server.join(guest, knockable, via=[host.server_name]) == knockable


@pytest.mark.parametrize("room_version", ["1", "12"])  # state resolution v1 and v2
async def test_concurrent_state_changes_converge(
    synapse: SynapseServer, starling: FederatedServer, room_version: str
) -> None:
    alice = await starling.register()
    sam = await synapse.register()
    room_id = await synapse.create_room(sam, preset="public_chat", room_version=room_version)
    assert await starling.join(alice, room_id, via=[synapse.server_name]) == room_id
    # Alice may set the topic too.
    status, levels = await synapse.client_request(
        "GET", f"/_matrix/client/v3/rooms/{room_id}/state/m.room.power_levels/", sam.token
    )
    assert status == 200, levels
    levels["users"][alice.user_id] = 50
    await put_state(synapse, sam, room_id, "m.room.power_levels", levels)

    async def alice_can() -> bool:
        status, got = await starling.client_request(
            "GET", f"/_matrix/client/v3/rooms/{room_id}/state/m.room.power_levels/", alice.token
        )
        return status == 200 and got.get("users", {}).get(alice.user_id) == 50

    await eventually(alice_can, timeout=WAIT, what="power levels on starling")

    # Both set the topic at the same time, then each sends a message (merging the fork).
    await asyncio.gather(
        put_state(synapse, sam, room_id, "m.room.topic", {"topic": "synapse's topic"}),
        put_state(starling, alice, room_id, "m.room.topic", {"topic": "starling's topic"}),
    )
    await synapse.send_message(sam, room_id, "after the topics (sam)")
    await starling.send_message(alice, room_id, "after the topics (alice)")
    both = ["after the topics (sam)", "after the topics (alice)"]
    await wait_for_bodies(synapse, sam, room_id, both, "both messages on synapse")
    await wait_for_bodies(starling, alice, room_id, both, "both messages on starling")

    async def same_state() -> bool:
        s = {(e["type"], e["state_key"], e["event_id"]) for e in await synapse.state(sam, room_id)}
        a = {
            (e["type"], e["state_key"], e["event_id"]) for e in await starling.state(alice, room_id)
        }
        return s == a

    await eventually(same_state, timeout=WAIT, what="the same state after concurrent topics")


async def test_media_both_ways(synapse: SynapseServer, starling: FederatedServer) -> None:
    """An image uploaded on one server downloads and thumbnails through the other
    (authenticated federation media, v1.11+)."""
    sam = await synapse.register()
    alice = await starling.register()
    await check_image_crosses(synapse, sam, starling, alice)
    await check_image_crosses(starling, alice, synapse, sam)


async def test_timestamp_to_event_both_ways(
    synapse: SynapseServer, starling: FederatedServer
) -> None:
    """Each server, joined late to a room of the other, finds the other's older messages
    by /timestamp_to_event (asking over federation) and can show them with /context."""
    sam = await synapse.register()
    alice = await starling.register()
    for host, host_user, guest, guest_user in (
        (synapse, sam, starling, alice),
        (starling, alice, synapse, sam),
    ):
        room_id = await host.create_room(host_user, preset="public_chat")
        early = await host.send_message(host_user, room_id, "early")
        status, event = await host.client_request(
            "GET", f"/_matrix/client/v3/rooms/{room_id}/event/{quote(early)}", host_user.token
        )
        assert status == 200, event
        ts = event["origin_server_ts"]
        await asyncio.sleep(0.05)
        assert await guest.join(guest_user, room_id, via=[host.server_name]) == room_id
        status, body = await guest.client_request(
            "GET",
            f"/_matrix/client/v1/rooms/{room_id}/timestamp_to_event",
            guest_user.token,
            params={"ts": str(ts), "dir": "f"},
        )
        assert status == 200 and body["event_id"] == early, (body, guest.log_tail())
        status, context = await guest.client_request(
            "GET", f"/_matrix/client/v3/rooms/{room_id}/context/{quote(early)}", guest_user.token
        )
        assert status == 200 and context["event"]["content"]["body"] == "early", context


async def test_space_hierarchy_both_ways(synapse: SynapseServer, starling: FederatedServer) -> None:
    """A space on one server whose child space is on the other: each server's /hierarchy
    walks into the other's rooms over federation."""
    sam = await synapse.register()
    alice = await starling.register()
    for host, host_user, guest, guest_user in (
        (synapse, sam, starling, alice),
        (starling, alice, synapse, sam),
    ):
        space = await host.create_room(
            host_user,
            preset="public_chat",
            name="remote space",
            creation_content={"type": "m.space"},
        )
        child = await host.create_room(host_user, preset="public_chat", name="remote child")
        status, body = await host.client_request(
            "PUT",
            f"/_matrix/client/v3/rooms/{space}/state/m.space.child/{child}",
            host_user.token,
            {"via": [host.server_name]},
        )
        assert status == 200, body
        top = await guest.create_room(
            guest_user, preset="public_chat", name="top", creation_content={"type": "m.space"}
        )
        status, body = await guest.client_request(
            "PUT",
            f"/_matrix/client/v3/rooms/{top}/state/m.space.child/{space}",
            guest_user.token,
            {"via": [host.server_name]},
        )
        assert status == 200, body
        status, body = await guest.client_request(
            "GET", f"/_matrix/client/v1/rooms/{top}/hierarchy", guest_user.token
        )
        assert status == 200, body
        names = [r.get("name") for r in body["rooms"]]
        assert names == ["top", "remote space", "remote child"], (body, host.log_tail())

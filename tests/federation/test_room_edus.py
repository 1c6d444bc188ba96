"""m.typing and m.receipt across servers with fakes: who is sent what (private receipts
never), and what inbound EDUs are taken (joined users only, threads kept, garbage and
foreign users dropped)."""

from __future__ import annotations

import asyncio
from typing import Any

from starling.federation.edu import EduRegistry
from starling.federation.presence import PresenceFederation
from starling.federation.room_edus import RoomEdus
from starling.storage.receipts import Receipt

ROOM = "!room:here.test"
EVENT = "$LXEWQrcmsEQBYnyp-6wy9chTD7GQPMTbAiWHF5IaSIE"
JOINED = frozenset({"@alice:here.test", "@bob:remote.test", "@carol:other.test"})


class Fakes:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []
        self.typing: list[tuple[str, str, int | None]] = []
        self.receipts: list[Receipt] = []

    def send_edu(self, destination: str, edu_type: str, content: dict[str, Any]) -> None:
        self.sent.append((destination, edu_type, content))

    def started(self, room_id: str, user_id: str, timeout_ms: int) -> None:
        self.typing.append((room_id, user_id, timeout_ms))

    def stopped(self, room_id: str, user_id: str) -> None:
        self.typing.append((room_id, user_id, None))

    async def joined(self, room_id: str) -> frozenset[str]:
        return JOINED if room_id == ROOM else frozenset()

    async def store_receipt(self, receipt: Receipt) -> None:
        self.receipts.append(receipt)


def make() -> tuple[Fakes, RoomEdus, EduRegistry]:
    fakes = Fakes()
    edus = RoomEdus("here.test", fakes, fakes.joined, fakes, fakes.store_receipt)
    registry = EduRegistry()
    registry.register("m.typing", edus.on_typing)
    registry.register("m.receipt", edus.on_receipt)
    return fakes, edus, registry


async def test_typing_goes_to_every_other_server_in_the_room() -> None:
    fakes, edus, _ = make()
    await edus.local_typing(ROOM, "@alice:here.test", True)
    content = {"room_id": ROOM, "user_id": "@alice:here.test", "typing": True}
    assert fakes.sent == [
        ("other.test", "m.typing", content),
        ("remote.test", "m.typing", content),
    ]


async def test_public_receipts_are_sent_with_their_thread_private_ones_never() -> None:
    fakes, edus, _ = make()
    await edus.local_receipt(Receipt(ROOM, "m.read.private", "@alice:here.test", "", EVENT, 5))
    assert fakes.sent == []
    await edus.local_receipt(Receipt(ROOM, "m.read", "@alice:here.test", "main", EVENT, 7))
    assert [d for d, _, _ in fakes.sent] == ["other.test", "remote.test"]
    assert fakes.sent[0][2] == {
        ROOM: {
            "m.read": {
                "@alice:here.test": {"event_ids": [EVENT], "data": {"ts": 7, "thread_id": "main"}}
            }
        }
    }


async def test_inbound_typing_from_joined_users_only() -> None:
    fakes, _, registry = make()
    edu = {
        "edu_type": "m.typing",
        "content": {"room_id": ROOM, "user_id": "@bob:remote.test", "typing": True},
    }
    await registry.dispatch("remote.test", edu)
    assert fakes.typing == [(ROOM, "@bob:remote.test", 30_000)]
    stop = {"room_id": ROOM, "user_id": "@bob:remote.test", "typing": False}
    await registry.dispatch("remote.test", {"edu_type": "m.typing", "content": stop})
    assert fakes.typing[-1] == (ROOM, "@bob:remote.test", None)
    fakes.typing.clear()
    for content in [
        {"room_id": ROOM, "user_id": "@bob:other.test", "typing": True},  # another server's
        {"room_id": ROOM, "user_id": "@dave:remote.test", "typing": True},  # not joined
        {"room_id": "!else:here.test", "user_id": "@bob:remote.test", "typing": True},
        {"room_id": ROOM, "user_id": "@bob:remote.test", "typing": "yes"},
        {"room_id": 5, "user_id": "@bob:remote.test", "typing": True},
    ]:
        await registry.dispatch("remote.test", {"edu_type": "m.typing", "content": content})
    assert fakes.typing == []


async def test_inbound_receipts_keep_threads_and_drop_garbage() -> None:
    fakes, _, registry = make()
    good = {"event_ids": [EVENT], "data": {"ts": 9, "thread_id": "main"}}
    content = {ROOM: {"m.read": {"@bob:remote.test": good}}}
    await registry.dispatch("remote.test", {"edu_type": "m.receipt", "content": content})
    assert fakes.receipts == [Receipt(ROOM, "m.read", "@bob:remote.test", "main", EVENT, 9)]
    fakes.receipts.clear()
    bad_receipts: list[Any] = [
        "nope",
        {"event_ids": [], "data": {"ts": 1}},
        {"event_ids": ["not-an-id"], "data": {"ts": 1}},
        {"event_ids": [EVENT]},
        {"event_ids": [EVENT], "data": {"ts": 1, "thread_id": "garbage"}},
    ]
    for body in bad_receipts:
        edu = {"edu_type": "m.receipt", "content": {ROOM: {"m.read": {"@bob:remote.test": body}}}}
        await registry.dispatch("remote.test", edu)
    # Not joined; another server's user (the whole EDU is dropped); not a room.
    for content in [
        {ROOM: {"m.read": {"@dave:remote.test": good}}},
        {ROOM: {"m.read": {"@bob:remote.test": good, "@carol:other.test": good}}},
        {"nope": {"m.read": {"@bob:remote.test": good}}},
        {ROOM: {"m.read": "x"}},
    ]:
        await registry.dispatch("remote.test", {"edu_type": "m.receipt", "content": content})
    assert fakes.receipts == []


class FakePresence:
    def __init__(self) -> None:
        self.enabled = True
        self.updates: list[tuple[str, str, str | None, int, bool]] = []

    async def remote_update(
        self, user_id: str, presence: str, status_msg: str | None, ago: int, active: bool
    ) -> None:
        self.updates.append((user_id, presence, status_msg, ago, active))

    async def presence_to_share(self, user_ids: Any) -> dict[str, dict[str, Any]]:
        online = {"@alice:here.test": {"presence": "online", "currently_active": True}}
        return {u: online[u] for u in user_ids if u in online}


async def test_presence_batched_per_server_and_taken_for_users_sharing_a_room() -> None:
    fakes = Fakes()
    presence = FakePresence()

    async def sharing(user_id: str) -> set[str]:
        return set(JOINED) if user_id in JOINED else set()

    fed = PresenceFederation("here.test", fakes, sharing, presence)
    await fed.local_changes(
        {
            "@alice:here.test": {"presence": "online", "currently_active": True},
            "@zed:here.test": {"presence": "offline"},  # shares no room: nobody told
        }
    )
    assert fakes.sent == [
        (
            server,
            "m.presence",
            {
                "push": [
                    {
                        "user_id": "@alice:here.test",
                        "presence": "online",
                        "last_active_ago": 0,
                        "currently_active": True,
                    }
                ]
            },
        )
        for server in ("other.test", "remote.test")
    ]
    registry = EduRegistry()
    registry.register("m.presence", fed.on_edu)
    push = [
        {
            "user_id": "@bob:remote.test",
            "presence": "unavailable",
            "status_msg": "hi",
            "last_active_ago": 5,
            "currently_active": False,
        }
    ]
    await registry.dispatch("remote.test", {"edu_type": "m.presence", "content": {"push": push}})
    assert presence.updates == [("@bob:remote.test", "unavailable", "hi", 5, False)]
    presence.updates.clear()
    for origin, items in [
        ("remote.test", [{"user_id": "@stranger:remote.test", "presence": "online"}]),
        ("evil.test", push),  # names another server's user
        ("remote.test", [{"user_id": "@bob:remote.test", "presence": 5}]),
    ]:
        await registry.dispatch(origin, {"edu_type": "m.presence", "content": {"push": items}})
    assert presence.updates == []
    # Presence off: nothing sent, nothing taken.
    presence.enabled = False
    fakes.sent.clear()
    await fed.local_changes({"@alice:here.test": {"presence": "online"}})
    await registry.dispatch("remote.test", {"edu_type": "m.presence", "content": {"push": push}})
    assert fakes.sent == [] and presence.updates == []


async def test_a_join_tells_the_servers_new_to_each_other_of_presence() -> None:
    """bob (remote.test) joins: remote.test hears of alice, ours and online. alice joins:
    every other server in the room hears of her; who the presence service leaves out
    (the long inactive) is not sent."""
    from starling.protocol.event import Event
    from starling.protocol.room_versions import get_room_version

    fakes, presence = Fakes(), FakePresence()

    async def sharing(user_id: str) -> set[str]:
        return set()

    fed = PresenceFederation("here.test", fakes, sharing, presence, fakes.joined, join_delay=0)

    def join(user: str) -> Event:
        pdu = {"type": "m.room.member", "room_id": ROOM, "sender": user, "state_key": user}
        pdu["content"] = {"membership": "join"}
        return Event(pdu, EVENT, get_room_version("10"))

    fed.on_new_event(join("@bob:remote.test"), 1)
    await asyncio.gather(*fed._tasks)
    alice = {"user_id": "@alice:here.test", "presence": "online", "last_active_ago": 0}
    alice["currently_active"] = True
    assert fakes.sent == [("remote.test", "m.presence", {"push": [alice]})]
    fakes.sent.clear()
    fed.on_new_event(join("@alice:here.test"), 2)
    await asyncio.gather(*fed._tasks)
    assert sorted(d for d, _, _ in fakes.sent) == ["other.test", "remote.test"]
    presence.enabled = False
    fakes.sent.clear()
    fed.on_new_event(join("@bob:remote.test"), 3)
    assert fakes.sent == [] and not fed._tasks

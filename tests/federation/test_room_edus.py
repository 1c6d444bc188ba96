"""m.typing and m.receipt across servers with fakes: who is sent what (private receipts
never), and what inbound EDUs are taken (joined users only, threads kept, garbage and
foreign users dropped)."""

from __future__ import annotations

from typing import Any

from starling.federation.edu import EduRegistry
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

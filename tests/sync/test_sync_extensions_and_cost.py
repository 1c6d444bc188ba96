"""Extensions in the sync token and response, and the cost of a sync: a fixed number of
queries whatever the number of rooms."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starling.sync.extension import SyncContext
from starling.sync.tokens import SyncToken
from tests.support.harness import Harness
from tests.sync.helpers import join, sync


class CounterExtension:
    """A toy stream: each bump adds a global event and a per-room ephemeral one."""

    stream_name = "toy"

    def __init__(self, hs: Harness) -> None:
        self.position = 0
        self.items: list[tuple[int, str, str | None]] = []  # (pos, user, room)
        self.hs = hs
        self.contexts: list[SyncContext] = []
        self.fail = False

    def current_position(self) -> int:
        return self.position

    def bump(self, user_id: str, room_id: str | None = None) -> None:
        self.position += 1
        self.items.append((self.position, user_id, room_id))
        self.hs.services.notifier.notify(users=[user_id])

    async def contribute(self, ctx: SyncContext, response: dict[str, Any]) -> bool:
        self.contexts.append(ctx)
        if self.fail:
            raise RuntimeError("toy stream broke")
        since = ctx.since or 0
        mine = [i for i in self.items if since < i[0] <= ctx.upto and i[1] == ctx.user_id]
        if not mine:
            return False
        events = response.setdefault("toy", {"events": []})["events"]
        for pos, _, room_id in mine:
            if room_id is None:
                events.append({"type": "org.example.toy", "content": {"pos": pos}})
            elif room_id in ctx.joined_rooms:
                room = response["rooms"]["join"].setdefault(room_id, {})
                room.setdefault("ephemeral", {"events": []})["events"].append(
                    {"type": "org.example.toy", "content": {"pos": pos}}
                )
        return True


async def test_extension_positions_in_token_and_data(hs: Harness) -> None:
    alice, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    toy = CounterExtension(hs)
    hs.services.sync.add_extension(toy)
    first = await sync(hs, tok)
    assert SyncToken.parse(first["next_batch"]).streams["toy"] == 0
    assert toy.contexts[-1].since is None and toy.contexts[-1].joined_rooms == {room_id}
    toy.bump(alice, room_id)
    second = await sync(hs, tok, since=first["next_batch"])
    assert SyncToken.parse(second["next_batch"]).streams["toy"] == 1
    assert toy.contexts[-1].since == 0 and toy.contexts[-1].upto == 1
    room = second["rooms"]["join"][room_id]
    assert room["ephemeral"]["events"][0]["content"] == {"pos": 1}
    # A room only an extension touched still has the usual shape.
    assert room["timeline"] == {
        "events": [],
        "limited": False,
        "prev_batch": room["timeline"]["prev_batch"],
    }

    # A long-poll is woken by the extension's notify.
    async def later() -> None:
        await asyncio.sleep(0.2)
        toy.bump(alice)

    task = asyncio.create_task(later())
    start = time.monotonic()
    third = await sync(hs, tok, since=second["next_batch"], timeout=10000)
    await task
    assert time.monotonic() - start < 2
    assert third["toy"]["events"] == [{"type": "org.example.toy", "content": {"pos": 2}}]
    # set_presence reaches the extensions.
    await sync(hs, tok, since=third["next_batch"], set_presence="unavailable")
    assert toy.contexts[-1].set_presence == "unavailable"
    # A failing extension keeps its old position, so nothing is skipped.
    toy.fail = True
    toy.bump(alice)
    fourth = await sync(hs, tok, since=third["next_batch"])
    assert SyncToken.parse(fourth["next_batch"]).streams["toy"] == 2
    toy.fail = False
    fifth = await sync(hs, tok, since=fourth["next_batch"])
    assert fifth["toy"]["events"][0]["content"] == {"pos": 3}


async def test_token_from_before_an_extension_registered(hs: Harness) -> None:
    alice, tok = await hs.register("alice")
    await hs.create_room(tok)
    first = await sync(hs, tok)
    toy = CounterExtension(hs)
    hs.services.sync.add_extension(toy)
    toy.bump(alice)
    # No position for the new stream: it serves everything, and the sync does not wait.
    start = time.monotonic()
    body = await sync(hs, tok, since=first["next_batch"], timeout=5000)
    assert time.monotonic() - start < 2
    assert body["toy"]["events"]


def _count_queries(hs: Harness) -> list[str]:
    db = hs.services.db
    seen: list[str] = []
    for name in ("fetch_all", "fetch_one", "fetch_val", "execute"):
        original: Callable[..., Awaitable[Any]] = getattr(db, name)

        def wrap(orig: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def counted(sql: str, *args: Any) -> Any:
                seen.append(sql)
                return await orig(sql, *args)

            return counted

        setattr(db, name, wrap(original))
    return seen


async def test_sync_cost_does_not_grow_with_rooms(hs: Harness) -> None:
    _alice, atok = await hs.register("alice")
    _bob, btok = await hs.register("bob")
    rooms = []
    for _ in range(30):
        room_id = await hs.create_room(atok, preset="public_chat")
        await join(hs, btok, room_id)
        rooms.append(room_id)
    for i in range(5):
        for room_id in rooms:
            await hs.send_message(btok if i % 2 else atok, room_id, f"msg {i}")
    # Cold caches: a new homeserver view of the same database would be fairer, but the
    # event cache is what makes syncs cheap; count what reaches the database.
    queries = _count_queries(hs)
    body = await sync(hs, atok, filter={"room": {"timeline": {"limit": 3}}})
    assert set(body["rooms"]["join"]) == set(rooms)
    initial = len(queries)
    assert initial < 25, queries
    queries.clear()
    for room_id in rooms[:10]:
        await hs.send_message(btok, room_id, "news")
    queries.clear()
    incremental = await sync(hs, atok, since=body["next_batch"])
    assert len(incremental["rooms"]["join"]) == 10
    assert len(queries) < 25, queries
    # A lazy-loading initial sync costs the same.
    queries.clear()
    await sync(
        hs, atok, filter={"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 3}}}
    )
    assert len(queries) < 25, queries

"""The load: an aiohttp client (one shared session) driving the Client-Server API.

Every scenario is bounded in count and in time, talks to 127.0.0.1 only, and checks the
server's answers (status codes, and what a sync returns), so that a server answering
errors fast can never look fast. Times are wall-clock from the client's side
(`time.perf_counter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

V3 = "/_matrix/client/v3"
PASSWORD = "bench-password-1"
REQUEST_TIMEOUT_S = 60


class ServerError(RuntimeError):
    """The server answered a setup or load request with an error."""


@dataclass
class User:
    user_id: str
    token: str


@dataclass
class Params:
    send_latency_n: int = 500
    throughput_messages: int = 2000
    throughput_seconds: float = 30.0
    throughput_senders: int = 16
    throughput_rooms: int = 8
    delivery_n: int = 200
    sync_rooms: int = 50
    sync_messages_per_room: int = 100
    sync_repeats: int = 5
    sliding_messages_per_room: int = 20
    sliding_big_rooms: int = 500
    sliding_delivery_n: int = 100
    create_rooms: int = 50
    joiners: int = 200
    join_concurrency: int = 8
    setup_concurrency: int = 8


@dataclass
class Results:
    values: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class Api:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base = base_url

    async def call(
        self,
        method: str,
        path: str,
        user: User | None = None,
        body: Any = None,
        params: dict[str, str] | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
        if user is not None:
            headers["Authorization"] = f"Bearer {user.token}"
        data = orjson.dumps(body) if body is not None else None
        async with self.session.request(
            method, self.base + path, data=data, headers=headers, params=params
        ) as resp:
            raw = await resp.read()
            if resp.status not in expect:
                raise ServerError(f"{method} {path} -> {resp.status}: {raw[:500]!r}")
            return resp.status, orjson.loads(raw) if raw else {}

    # --- accounts -------------------------------------------------------------------

    async def register(self, username: str) -> User:
        """POST /register with m.login.dummy auth. Sent straight away, without the
        session-less probe first: Starling limits probes per IP (1/s, burst 20) whatever
        the rc_* settings say. If a server insists on a UIA session, it gets the two-step
        flow; a 429 is waited out (bounded)."""
        body: dict[str, Any] = {
            "username": username,
            "password": PASSWORD,
            "auth": {"type": "m.login.dummy"},
        }
        for _ in range(20):
            status, resp = await self.call(
                "POST", f"{V3}/register", body=body, expect=(200, 401, 429)
            )
            if status == 200:
                return User(resp["user_id"], resp["access_token"])
            if status == 429:
                await asyncio.sleep(resp.get("retry_after_ms", 1000) / 1000)
                continue
            flows = [f["stages"] for f in resp.get("flows", [])]
            if ["m.login.dummy"] not in flows or "session" not in resp:
                raise ServerError(f"no m.login.dummy registration flow: {resp}")
            body["auth"] = {"type": "m.login.dummy", "session": resp["session"]}
        raise ServerError(f"could not register {username}")

    async def filter(self, user: User, definition: dict[str, Any]) -> str:
        _, body = await self.call(
            "POST", f"{V3}/user/{quote(user.user_id)}/filter", user, definition
        )
        return str(body["filter_id"])

    # --- rooms ----------------------------------------------------------------------

    async def create_room(self, user: User, **extra: Any) -> str:
        body = {"room_version": "12", "preset": "public_chat", **extra}
        _, resp = await self.call("POST", f"{V3}/createRoom", user, body)
        return str(resp["room_id"])

    async def join(self, user: User, room_id: str) -> None:
        await self.call("POST", f"{V3}/join/{quote(room_id)}", user, {})

    async def send(self, user: User, room_id: str, body: str) -> str:
        txn = uuid.uuid4().hex
        _, resp = await self.call(
            "PUT",
            f"{V3}/rooms/{quote(room_id)}/send/m.room.message/{txn}",
            user,
            {"msgtype": "m.text", "body": body},
        )
        return str(resp["event_id"])

    async def sync(self, user: User, **params: str) -> dict[str, Any]:
        _, body = await self.call("GET", f"{V3}/sync", user, params=params)
        return body

    async def joined_members(self, user: User, room_id: str) -> int:
        _, body = await self.call("GET", f"{V3}/rooms/{quote(room_id)}/joined_members", user)
        return len(body["joined"])


async def bounded_gather(
    jobs: Sequence[Callable[[], Awaitable[Any]]], concurrency: int, deadline: float
) -> list[Any]:
    """Run the jobs with at most `concurrency` in flight; fail if the deadline passes."""
    results: list[Any] = [None] * len(jobs)
    next_job = 0

    async def worker() -> None:
        nonlocal next_job
        while next_job < len(jobs):
            i = next_job
            next_job += 1
            if time.monotonic() > deadline:
                raise ServerError("setup took longer than its time bound")
            results[i] = await jobs[i]()

    try:
        async with asyncio.TaskGroup() as group:  # the first failure cancels the others
            for _ in range(concurrency):
                group.create_task(worker())
    except ExceptionGroup as eg:
        raise eg.exceptions[0] from None
    return results


# --- scenarios ---------------------------------------------------------------------------


async def register_users(api: Api, p: Params, res: Results) -> dict[str, list[User]]:
    names: dict[str, list[str]] = {
        "latency": ["lat"],
        "senders": [f"tp{i}" for i in range(p.throughput_senders)],
        "delivery": ["dsend", "dsync"],
        "creator": ["creator"],
        "big": ["big"],
        "slider": ["slider"],
        "slider_big": ["slider_big"],
        "sliding_delivery": ["ssend", "ssync"],
        "host": ["host"],
        "joiners": [f"j{i}" for i in range(p.joiners)],
    }
    flat = [(group, n) for group, ns in names.items() for n in ns]
    start = time.perf_counter()
    users = await bounded_gather(
        [functools.partial(api.register, n) for _, n in flat],
        p.setup_concurrency,
        time.monotonic() + 300,
    )
    res.notes.append(
        f"registered {len(flat)} users in {time.perf_counter() - start:.1f} s (setup, untimed)"
    )
    out: dict[str, list[User]] = {g: [] for g in names}
    for (group, _), user in zip(flat, users, strict=True):
        out[group].append(user)
    return out


async def send_latency(api: Api, user: User, p: Params, res: Results) -> None:
    """Sequential PUT /send from one user into one room: p50 and p99 of each request."""
    room = await api.create_room(user, name="latency")
    for i in range(20):  # warm-up, untimed
        await api.send(user, room, f"warm-up {i}")
    samples: list[float] = []
    deadline = time.monotonic() + 120
    for i in range(p.send_latency_n):
        t0 = time.perf_counter()
        await api.send(user, room, f"latency {i}")
        samples.append(time.perf_counter() - t0)
        if time.monotonic() > deadline:
            res.notes.append(f"send latency: stopped at the 120 s bound after {i + 1} sends")
            break
    res.values["send_p50_ms"] = percentile(samples, 50) * 1000
    res.values["send_p99_ms"] = percentile(samples, 99) * 1000


async def send_throughput(api: Api, senders: list[User], p: Params, res: Results) -> None:
    """`throughput_senders` users, two per room over `throughput_rooms` rooms, each sending
    as fast as its answers come back, until `throughput_messages` were sent or
    `throughput_seconds` passed."""
    rooms = [
        await api.create_room(senders[i], name=f"throughput {i}") for i in range(p.throughput_rooms)
    ]
    for i, user in enumerate(senders[p.throughput_rooms :]):
        await api.join(user, rooms[i % p.throughput_rooms])
    remaining = p.throughput_messages
    sent = 0
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + p.throughput_seconds
    last_done = start

    async def sender(i: int, user: User) -> None:
        nonlocal remaining, sent, last_done
        room = rooms[i % p.throughput_rooms]
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            t0 = time.perf_counter()
            await api.send(user, room, f"throughput {i} {remaining}")
            last_done = time.perf_counter()
            latencies.append(last_done - t0)
            sent += 1

    async with asyncio.TaskGroup() as group:
        for i, u in enumerate(senders):
            group.create_task(sender(i, u))
    elapsed = last_done - start
    res.values["throughput_msg_s"] = sent / elapsed
    res.values["throughput_p50_ms"] = percentile(latencies, 50) * 1000
    res.values["throughput_p99_ms"] = percentile(latencies, 99) * 1000
    if sent < p.throughput_messages:
        res.notes.append(f"throughput: {sent} messages in the {p.throughput_seconds:.0f} s bound")


async def delivery_latency(api: Api, sender: User, syncer: User, p: Params, res: Results) -> None:
    """A client long-polls /sync (timeout 30 s, a filter for this one room); another user
    sends `delivery_n` messages one at a time, each after the previous one arrived (and
    20 ms for the poll to be waiting again). Latency: from just before the PUT /send to the
    /sync response that carries the event, read and parsed. Both clients are tasks of
    this one process, so the client's own work and scheduling are part of the figure
    (docs/performance.md, "Issue 20, third pass", splits it)."""
    room = await api.create_room(sender, name="delivery")
    await api.join(syncer, room)
    filter_id = await api.filter(
        syncer,
        {
            "room": {
                "rooms": [room],
                "timeline": {"limit": 50},
                "state": {"lazy_load_members": True},
            },
            "presence": {"types": []},
            "account_data": {"types": []},
        },
    )
    since = str((await api.sync(syncer, filter=filter_id))["next_batch"])
    arrived: dict[int, float] = {}
    waiting: dict[int, asyncio.Event] = {}
    stop = False

    async def poll() -> None:
        nonlocal since
        while not stop:
            body = await api.sync(syncer, since=since, timeout="30000", filter=filter_id)
            now = time.perf_counter()
            since = str(body["next_batch"])
            joined = body.get("rooms", {}).get("join", {}).get(room, {})
            for ev in joined.get("timeline", {}).get("events", []):
                text = ev.get("content", {}).get("body", "")
                if ev.get("type") == "m.room.message" and text.startswith("delivery "):
                    i = int(text.split()[1])
                    arrived.setdefault(i, now)
                    if i in waiting:
                        waiting[i].set()

    poller = asyncio.create_task(poll())
    samples: list[float] = []
    try:
        await asyncio.sleep(0.2)
        deadline = time.monotonic() + 120
        for i in range(p.delivery_n):
            waiting[i] = asyncio.Event()
            t0 = time.perf_counter()
            await api.send(sender, room, f"delivery {i}")
            try:
                await asyncio.wait_for(waiting[i].wait(), timeout=10)
            except TimeoutError:
                raise ServerError(f"message {i} never reached the long-polling client") from None
            if poller.done():
                poller.result()  # raise its error
            samples.append(arrived[i] - t0)
            if time.monotonic() > deadline:
                res.notes.append(f"delivery: stopped at the 120 s bound after {i + 1}")
                break
            await asyncio.sleep(0.02)
    finally:
        stop = True
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await poller
    res.values["delivery_p50_ms"] = percentile(samples, 50) * 1000
    res.values["delivery_p99_ms"] = percentile(samples, 99) * 1000


async def create_rooms(api: Api, user: User, p: Params, res: Results) -> None:
    """`create_rooms` sequential POST /createRoom (public_chat preset, a name and a topic)."""
    await api.create_room(user, name="warm-up")
    samples: list[float] = []
    start = time.perf_counter()
    for i in range(p.create_rooms):
        t0 = time.perf_counter()
        await api.create_room(user, name=f"room {i}", topic=f"topic {i}")
        samples.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    res.values["create_rooms_s"] = p.create_rooms / elapsed
    res.values["create_p50_ms"] = percentile(samples, 50) * 1000


async def many_joins(api: Api, host: User, joiners: list[User], p: Params, res: Results) -> None:
    """`joiners` users join one public room, `join_concurrency` at a time: total time."""
    room = await api.create_room(host, name="crowd")
    start = time.perf_counter()
    await bounded_gather(
        [functools.partial(api.join, u, room) for u in joiners],
        p.join_concurrency,
        time.monotonic() + 300,
    )
    res.values["joins_total_s"] = time.perf_counter() - start
    members = await api.joined_members(host, room)
    if members != len(joiners) + 1:
        raise ServerError(f"{members} joined members after {len(joiners)} joins (+ host)")


async def initial_sync(api: Api, user: User, p: Params, res: Results) -> None:
    """One user in `sync_rooms` rooms of `sync_messages_per_room` messages each (setup),
    then initial /sync with a filter of timeline limit 10: the first one, then the median
    of `sync_repeats` more. Each request differs in its `timeout` (0, 1, 2 ... ms; an
    initial sync never waits) so that Synapse's 2-minute /sync response cache, keyed on
    the request, cannot answer a repeat."""
    start = time.perf_counter()
    # The rooms are created concurrently too (as an independent harness does): concurrent
    # createRoom calls by one user must all succeed.
    rooms = await bounded_gather(
        [functools.partial(api.create_room, user, name=f"sync {i}") for i in range(p.sync_rooms)],
        p.setup_concurrency,
        time.monotonic() + 300,
    )
    jobs = [
        functools.partial(api.send, user, r, f"history {j}")
        for j in range(p.sync_messages_per_room)
        for r in rooms
    ]
    # Ordered by message number, so the rooms fill up evenly.
    bound = max(400, len(jobs) // 50)  # 500 rooms x 100 messages: 1 000 s
    await bounded_gather(jobs, p.setup_concurrency, time.monotonic() + bound)
    res.notes.append(
        f"initial sync setup ({p.sync_rooms} rooms x {p.sync_messages_per_room} messages): "
        f"{time.perf_counter() - start:.1f} s"
    )
    filter_id = await api.filter(user, {"room": {"timeline": {"limit": 10}}})

    async def timed(timeout_ms: int) -> float:
        t0 = time.perf_counter()
        body = await api.sync(user, filter=filter_id, timeout=str(timeout_ms))
        took = time.perf_counter() - t0
        joined = body.get("rooms", {}).get("join", {})
        if set(joined) != set(rooms):
            raise ServerError(f"initial sync returned {len(joined)} of {len(rooms)} rooms")
        for room_id in rooms:
            timeline = joined[room_id]["timeline"]
            if len(timeline["events"]) != 10 or not timeline.get("limited"):
                raise ServerError(
                    f"initial sync timeline of {room_id}: {len(timeline['events'])} events, "
                    f"limited={timeline.get('limited')}"
                )
        return took

    res.values["initial_sync_first_ms"] = await timed(0) * 1000
    repeats = [await timed(i + 1) for i in range(p.sync_repeats)]
    res.values["initial_sync_ms"] = statistics.median(repeats) * 1000


SLIDING_SYNC = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"


async def sliding_sync(api: Api, user: User, p: Params, res: Results) -> None:
    """Simplified sliding sync (MSC4186): one user in `sync_rooms` rooms of
    `sliding_messages_per_room` messages each (setup), then a new connection's first
    request with one list over every room (timeline limit 10, Element X's room-list
    required_state): the first one, then the median of `sync_repeats` more. Each is a new
    connection (its own conn_id, no pos), so no server can answer from what it sent before."""
    start = time.perf_counter()
    rooms = [await api.create_room(user, name=f"sliding {i}") for i in range(p.sync_rooms)]
    jobs = [
        functools.partial(api.send, user, r, f"history {j}")
        for j in range(p.sliding_messages_per_room)
        for r in rooms
    ]
    await bounded_gather(jobs, p.setup_concurrency, time.monotonic() + 400)
    res.notes.append(
        f"sliding sync setup ({p.sync_rooms} rooms x {p.sliding_messages_per_room} messages): "
        f"{time.perf_counter() - start:.1f} s"
    )
    body = {
        "lists": {
            "all": {
                "ranges": [[0, p.sync_rooms - 1]],
                "timeline_limit": 10,
                "required_state": [
                    ["m.room.name", ""],
                    ["m.room.avatar", ""],
                    ["m.room.encryption", ""],
                    ["m.room.create", ""],
                    ["m.room.member", "$ME"],
                    ["m.room.member", "$LAZY"],
                ],
            }
        },
        "extensions": {"e2ee": {"enabled": True}, "account_data": {"enabled": True}},
    }

    async def timed(n: int) -> float:
        t0 = time.perf_counter()
        _, resp = await api.call(
            "POST", SLIDING_SYNC, user, {**body, "conn_id": f"bench-{n}"}, params={"timeout": "0"}
        )
        took = time.perf_counter() - t0
        got = resp.get("rooms", {})
        if set(got) != set(rooms):
            raise ServerError(f"sliding sync returned {len(got)} of {len(rooms)} rooms")
        for room_id in rooms:
            timeline = got[room_id].get("timeline", [])
            if len(timeline) != 10:
                raise ServerError(f"sliding sync timeline of {room_id}: {len(timeline)} events")
        return took

    res.values["sliding_sync_first_ms"] = await timed(0) * 1000
    repeats = [await timed(i + 1) for i in range(p.sync_repeats)]
    res.values["sliding_sync_ms"] = statistics.median(repeats) * 1000


# What Element X asks for its room list (matrix-rust-sdk's room list service).
ROOM_LIST_STATE = [
    ["m.room.encryption", ""],
    ["m.room.member", "$LAZY"],
    ["m.room.member", "$ME"],
    ["m.room.name", ""],
    ["m.room.canonical_alias", ""],
    ["m.room.power_levels", ""],
    ["m.room.avatar", ""],
    ["m.room.create", ""],
]


async def sliding_sync_big(api: Api, user: User, p: Params, res: Results) -> None:
    """A user in `sliding_big_rooms` rooms (setup), then a new connection's first request
    as Element X starts: one list `[0, 19]`, timeline limit 1, its room-list
    required_state, `not_room_types: ["m.space"]`, the e2ee, to_device and account_data
    extensions. The first one, then the median of `sync_repeats` more (each its own
    conn_id)."""
    start = time.perf_counter()
    rooms = await bounded_gather(
        [
            functools.partial(api.create_room, user, name=f"big {i}")
            for i in range(p.sliding_big_rooms)
        ],
        p.setup_concurrency,
        time.monotonic() + 900,
    )
    res.notes.append(
        f"sliding sync setup ({len(rooms)} rooms): {time.perf_counter() - start:.1f} s"
    )
    body = {
        "lists": {
            "all": {
                "ranges": [[0, 19]],
                "timeline_limit": 1,
                "required_state": ROOM_LIST_STATE,
                "filters": {"not_room_types": ["m.space"]},
            }
        },
        "extensions": {
            "e2ee": {"enabled": True},
            "to_device": {"enabled": True},
            "account_data": {"enabled": True},
        },
    }

    async def timed(n: int) -> float:
        t0 = time.perf_counter()
        _, resp = await api.call(
            "POST", SLIDING_SYNC, user, {**body, "conn_id": f"big-{n}"}, params={"timeout": "0"}
        )
        took = time.perf_counter() - t0
        if resp.get("lists", {}).get("all", {}).get("count") != len(rooms):
            raise ServerError(f"sliding sync list count {resp.get('lists')!r:.200}")
        if len(resp.get("rooms", {})) != 20:
            raise ServerError(f"sliding sync returned {len(resp.get('rooms', {}))} rooms")
        return took

    res.values["sliding_big_first_ms"] = await timed(0) * 1000
    repeats = [await timed(i + 1) for i in range(p.sync_repeats)]
    res.values["sliding_big_ms"] = statistics.median(repeats) * 1000


async def sliding_delivery(api: Api, sender: User, syncer: User, p: Params, res: Results) -> None:
    """As `delivery_latency`, with the receiving client long-polling sliding sync (one
    list `[0, 19]`, timeline limit 10, timeout 30 s) instead of /sync."""
    room = await api.create_room(sender, name="sliding delivery")
    await api.join(syncer, room)
    body = {
        "conn_id": "delivery",
        "lists": {
            "all": {"ranges": [[0, 19]], "timeline_limit": 10, "required_state": ROOM_LIST_STATE}
        },
    }
    _, first = await api.call("POST", SLIDING_SYNC, syncer, body, params={"timeout": "0"})
    pos = str(first["pos"])
    arrived: dict[int, float] = {}
    waiting: dict[int, asyncio.Event] = {}
    stop = False

    async def poll() -> None:
        nonlocal pos
        while not stop:
            _, resp = await api.call(
                "POST", SLIDING_SYNC, syncer, body, params={"pos": pos, "timeout": "30000"}
            )
            now = time.perf_counter()
            pos = str(resp["pos"])
            for ev in resp.get("rooms", {}).get(room, {}).get("timeline", []):
                text = ev.get("content", {}).get("body", "")
                if ev.get("type") == "m.room.message" and text.startswith("delivery "):
                    i = int(text.split()[1])
                    arrived.setdefault(i, now)
                    if i in waiting:
                        waiting[i].set()

    poller = asyncio.create_task(poll())
    samples: list[float] = []
    try:
        await asyncio.sleep(0.2)
        deadline = time.monotonic() + 120
        for i in range(p.sliding_delivery_n):
            waiting[i] = asyncio.Event()
            t0 = time.perf_counter()
            await api.send(sender, room, f"delivery {i}")
            try:
                await asyncio.wait_for(waiting[i].wait(), timeout=10)
            except TimeoutError:
                raise ServerError(f"message {i} never reached the sliding sync client") from None
            if poller.done():
                poller.result()
            samples.append(arrived[i] - t0)
            if time.monotonic() > deadline:
                res.notes.append(f"sliding delivery: stopped at the 120 s bound after {i + 1}")
                break
            await asyncio.sleep(0.02)
    finally:
        stop = True
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await poller
    res.values["sliding_delivery_p50_ms"] = percentile(samples, 50) * 1000
    res.values["sliding_delivery_p99_ms"] = percentile(samples, 99) * 1000

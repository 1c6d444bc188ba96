"""CPU and database trips per request on the hot paths, in one process (no HTTP client of
our own in the figures that matter: the database trips are exact, CPU is what the whole
process spent, test client included).

    .venv/bin/python -m benchmarks.hot_paths                  # SQLite
    .venv/bin/python -m benchmarks.hot_paths --engine postgres
    .venv/bin/python -m benchmarks.hot_paths --profile sync   # cProfile one case

Cases, each after a warm-up:
- `sync`: bob long-polls nothing; alice sends one message, then bob's incremental /sync
  (the delivery benchmark's filter: one room, lazy members, no presence/account data)
  carries it. Bob never reads, so his unread count keeps growing: `--unread` messages are
  sent first (the independent harness's delivery run leaves 200 unread).
- `send`: sequential PUT /send into one room.
- `create`: POST /createRoom (public_chat, a name and a topic).
- `initial`: carol's initial /sync (the initial-sync row's shape: timeline limit 10) in
  `--sync-rooms` rooms of `--sync-messages` messages each (set up only when the case runs;
  `--n` / 10 requests). The cache of decoded events is the configured default, so with
  hundreds of rooms the repeats show what falls out of it.
- `concurrent`: 16 PUT /send at once, two senders in each of 8 rooms (the throughput
  row's shape); the figures are per message (CPU and trips of the whole burst / 16), and
  `commits` counts SQLite COMMITs (or PostgreSQL transactions) per message.

"Trips" are the jobs handed to SQLite's reader and writer threads (each a thread switch
and a wait on a shared machine; small writes the engine runs on the loop's own thread are
not trips), or on PostgreSQL the messages sent and waited for (each a
round trip; BEGIN and COMMIT counted, also when they go with other statements): exact counts that do not move with load. CPU is `time.process_time()` per request (all threads,
the in-process test client included), the median of `--n` requests. Uses the test
harness (tests/support), so it runs from a checkout with the dev dependencies.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starling.storage import sqlite as sqlite_engine
from tests.support.dbfixtures import make_test_database
from tests.support.harness import UNLIMITED_ROOM_RATES, make_harness

V3 = "/_matrix/client/v3"


class GcTimer:
    """Wall time spent in the garbage collector's full (generation 2) collections."""

    def __init__(self) -> None:
        self.full_ms = 0.0
        self.full = 0
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.full += 1
            self.full_ms += (time.perf_counter() - self._t0) * 1000


GC = GcTimer()


class TripCounter:
    """Counts jobs submitted to SQLite's threads, and round trips to PostgreSQL, patched
    in for the run."""

    def __init__(self) -> None:
        self.trips = 0
        self.commits = 0
        # With --statements: (SQL, wall ms) of each statement, PostgreSQL only.
        self.log: list[tuple[str, float, tuple[Any, ...]]] | None = None
        self._count_commits()
        self._count_postgres()
        cls = sqlite_engine.SqliteDatabase
        self._orig_write = cls._submit_write
        self._orig_read = cls._read
        counter = self

        def submit_write(db: Any, fn: Any, *args: Any, inline: bool = False) -> Any:
            # A small write the engine runs on the loop's thread is no trip.
            if not (inline and db._finished == db._submitted):
                counter.trips += 1
            return counter._orig_write(db, fn, *args, inline=inline)

        async def read(db: Any, fn: Any, sql: str, args: Any) -> Any:
            counter.trips += 1
            return await counter._orig_read(db, fn, sql, args)

        cls._submit_write = submit_write  # type: ignore[method-assign]
        cls._read = read  # type: ignore[method-assign]

    def _count_commits(self) -> None:
        counter = self
        original = sqlite_engine._commit_op

        def commit_op(conn: Any, sql: str, args: Any) -> None:
            counter.commits += 1
            original(conn, sql, args)

        sqlite_engine._commit_op = commit_op

    def _count_postgres(self) -> None:
        """Every message asyncpg sends and waits for (one round trip each: a
        transaction's BEGIN, deferred statements and COMMIT may share one, postgres.py)."""
        import asyncpg

        counter = self
        conn_cls = asyncpg.connection.Connection
        for name in ("execute", "executemany", "fetch", "fetchrow", "fetchval"):
            original = getattr(conn_cls, name)

            async def counted(
                conn: Any,
                query: str,
                *args: Any,
                _original: Any = original,
                _name: str = name,
                **kw: Any,
            ) -> Any:
                counter.trips += 1
                if query == "COMMIT" or query.endswith(";\nCOMMIT"):
                    counter.commits += 1
                t0 = time.perf_counter()
                try:
                    return await _original(conn, query, *args, **kw)
                finally:
                    if counter.log is not None and _name.startswith("fetch"):
                        counter.log.append((query, (time.perf_counter() - t0) * 1000, args))

            setattr(conn_cls, name, counted)


async def measure(
    n: int,
    before: Callable[[int], Awaitable[None]],
    op: Callable[[int], Awaitable[None]],
    trips: TripCounter,
    profile: cProfile.Profile | None,
    per: int = 1,
) -> tuple[float, float, float, float]:
    """Median CPU (µs), median wall (µs), mean trips and commits of `op` (divided by
    `per`, the requests one op makes), `before` untimed."""
    cpu: list[float] = []
    wall: list[float] = []
    total_trips = 0
    total_commits = 0
    gc_ms, gc_full = GC.full_ms, GC.full
    for i in range(n):
        await before(i)
        t0, w0, k0, c0 = time.process_time(), time.perf_counter(), trips.trips, trips.commits
        if profile is not None:
            profile.enable()
        await op(i)
        if profile is not None:
            profile.disable()
        cpu.append((time.process_time() - t0) / per)
        wall.append((time.perf_counter() - w0) / per)
        total_trips += trips.trips - k0
        total_commits += trips.commits - c0
    if GC.full > gc_full:
        print(
            f"  ({GC.full - gc_full} full GC collections in {n} requests, "
            f"{GC.full_ms - gc_ms:.0f} ms)"
        )
    return (
        statistics.median(cpu) * 1e6,
        statistics.median(wall) * 1e6,
        total_trips / n / per,
        total_commits / n / per,
    )


async def run(args: argparse.Namespace) -> None:
    trips = TripCounter()
    tmp = Path(tempfile.mkdtemp(prefix="starling-hot-"))
    rows: list[tuple[str, float, float, float, float]] = []
    async with (
        make_test_database(args.engine, tmp) as db,
        make_harness(db, tmp, presence={"enabled": False}, **UNLIMITED_ROOM_RATES) as hs,
    ):
        _, at = await hs.register("alice")
        bob, bt = await hs.register("bob")
        room = await hs.create_room(at, preset="public_chat")
        status, _ = await hs.request("POST", f"{V3}/join/{room}", bt, {})
        assert status == 200
        for i in range(args.unread):
            await hs.send_message(at, room, f"unread {i}")
        _, f = await hs.request(
            "POST",
            f"{V3}/user/{bob}/filter",
            bt,
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
        fid = f["filter_id"]
        _, body = await hs.request("GET", f"{V3}/sync", bt, params={"filter": fid})
        since = body["next_batch"]

        async def send_one(i: int) -> None:
            await hs.send_message(at, room, f"m{i}")

        async def sync_once(i: int) -> None:
            nonlocal since
            status, body = await hs.request(
                "GET", f"{V3}/sync", bt, params={"filter": fid, "since": since, "timeout": "0"}
            )
            assert status == 200, body
            since = body["next_batch"]
            events = body["rooms"]["join"][room]["timeline"]["events"]
            assert len(events) == 1, body

        async def nothing(i: int) -> None:
            return None

        async def create(i: int) -> None:
            await hs.create_room(at, preset="public_chat", name=f"room {i}", topic="t")

        # The throughput row's shape: two senders in each of 8 rooms, all at once.
        senders = []
        for _ in range(8):
            shared = await hs.create_room(at, preset="public_chat")
            status, _ = await hs.request("POST", f"{V3}/join/{shared}", bt, {})
            assert status == 200
            senders += [(at, shared), (bt, shared)]

        async def burst(i: int) -> None:
            await asyncio.gather(*(hs.send_message(t, r, f"c{i}") for t, r in senders))

        selected = args.cases.split(",") if args.cases else None
        carol_token = ""
        initial_filter = ""
        initial_rooms: list[str] = []
        if selected is None or "initial" in selected:
            _, carol_token = await hs.register("carol")
            sem = asyncio.Semaphore(8)

            async def make_room(i: int) -> str:
                async with sem:
                    return await hs.create_room(carol_token, name=f"sync {i}")

            initial_rooms = list(
                await asyncio.gather(*(make_room(i) for i in range(args.sync_rooms)))
            )

            async def fill(room_id: str) -> None:
                async with sem:
                    for j in range(args.sync_messages):
                        await hs.send_message(carol_token, room_id, f"history {j}")

            await asyncio.gather(*(fill(r) for r in initial_rooms))
            _, f = await hs.request(
                "POST",
                f"{V3}/user/@carol:{hs.server_name}/filter",
                carol_token,
                {"room": {"timeline": {"limit": 10}}},
            )
            initial_filter = f["filter_id"]

        async def initial(i: int) -> None:
            status, body = await hs.request(
                "GET", f"{V3}/sync", carol_token, params={"filter": initial_filter}
            )
            assert status == 200, body
            joined = body["rooms"]["join"]
            assert len(joined) == len(initial_rooms), len(joined)
            for room_id in initial_rooms:
                n_events = len(joined[room_id]["timeline"]["events"])
                assert n_events == 10 or args.sync_messages < 10, (room_id, n_events)

        cases: dict[str, tuple[Callable[[int], Awaitable[None]], Any, int]] = {
            "sync": (send_one, sync_once, 1),
            "send": (nothing, send_one, 1),
            "create": (nothing, create, 1),
            "concurrent": (nothing, burst, len(senders)),
            "initial": (nothing, initial, 1),
        }
        for name, (before, op, per) in cases.items():
            if selected is not None and name not in selected:
                continue
            warm = 10 if per == 1 else 2
            if name == "initial":
                warm = 1
            await measure(warm, before, op, trips, None)  # warm-up
            profile = cProfile.Profile() if args.profile == name else None
            n = args.n if name != "create" else max(10, args.n // 5)
            if per > 1:
                n = max(5, args.n // per)
            if name == "initial":
                n = max(3, args.n // 10)
            cpu, wall, per_op, commits = await measure(n, before, op, trips, profile, per)
            rows.append((name, cpu, wall, per_op, commits))
            if profile is not None:
                pstats.Stats(profile).sort_stats(args.sort).print_stats(args.top)
            if args.statements:
                trips.log = []
                await op(0)
                print(f"statements of one `{name}` request (reads; wall ms, SQL):")
                log, trips.log = trips.log, None
                for sql, ms, sql_args in log:
                    plan = await db.fetch_all(f"EXPLAIN (ANALYZE) {sql}", *sql_args)
                    times = " ".join(
                        line[0].split(":")[1].strip()
                        for line in plan[-2:]
                        if line[0].startswith(("Planning", "Execution"))
                    )
                    print(f"  {ms:8.2f}  (plan, execute: {times})  {' '.join(sql.split())[:200]}")
                if log:
                    sql, _, sql_args = max(log, key=lambda entry: entry[1])
                    plan = await db.fetch_all(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *sql_args)
                    print("the slowest one, EXPLAIN ANALYZE:")
                    shown = plan if len(plan) <= args.top else [*plan[: args.top - 3], *plan[-3:]]
                    for line in shown:
                        print("   ", line[0])
    print(
        f"engine {args.engine}, {args.unread} unread before the sync case, n={args.n}; "
        f"initial: {args.sync_rooms} rooms x {args.sync_messages} messages"
    )
    trips_name = "SQLite thread trips" if args.engine == "sqlite" else "PostgreSQL round trips"
    print(f"| case | CPU per request (µs, median) | wall (µs, median) | {trips_name} | commits |")
    print("|---|---:|---:|---:|---:|")
    for name, cpu, wall, per_op, commits in rows:
        print(f"| {name} | {cpu:.0f} | {wall:.0f} | {per_op:.1f} | {commits:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.hot_paths")
    ap.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--unread", type=int, default=200)
    ap.add_argument("--sync-rooms", type=int, default=50, help="rooms of the initial case")
    ap.add_argument("--sync-messages", type=int, default=100, help="messages in each")
    ap.add_argument("--profile", choices=("sync", "send", "create", "concurrent", "initial"))
    ap.add_argument("--cases", help="comma-separated subset of sync,send,create,concurrent,initial")
    ap.add_argument(
        "--statements",
        action="store_true",
        help="print each PostgreSQL read of one more request of each case, with its time",
    )
    ap.add_argument("--sort", default="cumulative", help="pstats order for --profile")
    ap.add_argument("--top", type=int, default=40, help="rows of --profile output")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()

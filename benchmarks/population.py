"""Memory with many registered users and rooms: the resident memory of one `starling serve`
(SQLite) holding `--users` registered users and `--rooms` rooms (issue 20).

    .venv/bin/python -m benchmarks.population --users 1000 --rooms 1000
    .venv/bin/python -m benchmarks.population --users 10000 --rooms 1000 --members 4

Bounded in count and time; the server is always stopped. Steps, each followed by a reading
of VmRSS of the server's process tree (2 s after the step):

1. `--users` users with one device and access token each are written directly into the
   database (as `benchmarks.idle_sync` does: hashing thousands of passwords through
   /register would measure argon2), then the server starts: **idle**.
2. `--rooms` rooms are created over HTTP (`POST /createRoom`, private chat, by user
   i mod users), each then joined by `--members` other users: **after the rooms**.
3. Every user makes one initial `/sync` (`timeout=0`), 8 at a time: **after every user's
   sync** (and the peak sampled every 0.25 s during it).
4. The server is restarted on the same database: **idle, restarted**.

Prints a Markdown table; nothing is written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp

from benchmarks.idle_sync import SERVER_NAME, create_users, start_server, stop_server, sync, wait_up
from benchmarks.machine import git_commit
from benchmarks.server.servers import free_port, process_tree

CONCURRENCY = 8
STEP_TIMEOUT_S = 900


def rss_mib(pid: int) -> float:
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


async def _bounded(
    jobs: Sequence[Callable[[], Awaitable[object]]], concurrency: int = CONCURRENCY
) -> None:
    queue = list(reversed(jobs))

    async def worker() -> None:
        while queue:
            await queue.pop()()

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), STEP_TIMEOUT_S)


async def _post(
    session: aiohttp.ClientSession, url: str, token: str, body: dict[str, object]
) -> dict[str, object]:
    async with session.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as r:
        answer: dict[str, object] = await r.json()
        if r.status != 200:
            raise RuntimeError(f"{url} answered {r.status}: {answer}")
        return answer


async def _populate(
    args: argparse.Namespace,
    session: aiohttp.ClientSession,
    base: str,
    tokens: list[str],
    pid: int,
    rows: list[tuple[str, str]],
) -> None:
    create = f"{base}/_matrix/client/v3/createRoom"
    room_ids: list[str] = []

    async def make_room(i: int) -> None:
        body: dict[str, object] = {"preset": "public_chat", "name": f"room {i}"}
        answer = await _post(session, create, tokens[i % args.users], body)
        room_ids.append(str(answer["room_id"]))

    started = time.monotonic()
    await _bounded([functools.partial(make_room, i) for i in range(args.rooms)])
    joins = [
        functools.partial(
            _post,
            session,
            f"{base}/_matrix/client/v3/join/{room_id}",
            tokens[(n + k * 7919) % args.users],
            {},
        )
        for n, room_id in enumerate(room_ids)
        for k in range(1, args.members + 1)
    ]
    await _bounded(joins)
    print(f"{len(room_ids)} rooms, {len(joins)} joins in {time.monotonic() - started:.0f} s")
    await asyncio.sleep(2)
    rows.append((f"after {len(room_ids)} rooms and {len(joins)} joins", f"{rss_mib(pid):.1f}"))
    peak = 0.0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mib(pid))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.25)

    sampler = asyncio.create_task(sample())
    started = time.monotonic()
    await _bounded([functools.partial(sync, session, base, t, {"timeout": "0"}) for t in tokens])
    done.set()
    await sampler
    print(f"{len(tokens)} initial syncs in {time.monotonic() - started:.0f} s", flush=True)
    await asyncio.sleep(2)
    rows.append(("after every user's initial /sync", f"{rss_mib(pid):.1f}"))
    rows.append(("  peak during those syncs", f"{peak:.1f}"))


async def run(args: argparse.Namespace, workdir: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "starling.cli", "generate-config"]
    command += ["--server-name", SERVER_NAME, "--data-dir", str(workdir)]
    command += ["--http-port", str(port), "--federation-port", str(free_port())]
    await asyncio.to_thread(
        subprocess.run, [*command, "--no-rate-limit"], check=True, capture_output=True
    )
    started = time.monotonic()
    tokens = await create_users(workdir / "starling.yaml", args.users)
    print(f"{args.users} users written in {time.monotonic() - started:.0f} s", flush=True)
    timeout = aiohttp.ClientTimeout(total=120)
    for label in ("idle after start", "idle, restarted on the same database"):
        server = start_server(workdir)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                await wait_up(session, base, server)
                await asyncio.sleep(2)
                rows.append((label, f"{rss_mib(server.pid):.1f}"))
                if label == "idle after start":
                    await _populate(args, session, base, tokens, server.pid, rows)
        finally:
            stop_server(server)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--rooms", type=int, default=1000)
    p.add_argument("--members", type=int, default=0, help="users joining each room")
    args = p.parse_args()
    if not (1 <= args.users <= 100_000 and 0 <= args.rooms <= 10_000 and args.members <= 50):
        p.error("--users 1..100000, --rooms 0..10000, --members 0..50")
    with tempfile.TemporaryDirectory(prefix="starling-population-") as tmp:
        rows = asyncio.run(run(args, Path(tmp)))
    print(
        f"\nStarling {git_commit()}, SQLite, {args.users} users, {args.rooms} rooms,"
        f" {args.members} joined members each\n"
    )
    print("| reading | RSS (MiB) |\n|---|---:|")
    for label, value in rows:
        print(f"| {label} | {value} |")


if __name__ == "__main__":
    main()

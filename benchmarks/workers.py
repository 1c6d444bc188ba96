"""Workers (issue 17): message throughput and delivery latency with 1, 2 and 4 processes
of one server on PostgreSQL and Redis, and memory per idle long-poll spread over them.

    .venv/bin/python -m benchmarks.workers                          # 1, 2, 4 workers
    .venv/bin/python -m benchmarks.workers --workers 1 2 --messages 200 --no-write
    .venv/bin/python -m benchmarks.workers --idle 10000             # + 10 000 idle long-polls

For each process count N (bounded in count and time; every process is stopped at the end,
and on any error):

1. a fresh PostgreSQL database (created and dropped on the server of --postgres), a
   generated config with `redis:`, the main process and N-1 `--worker` processes, each
   with its own client listener;
2. --senders users (spread round-robin over the processes, as a load balancer would)
   join one room each of --rooms rooms and send --messages messages in all, as fast as
   each gets its answer, while one receiver per process long-polls /sync for every room;
3. throughput = messages acknowledged / wall time; delivery latency = time from a send's
   200 to its event showing up in a /sync of a receiver on *another* process than the
   one that took the send (so every latency crosses Redis), p50 / p95 / max;
4. with --idle C: C idle /sync long-polls spread over the processes, held --hold seconds:
   the RSS of all the processes together before and while held, per connection.

Writes benchmarks/results/workers-<date>.md (unless --no-write) and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from starling.storage.postgres import create_database, drop_database

ROOT = Path(__file__).resolve().parents[1]
V3 = "/_matrix/client/v3"
SERVER_NAME = "bench.local"
# Every event of a sync in its timeline (the default limit of 10 would hide a burst).
TIMELINE_FILTER = '{"room":{"timeline":{"limit":1000}},"presence":{"not_types":["*"]}}'


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Process:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Result:
    workers: int
    messages: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    undelivered: int = 0
    idle: int = 0
    rss_before: float = 0.0
    rss_held: float = 0.0

    def row(self) -> str:
        lat = sorted(self.latencies_ms) or [float("nan")]
        p50 = statistics.median(lat)
        p95 = lat[min(len(lat) - 1, int(len(lat) * 0.95))]
        rate = self.messages / self.seconds if self.seconds else 0.0
        idle = f"{(self.rss_held - self.rss_before) * 1024 / self.idle:.1f}" if self.idle else "-"
        return (
            f"| {self.workers} | {self.messages} | {rate:.0f} | {p50:.1f} | {p95:.1f} | "
            f"{lat[-1]:.1f} | {self.undelivered} | {self.rss_before:.0f} | {idle} |"
        )


class Cluster:
    def __init__(self, work: Path, dsn: str, count: int, redis: str) -> None:
        self.work = work
        self.processes = [Process("main" if i == 0 else f"w{i}", free_port()) for i in range(count)]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "starling.cli",
                "generate-config",
                "--server-name",
                SERVER_NAME,
                "--data-dir",
                str(work),
                "--http-port",
                str(self.processes[0].port),
                "--federation-port",
                str(free_port()),
                "--database",
                dsn,
                "--open-registration",
                "--no-rate-limit",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        config = yaml.safe_load((work / "starling.yaml").read_text())
        host, _, port = redis.rpartition(":")
        config["redis"] = {"host": host, "port": int(port)}
        config["presence"] = {"enabled": False}
        config["log_level"] = "WARNING"
        config["http_limits"] = {"max_connections_per_ip": 0}
        (work / "starling.yaml").write_text(yaml.safe_dump(config))
        for p in self.processes:
            (work / f"{p.name}.yaml").write_text(
                yaml.safe_dump(
                    {
                        "listeners": [
                            {
                                "port": p.port,
                                "bind_addresses": ["127.0.0.1"],
                                "resources": [{"names": ["client"]}],
                            }
                        ]
                    }
                )
            )

    def start(self) -> None:
        for p in self.processes:
            command = [
                sys.executable,
                "-m",
                "starling.cli",
                "serve",
                "-c",
                str(self.work / "starling.yaml"),
                "-c",
                str(self.work / f"{p.name}.yaml"),
            ]
            if p.name != "main":
                command += ["--worker", p.name]
            log = open(self.work / f"{p.name}.log", "wb")
            p.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    async def wait_up(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 90
        for p in self.processes:
            while True:
                assert p.proc is not None
                if p.proc.poll() is not None:
                    raise RuntimeError(f"{p.name} exited: see {self.work}/{p.name}.log")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{p.url}/_matrix/client/versions") as r:
                        if r.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{p.name} did not come up")
                await asyncio.sleep(0.1)

    def rss(self) -> float:
        return sum(rss_mib(p.proc.pid) for p in self.processes if p.proc is not None)

    def stop(self) -> None:
        for p in self.processes:
            if p.proc is None or p.proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.proc.pid, signal.SIGTERM)
        for p in self.processes:
            if p.proc is None:
                continue
            try:
                p.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.proc.pid, signal.SIGKILL)
                p.proc.wait(timeout=20)


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    token: str | None = None,
    body: Any = None,
    **params: str,
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.request(
        method,
        url,
        json=body,
        params=params or None,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=120),
    ) as r:
        answer = await r.json(content_type=None)
        if r.status != 200:
            raise RuntimeError(f"{method} {url}: {r.status} {answer}")
        return answer


async def register(session: aiohttp.ClientSession, base: str, name: str) -> str:
    answer = await call(
        session,
        "POST",
        f"{base}{V3}/register",
        None,
        {"username": name, "password": "bench-password", "auth": {"type": "m.login.dummy"}},
    )
    return str(answer["access_token"])


async def measure(args: argparse.Namespace, count: int) -> Result:
    result = Result(count)
    admin_dsn = args.postgres
    name = f"starling_bench_{secrets.token_hex(4)}"
    dsn = await create_database(admin_dsn, name)
    work = Path(tempfile.mkdtemp(prefix=f"workers-{count}-"))
    cluster = Cluster(work, dsn, count, args.redis)
    try:
        cluster.start()
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            await cluster.wait_up(session)
            bases = [p.url for p in cluster.processes]
            owner = await register(session, bases[0], "owner")
            rooms = [
                (
                    await call(
                        session,
                        "POST",
                        f"{bases[0]}{V3}/createRoom",
                        owner,
                        {"preset": "public_chat"},
                    )
                )["room_id"]
                for _ in range(args.rooms)
            ]
            senders = []
            for i in range(args.senders):
                base = bases[i % count]
                token = await register(session, base, f"sender{i}")
                room = rooms[i % len(rooms)]
                await call(session, "POST", f"{base}{V3}/join/{room}", token, {})
                senders.append((base, token, room))
            receivers = []
            for i, base in enumerate(bases):
                token = await register(session, base, f"receiver{i}")
                for room in rooms:
                    await call(session, "POST", f"{base}{V3}/join/{room}", token, {})
                since = (await call(session, "GET", f"{base}{V3}/sync", token, timeout="0"))[
                    "next_batch"
                ]
                receivers.append((base, token, since))

            acked: dict[str, tuple[float, str]] = {}  # event_id -> (ack time, process)
            seen: dict[tuple[str, str], float] = {}  # (event_id, receiver process) -> time
            done = asyncio.Event()

            async def receive(base: str, token: str, since: str) -> None:
                while not done.is_set():
                    answer = await call(
                        session,
                        "GET",
                        f"{base}{V3}/sync",
                        token,
                        since=since,
                        timeout="5000",
                        filter=TIMELINE_FILTER,
                    )
                    now = time.monotonic()
                    since = answer["next_batch"]
                    for joined in answer.get("rooms", {}).get("join", {}).values():
                        for event in joined.get("timeline", {}).get("events", []):
                            seen.setdefault((event["event_id"], base), now)

            receiving = [asyncio.ensure_future(receive(*r)) for r in receivers]
            per_sender = args.messages // len(senders)

            async def send(base: str, token: str, room: str, tag: int) -> None:
                for j in range(per_sender):
                    answer = await call(
                        session,
                        "PUT",
                        f"{base}{V3}/rooms/{room}/send/m.room.message/b{tag}-{j}",
                        token,
                        {"msgtype": "m.text", "body": f"bench {tag} {j}"},
                    )
                    acked[answer["event_id"]] = (time.monotonic(), base)

            started = time.monotonic()
            await asyncio.wait_for(
                asyncio.gather(*(send(b, t, r, i) for i, (b, t, r) in enumerate(senders))),
                args.timeout,
            )
            result.seconds = time.monotonic() - started
            result.messages = len(acked)
            # Let the receivers catch up (bounded), then stop them.
            deadline = time.monotonic() + 15
            expected = [
                (e, b)
                for e, (_, sent_on) in acked.items()
                for b in bases
                if count == 1 or b != sent_on
            ]
            while time.monotonic() < deadline:
                if all(key in seen for key in expected):
                    break
                await asyncio.sleep(0.2)
            done.set()
            for task in receiving:
                task.cancel()
            for task in receiving:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            # Only deliveries that crossed to another process (with more than one).
            for event_id, b in expected:
                when = seen.get((event_id, b))
                if when is not None:
                    result.latencies_ms.append(max(0.0, (when - acked[event_id][0]) * 1000))
            result.undelivered = sum(1 for key in expected if key not in seen)

            if args.idle:
                result.idle = args.idle
                result.rss_before = cluster.rss()
                tokens = [(b, await register(session, b, f"idle{i}")) for i, b in enumerate(bases)]
                sinces = []
                for b, t in tokens:
                    s = (await call(session, "GET", f"{b}{V3}/sync", t, timeout="0"))["next_batch"]
                    sinces.append((b, t, s))
                polls = [
                    asyncio.ensure_future(
                        call(
                            session,
                            "GET",
                            f"{sinces[i % count][0]}{V3}/sync",
                            sinces[i % count][1],
                            since=sinces[i % count][2],
                            timeout="300000",
                        )
                    )
                    for i in range(args.idle)
                ]
                peak = 0.0
                hold_until = time.monotonic() + args.hold
                while time.monotonic() < hold_until:
                    peak = max(peak, cluster.rss())
                    await asyncio.sleep(0.5)
                result.rss_held = peak
                for p in polls:
                    p.cancel()
                await asyncio.gather(*polls, return_exceptions=True)
            else:
                result.rss_before = cluster.rss()
    finally:
        cluster.stop()
        await drop_database(admin_dsn, name)
    return result


def report(results: list[Result], args: argparse.Namespace) -> str:
    lines = [
        f"# Workers benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)",
        "",
        f"{args.messages} messages from {args.senders} senders into {args.rooms} rooms; one "
        "receiver long-polling per process; latency = send's 200 to the event in a /sync "
        "on another process (through Redis).",
        "",
        "| processes | messages | msg/s | p50 ms | p95 ms | max ms | not delivered | RSS all MiB"
        " | KiB per idle long-poll |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [r.row() for r in results]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--senders", type=int, default=12)
    parser.add_argument("--rooms", type=int, default=4)
    parser.add_argument("--idle", type=int, default=0, help="idle long-polls (0: none)")
    parser.add_argument("--hold", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on each send phase")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="127.0.0.1:6379")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if any(n < 1 or n > 8 for n in args.workers):
        sys.exit("--workers: 1 to 8 processes")
    if args.idle:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if hard < args.idle + 1000:  # per process: the client holds them all
            sys.exit(f"open-file limit {hard} too low for {args.idle} long-polls")
    results = [asyncio.run(measure(args, n)) for n in args.workers]
    text = report(results, args)
    print(text)
    if not args.no_write:
        out = ROOT / "benchmarks" / "results"
        out.mkdir(exist_ok=True)
        (out / f"workers-{time.strftime('%Y%m%d-%H%M')}.md").write_text(text)


if __name__ == "__main__":
    main()

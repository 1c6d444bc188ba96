"""Many idle clients: how much memory one `starling serve` needs to hold 10 000 idle
`/sync` long-polls (issue 18; target: under 1 GB in all).

    .venv/bin/python -m benchmarks.idle_sync                      # 10 000 long-polls, SQLite
    .venv/bin/python -m benchmarks.idle_sync --connections 2000 --hold 10 --no-write
    .venv/bin/python -m benchmarks.idle_sync --database postgresql://postgres@127.0.0.1/bench_idle

What it does, bounded in count and time (it stops itself, and stops the server on any
error):

1. Raises its open-file limit to the hard limit (the server inherits it) and checks it
   is enough for the connections asked for.
2. Generates a config in a temporary directory (no rate limits, no per-address connection
   cap: every client is on 127.0.0.1; presence off, as in the other server benchmarks) and creates `--users` users with one device and
   access token each, directly in the database (argon2-hashing thousands of passwords
   through /register would measure the password hasher, not idle clients).
3. Starts `starling serve`, lets every user make an initial /sync and one incremental
   /sync (so nothing the first one moved answers a long-poll at once), reads the
   server's resident memory (VmRSS of its process tree): **before**.
4. Opens `--connections` long-polls, spread evenly over the users, each
   `GET /sync?since=<its token>&timeout=<5 min>` on its own connection, checks on the
   server's side that they are all established (its open TCP connections on the port),
   then holds them `--hold` seconds, sampling RSS every 0.5 s: **while held** (peak).
   Meanwhile it checks the server still answers others (`/versions` and a `/sync` with
   `timeout=0`) and notes how long those took.
5. Drops every connection, waits a moment: **after release**. Then stops the server.

Writes the figures to benchmarks/results/idle-sync-<date>.md (unless --no-write) and
prints them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from benchmarks.machine import ROOT, cpu_model, git_commit
from benchmarks.server.servers import free_port, process_tree
from starling.app import storage_config
from starling.config import load_config
from starling.storage import open_database
from starling.storage.accounts import AccountStore
from starling.storage.profiles import ProfileStore

SERVER_NAME = "idle.local"
LONG_POLL_MS = 300_000  # the server's maximum /sync timeout: longer than any --hold
FDS_PER_CONNECTION = 1
SPARE_FDS = 200


def _kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_mib(pid: int) -> float:
    return sum(_kib(p, "VmRSS") for p in process_tree(pid)) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process tree so far."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{p}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def open_fds(pid: int) -> int:
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return 0


def established_on(port: int) -> int:
    """Established TCP connections whose local port is `port` (the server's side)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                parts = line.split()
                local, state = parts[1], parts[3]
                if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def raise_fd_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        sys.exit(
            f"open-file limit {soft} is below the {needed} this run needs; raise the hard "
            "limit (ulimit -Hn, /etc/security/limits.conf) or ask for fewer --connections"
        )
    return soft


@dataclass
class Figures:
    connections: int
    users: int
    hold: float
    database: str
    rss_before: float = 0.0
    rss_held_peak: float = 0.0
    rss_held_end: float = 0.0
    rss_after: float = 0.0
    fds_held: int = 0
    established: int = 0
    opened_in: float = 0.0
    settled_in: float = 0.0
    cpu_held: float = 0.0
    answered_early: int = 0
    probe_ms: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def per_connection_kib(self) -> float:
        return (self.rss_held_peak - self.rss_before) * 1024 / max(self.connections, 1)

    def table(self) -> str:
        probes = ", ".join(f"{ms:.0f}" for ms in self.probe_ms) or "-"
        rows = [
            ("long-polls held (server-side established connections)", f"{self.established}"),
            ("time until all are connected", f"{self.opened_in:.1f} s"),
            (
                "time until the server is idle again (all long-polls parked)",
                f"{self.settled_in:.1f} s",
            ),
            ("server CPU time during the hold", f"{self.cpu_held:.2f} s"),
            ("long-polls answered before release (should be 0)", f"{self.answered_early}"),
            (
                "server RSS before (after startup and one initial sync per user)",
                f"{self.rss_before:.0f} MiB",
            ),
            ("server RSS while held, peak", f"**{self.rss_held_peak:.0f} MiB**"),
            ("server RSS while held, at the end of the hold", f"{self.rss_held_end:.0f} MiB"),
            ("server RSS after release", f"{self.rss_after:.0f} MiB"),
            (
                "memory per idle long-poll ((peak - before) / connections)",
                f"{self.per_connection_kib:.1f} KiB",
            ),
            ("server open file descriptors while held", f"{self.fds_held}"),
            ("another client's /versions + /sync timeout=0 while held, ms", probes),
        ]
        lines = ["| measure | value |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in rows]
        return "\n".join(lines)


async def create_users(config_path: Path, users: int) -> list[str]:
    """`users` users with one device and one access token each; returns the tokens."""
    config = load_config(config_path)
    db = await open_database(storage_config(config), migrate=True)
    tokens: list[str] = []
    try:
        accounts, profiles = AccountStore(db), ProfileStore(db)
        for i in range(users):
            user_id = f"@idle{i}:{SERVER_NAME}"
            await accounts.create_user(user_id, None)
            await profiles.create_profile(user_id, f"idle{i}")
            await accounts.upsert_device(user_id, "IDLE", None)
            token = secrets.token_urlsafe(24)
            await accounts.add_access_token(token, user_id, "IDLE")
            tokens.append(token)
    finally:
        await db.close()
    return tokens


def start_server(workdir: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["STARLING_HTTP_LIMITS__MAX_CONNECTIONS_PER_IP"] = "0"  # all clients are 127.0.0.1
    env["STARLING_LOG_LEVEL"] = "WARNING"  # no access log line per long-poll
    # Presence off, as in the other server benchmarks: a user going idle after a minute
    # moves the presence stream, which (rightly) answers that user's long-polls.
    env["STARLING_PRESENCE__ENABLED"] = "false"
    with open(workdir / "server.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "starling.cli", "serve", "-c", str(workdir / "starling.yaml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


async def wait_up(session: aiohttp.ClientSession, base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("starling serve exited early")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"{base}/_matrix/client/versions") as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError("starling serve did not come up in 60 s")


async def sync(
    session: aiohttp.ClientSession, base: str, token: str, params: dict[str, str]
) -> dict[str, object]:
    async with session.get(
        f"{base}/_matrix/client/v3/sync",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        body: dict[str, object] = await r.json()
        if r.status != 200:
            raise RuntimeError(f"/sync answered {r.status}: {body}")
        return body


async def run(args: argparse.Namespace, workdir: Path) -> Figures:
    fig = Figures(args.connections, args.users, args.hold, args.database)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    generated = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "starling.cli",
            "generate-config",
            "--server-name",
            SERVER_NAME,
            "--data-dir",
            str(workdir),
            "--http-port",
            str(port),
            "--federation-port",
            str(free_port()),
            "--database",
            args.database,
            "--no-rate-limit",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if generated.returncode != 0:
        raise RuntimeError(generated.stderr)
    print(f"creating {args.users} users ...", flush=True)
    tokens = await create_users(workdir / "starling.yaml", args.users)
    proc = start_server(workdir)
    try:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=60)
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await wait_up(session, base, proc)
            print("initial syncs ...", flush=True)
            since: list[str] = []
            for token in tokens:
                body = await sync(session, base, token, {"timeout": "0"})
                # Settle anything a first sync moves, so a long-poll from the second
                # one's token really waits.
                body = await sync(
                    session, base, token, {"since": str(body["next_batch"]), "timeout": "0"}
                )
                since.append(str(body["next_batch"]))
            await asyncio.sleep(2)
            fig.rss_before = rss_mib(proc.pid)

            print(f"opening {args.connections} long-polls ...", flush=True)
            started = time.monotonic()
            polls = []
            for i in range(args.connections):
                u = i % args.users
                polls.append(
                    asyncio.create_task(
                        sync(
                            session,
                            base,
                            tokens[u],
                            {"since": since[u], "timeout": str(LONG_POLL_MS)},
                        )
                    )
                )
                if i % 250 == 249:
                    await asyncio.sleep(0.05)  # pace the connects a little
            deadline = time.monotonic() + 120
            while established_on(port) < args.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.25)
                failed = [p for p in polls if p.done() and p.exception()]
                if failed:
                    raise RuntimeError(f"a long-poll failed: {failed[0].exception()!r}")
            fig.opened_in = time.monotonic() - started
            fig.established = established_on(port)
            if fig.established < args.connections:
                fig.notes.append(
                    f"only {fig.established} of {args.connections} connections established "
                    "within 120 s"
                )
            # Connected is not yet parked: wait until the server has worked through them
            # (its CPU time stops growing).
            last = cpu_seconds(proc.pid)
            while time.monotonic() < deadline:
                await asyncio.sleep(1)
                now = cpu_seconds(proc.pid)
                if now - last < 0.05:
                    break
                last = now
            fig.settled_in = time.monotonic() - started
            print(f"holding {fig.established} long-polls for {args.hold} s ...", flush=True)
            cpu_start = cpu_seconds(proc.pid)
            hold_end = time.monotonic() + args.hold
            next_probe = time.monotonic() + 1
            while time.monotonic() < hold_end:
                fig.rss_held_peak = max(fig.rss_held_peak, rss_mib(proc.pid))
                fig.fds_held = max(fig.fds_held, open_fds(proc.pid))
                if time.monotonic() >= next_probe and len(fig.probe_ms) < 6:
                    t0 = time.monotonic()
                    async with aiohttp.ClientSession() as probe:
                        async with probe.get(f"{base}/_matrix/client/versions") as r:
                            assert r.status == 200
                        await sync(probe, base, tokens[0], {"since": since[0], "timeout": "0"})
                    fig.probe_ms.append((time.monotonic() - t0) * 1000)
                    next_probe = time.monotonic() + max(args.hold / 4, 1)
                await asyncio.sleep(0.5)
            fig.cpu_held = cpu_seconds(proc.pid) - cpu_start
            fig.rss_held_end = rss_mib(proc.pid)
            fig.rss_held_peak = max(fig.rss_held_peak, fig.rss_held_end)
            fig.answered_early = sum(1 for p in polls if p.done())
            for p in polls:
                p.cancel()
            await asyncio.gather(*polls, return_exceptions=True)
        await asyncio.sleep(3)
        fig.rss_after = rss_mib(proc.pid)
        if "Traceback" in (workdir / "server.log").read_text(errors="replace"):
            fig.notes.append("the server log has a Traceback")
    finally:
        stop_server(proc)
    return fig


def report(fig: Figures, args: argparse.Namespace) -> str:
    load = os.getloadavg()
    head = (
        f"# Idle /sync long-polls: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Command: `python -m benchmarks.idle_sync --connections {args.connections} "
        f"--users {args.users} --hold {args.hold:g} --database {args.database}`\n\n"
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, load average "
        f"{load[0]:.1f} at the end; Python {sys.version.split()[0]}; Starling {git_commit()}.\n\n"
    )
    notes = "".join(f"\n- {n}" for n in fig.notes)
    return head + fig.table() + ("\n\nNotes:" + notes if notes else "") + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=10_000)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--hold", type=float, default=20.0, help="seconds to hold them (max 240)")
    p.add_argument("--database", default="sqlite", help="sqlite or a postgresql:// URL")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    if not 1 <= args.connections <= 20_000 or not 1 <= args.users <= args.connections:
        sys.exit("--connections must be 1-20000 and --users 1-connections")
    args.hold = min(max(args.hold, 1.0), 240.0)
    raise_fd_limit(args.connections * FDS_PER_CONNECTION + SPARE_FDS)
    workdir = Path(tempfile.mkdtemp(prefix="starling-idle-"))
    try:
        fig = asyncio.run(run(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = report(fig, args)
    print(text)
    if not args.no_write:
        out = ROOT / "benchmarks" / "results" / f"idle-sync-{datetime.now(UTC):%Y%m%d-%H%M}.md"
        out.parent.mkdir(exist_ok=True)
        out.write_text(text)
        print(f"written to {out}")


if __name__ == "__main__":
    main()

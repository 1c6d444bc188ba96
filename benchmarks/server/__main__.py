"""Run the Client-Server API benchmark: `python -m benchmarks.server [--db sqlite|postgres|both]`.

For each database kind, each server in turn (never both at once) is started fresh on a
free 127.0.0.1 port, measured idle, put through every scenario of `load.py` by one aiohttp
session, measured again, and stopped (always: try/finally, process group killed). The
table gives both absolute values and Starling's advantage: Synapse / Starling for times
and memory, Starling / Synapse for throughput, so above 1 always means Starling is better.

`--profile FILE` runs Starling under py-spy (collapsed stacks to FILE) and prints where
its time went; use it with `--only starling` and `--scenarios`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from benchmarks.machine import cpu_model, git_commit
from benchmarks.server import load, servers
from benchmarks.server.load import Api, Params, Results, User

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
SERVERS = ("starling", "synapse")
SCENARIOS = (
    "send_latency",
    "throughput",
    "delivery",
    "create_rooms",
    "joins",
    "initial_sync",
    "sliding_sync",
    "sliding_sync_big",
    "sliding_delivery",
)

# (key, label, unit, lower is better)
METRICS: list[tuple[str, str, str, bool]] = [
    ("send_p50_ms", "send latency p50 (sequential PUT /send, N={send_latency_n})", "ms", True),
    ("send_p99_ms", "send latency p99", "ms", True),
    (
        "throughput_msg_s",
        "send throughput, {throughput_senders} senders over {throughput_rooms} rooms",
        "msg/s",
        False,
    ),
    ("throughput_p99_ms", "  send latency p99 under that load", "ms", True),
    ("delivery_p50_ms", "send → long-poll /sync delivery p50 (N={delivery_n})", "ms", True),
    ("delivery_p99_ms", "send → long-poll /sync delivery p99", "ms", True),
    (
        "initial_sync_first_ms",
        "initial /sync, {sync_rooms} rooms x {sync_messages_per_room} msgs: first",
        "ms",
        True,
    ),
    ("initial_sync_ms", "initial /sync: median of {sync_repeats} more", "ms", True),
    (
        "sliding_sync_first_ms",
        "initial sliding sync (MSC4186), {sync_rooms} rooms x {sliding_messages_per_room}"
        " msgs, one list, timeline 10: first",
        "ms",
        True,
    ),
    ("sliding_sync_ms", "initial sliding sync: median of {sync_repeats} more", "ms", True),
    (
        "sliding_big_first_ms",
        "sliding sync, {sliding_big_rooms} rooms, list of 20, timeline 1: first",
        "ms",
        True,
    ),
    ("sliding_big_ms", "  the same: median of {sync_repeats} more", "ms", True),
    (
        "sliding_delivery_p50_ms",
        "send → long-poll sliding sync delivery p50 (N={sliding_delivery_n})",
        "ms",
        True,
    ),
    ("sliding_delivery_p99_ms", "send → long-poll sliding sync delivery p99", "ms", True),
    ("create_rooms_s", "createRoom rate ({create_rooms} sequential)", "rooms/s", False),
    ("create_p50_ms", "  createRoom p50", "ms", True),
    (
        "joins_total_s",
        "{joiners} users join one room ({join_concurrency} at a time): total",
        "s",
        True,
    ),
    ("idle_rss_mib", "idle RSS after start", "MiB", True),
    ("registration_peak_mib", "  peak RSS while registering the users (setup)", "MiB", True),
    ("after_registration_rss_mib", "RSS after registering the users", "MiB", True),
    ("peak_rss_mib", "peak RSS during the load (sampled every 0.25 s)", "MiB", True),
    ("peak_hwm_mib", "peak RSS during the load (VmHWM)", "MiB", True),
]


async def _sampler(server: servers.Server, stop: asyncio.Event) -> None:
    while not stop.is_set():
        server.sample()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.25)


async def run_scenarios(
    server: servers.Server, params: Params, scenarios: tuple[str, ...]
) -> Results:
    res = Results()
    await asyncio.sleep(2)  # let start-up work settle before the idle reading
    res.values["idle_rss_mib"] = server.rss_kib() / 1024
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sampler(server, stop))
    connector = aiohttp.TCPConnector(limit=64)
    timeout = aiohttp.ClientTimeout(total=load.REQUEST_TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            api = Api(session, server.base_url)
            users = await load.register_users(api, params, res)
            # Registration is setup and hashes passwords (Starling: argon2id, 19 MiB per
            # hash; Synapse: bcrypt); the peak readings start after it.
            server.sample()
            res.values["registration_peak_mib"] = server.peak_sampled_kib / 1024
            await asyncio.sleep(1)
            res.values["after_registration_rss_mib"] = server.rss_kib() / 1024
            server.reset_peak()

            def one(name: str) -> User:
                return users[name][0]

            steps: dict[str, Callable[[], Awaitable[None]]] = {
                "send_latency": lambda: load.send_latency(api, one("latency"), params, res),
                "throughput": lambda: load.send_throughput(api, users["senders"], params, res),
                "delivery": lambda: load.delivery_latency(
                    api, users["delivery"][0], users["delivery"][1], params, res
                ),
                "create_rooms": lambda: load.create_rooms(api, one("creator"), params, res),
                "joins": lambda: load.many_joins(api, one("host"), users["joiners"], params, res),
                "initial_sync": lambda: load.initial_sync(api, one("big"), params, res),
                "sliding_sync": lambda: load.sliding_sync(api, one("slider"), params, res),
                "sliding_sync_big": lambda: load.sliding_sync_big(
                    api, one("slider_big"), params, res
                ),
                "sliding_delivery": lambda: load.sliding_delivery(
                    api, users["sliding_delivery"][0], users["sliding_delivery"][1], params, res
                ),
            }
            for name in scenarios:
                if server.proc.poll() is not None:
                    res.notes.append(f"{name}: skipped, the server had exited")
                    continue
                started = time.perf_counter()
                try:
                    await steps[name]()
                except Exception as e:  # one failing scenario must not hide the others
                    res.notes.append(f"{name}: FAILED: {type(e).__name__}: {e}")
                    traceback.print_exc()
                print(
                    f"  {server.name}: {name} done in {time.perf_counter() - started:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        stop.set()
        await sampler
    server.sample()
    res.values["peak_rss_mib"] = server.peak_sampled_kib / 1024
    res.values["peak_hwm_mib"] = server.hwm_kib() / 1024
    return res


def run_one(
    name: str,
    db: str,
    workdir: Path,
    params: Params,
    scenarios: tuple[str, ...],
    profile: Path | None,
) -> Results:
    print(f"[{db}] starting {name}", file=sys.stderr, flush=True)
    if name == "starling":
        server = servers.start_starling(workdir / f"starling-{db}", db, profile)
    else:
        server = servers.start_synapse(workdir / f"synapse-{db}", db)
    try:
        res = asyncio.run(run_scenarios(server, params, scenarios))
        if "Traceback" in server.log.read_text(errors="replace"):
            res.notes.append(f"{name} logged a traceback: see {server.log}")
        return res
    finally:
        server.stop()
        print(f"[{db}] stopped {name}", file=sys.stderr, flush=True)


# --- the report ------------------------------------------------------------------------


def machine_description(load_at_start: tuple[float, float, float]) -> str:
    load_avg = ", ".join(f"{x:.2f}" for x in load_at_start)
    try:
        synapse = importlib.metadata.version("matrix-synapse")
    except importlib.metadata.PackageNotFoundError:  # `--only starling` from the dev venv
        synapse = "not installed"
    return (
        f"{cpu_model()}, {os.cpu_count()} cores (shared with other engineers' processes; "
        f"load average at start {load_avg}, at end "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}); Python {platform.python_version()}; "
        f"matrix-synapse {synapse}; Starling {git_commit()}"
    )


def _fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(results: dict[str, Results], params: Params) -> str:
    lines = [
        "| metric | Starling | Synapse | Starling advantage |",
        "|---|---:|---:|---:|",
    ]
    for key, label, unit, lower_better in METRICS:
        st = results.get("starling", Results()).values.get(key)
        sy = results.get("synapse", Results()).values.get(key)
        if st is None and sy is None:
            continue
        ratio = "—"
        if st and sy:
            r = sy / st if lower_better else st / sy
            ratio = f"**{r:.2f}x**"
        text = label.format(**vars(params))
        lines.append(f"| {text} ({unit}) | {_fmt(st)} | {_fmt(sy)} | {ratio} |")
    return "\n".join(lines)


def report(
    db: str, results: dict[str, Results], params: Params, machine: str, argv: list[str]
) -> str:
    out = [
        f"# Client-Server API benchmark, {db}, {datetime.date.today().isoformat()}",
        "",
        f"- **Machine:** {machine}",
        f"- **Command:** `benchmarks/run_server.sh {' '.join(argv)}`".rstrip(),
        "- Starling advantage: Synapse / Starling for times and memory, Starling / Synapse "
        "for rates; above 1 means Starling is better.",
        "",
        table(results, params),
        "",
    ]
    for name, res in results.items():
        for note in res.notes:
            out.append(f"- {name}: {note}")
    return "\n".join(out) + "\n"


def summarize_profile(path: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        n = int(count_text)
        total += n
        frames = stack.split(";")
        for f in set(frames):
            incl_counts[f] = incl_counts.get(f, 0) + n
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + n
    if not total:
        return "(no samples)"
    lines = [f"{total} samples", "", "self:"]
    for f, n in sorted(self_counts.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {f}")
    lines += ["", "inclusive:"]
    for f, n in sorted(incl_counts.items(), key=lambda kv: -kv[1])[: top * 2]:
        lines.append(f"  {100 * n / total:5.1f}%  {f}")
    return "\n".join(lines)


def median_results(runs: list[Results]) -> Results:
    """Each metric's median over the runs of one server (notes of every run kept)."""
    out = Results()
    for key in {k for r in runs for k in r.values}:
        samples = [r.values[key] for r in runs if key in r.values]
        out.values[key] = statistics.median(samples)
    for i, r in enumerate(runs):
        prefix = f"round {i + 1}: " if len(runs) > 1 else ""
        out.notes.extend(prefix + n for n in r.notes)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        prog="benchmarks/run_server.sh", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--db", choices=("sqlite", "postgres", "both"), default="sqlite")
    ap.add_argument("--only", choices=SERVERS, help="run one server only (no ratios)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")
    ap.add_argument("--order", default="starling,synapse", help="which server goes first")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run each server this many times, alternating (the order reversed every round);"
        " the table gives each metric's median over the rounds",
    )
    ap.add_argument("--profile", type=Path, help="py-spy Starling, collapsed stacks to FILE")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/")
    ap.add_argument("--keep", action="store_true", help="keep the servers' work directories")
    ap.add_argument("--sync-rooms", type=int, help="rooms of the initial-sync user (default 50)")
    ap.add_argument(
        "--sync-messages", type=int, help="messages per room for the initial sync (default 100)"
    )
    args = ap.parse_args()

    params = Params()
    if args.quick:
        params = Params(
            send_latency_n=50,
            throughput_messages=200,
            throughput_seconds=10,
            delivery_n=20,
            sync_rooms=5,
            sync_messages_per_room=20,
            sync_repeats=2,
            create_rooms=5,
            joiners=20,
        )
    if args.sync_rooms is not None:
        params.sync_rooms = args.sync_rooms
    if args.sync_messages is not None:
        params.sync_messages_per_room = args.sync_messages
    scenarios = tuple(s for s in args.scenarios.split(",") if s)
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    order = [s for s in args.order.split(",") if s in SERVERS]
    if args.only:
        order = [args.only]
    if args.profile and "starling" not in order:
        ap.error("--profile profiles Starling: do not combine it with --only synapse")
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    load_at_start = os.getloadavg()

    workdir = Path(tempfile.mkdtemp(prefix="starling-bench-"))
    reports: list[str] = []
    try:
        for db in dbs:
            if db == "postgres":
                asyncio.run(servers.recreate_postgres_databases())
            rounds: dict[str, list[Results]] = {name: [] for name in order}
            loads: list[str] = []
            try:
                for i in range(max(1, args.rounds)):
                    for name in order if i % 2 == 0 else list(reversed(order)):
                        if db == "postgres" and (i or name != order[0]):
                            # Each run starts from empty databases, as the first one.
                            asyncio.run(servers.recreate_postgres_databases())
                        profile = args.profile if name == "starling" else None
                        load_avg = ", ".join(f"{x:.2f}" for x in os.getloadavg())
                        loads.append(f"round {i + 1} {name}: load average {load_avg}")
                        rounds[name].append(
                            run_one(name, db, workdir / f"r{i}", params, scenarios, profile)
                        )
            finally:
                if db == "postgres":
                    asyncio.run(servers.drop_postgres_databases())
            results = {name: median_results(runs) for name, runs in rounds.items()}
            if args.rounds > 1:
                results[order[0]].notes.append(
                    f"{args.rounds} rounds, alternating; medians. " + "; ".join(loads)
                )
            text = report(db, results, params, machine_description(load_at_start), sys.argv[1:])
            reports.append(text)
            print(text, flush=True)
            if not args.no_write:
                RESULTS.mkdir(parents=True, exist_ok=True)
                stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M")
                path = RESULTS / f"server-{stamp}-{db}.md"
                path.write_text(text)
                print(f"wrote {path}", file=sys.stderr)
        if args.profile and args.profile.exists():
            print(summarize_profile(args.profile))
    finally:
        if args.keep:
            print(f"work directories kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

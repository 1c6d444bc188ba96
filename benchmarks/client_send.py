"""How fast Starling's client sends encrypted messages, and where the time goes.

    .venv/bin/python -m benchmarks.client_send                   # 300 messages, SQLite server
    .venv/bin/python -m benchmarks.client_send --messages 100 --profile

A `starling serve` (SQLite) in a temporary directory; Alice (one Starling-client device)
and Bob (two devices) in an encrypted room, so every send goes through the real path:
device-list check, Olm-session check, room-key share check, Megolm encryption, the store
writes and the `/send` request. Sent sequentially, `--messages` of them (bounded). For
comparison the same number of plain `/send` requests into an unencrypted room by the same
HTTP layer: the server's share of the time. The encrypted run is split into the time spent
waiting for HTTP answers and the client's own work (everything else). `--profile` prints the client's cProfile top
entries (cumulative) for the encrypted run.

Prints the figures and, unless --no-write, writes benchmarks/results/client-send-<date>.md.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.client import PASSWORD, register
from benchmarks.machine import ROOT, cpu_model, git_commit
from benchmarks.server.servers import SERVER_NAME, start_starling
from starling_client.client import Client


async def figures(args: argparse.Namespace, work: Path) -> tuple[dict[str, float], str]:
    server = start_starling(work / "server", "sqlite")
    out: dict[str, float] = {}
    profile_text = ""
    try:
        for user in ("alice", "bob"):
            await register(server.base_url, user, work)
        alice = await Client.login(work / "alice", server.base_url, "alice", PASSWORD, "pw")
        bobs = [
            await Client.login(work / f"bob{i}", server.base_url, "bob", PASSWORD, "pw")
            for i in range(2)
        ]
        bob_id = f"@bob:{SERVER_NAME}"
        try:
            room_id = await alice.create_room(name="bench", invite=[bob_id])
            for bob in bobs:
                await bob.sync_once(timeout_ms=0)
            await bobs[0].join(room_id)
            await alice.sync_once(timeout_ms=0)
            plain_room = await alice.create_room(name="plain", encrypted=False)
            await alice.send_text(room_id, "warm-up")  # the first share: Olm sessions, keys

            # Time spent waiting for the server, to tell it from the client's own work.
            http_s = 0.0
            real_request = alice.api.request

            async def timed_request(*a: Any, **kw: Any) -> dict[str, Any]:
                nonlocal http_s
                begun = time.perf_counter()
                try:
                    return await real_request(*a, **kw)
                finally:
                    http_s += time.perf_counter() - begun

            alice.api.request = timed_request  # type: ignore[method-assign]
            profiler = cProfile.Profile() if args.profile else None
            started = time.perf_counter()
            if profiler:
                profiler.enable()
            for i in range(args.messages):
                await alice.send_text(room_id, f"message {i} " + "x" * 100)
            if profiler:
                profiler.disable()
            elapsed = time.perf_counter() - started
            alice.api.request = real_request  # type: ignore[method-assign]
            out["encrypted_per_s"] = args.messages / elapsed
            out["client_ms"] = (elapsed - http_s) * 1000 / args.messages
            out["http_ms"] = http_s * 1000 / args.messages

            started = time.perf_counter()
            for i in range(args.messages):
                await alice.api.send(
                    plain_room, "m.room.message", {"msgtype": "m.text", "body": f"p{i}"}
                )
            out["plain_api_per_s"] = args.messages / (time.perf_counter() - started)

            # Bob still reads them all (the speed-up must not break sharing).
            deadline = time.monotonic() + 60
            got: set[str] = set()
            while len(got) < args.messages and time.monotonic() < deadline:
                for message in await bobs[0].sync_once(timeout_ms=1000):
                    if message.room_id == room_id and message.error is None and message.body:
                        got.add(message.body)
            out["bob_decrypted"] = len([b for b in got if b.startswith("message ")])
            if profiler:
                stream = io.StringIO()
                pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(30)
                profile_text = stream.getvalue()
        finally:
            await alice.close()
            for bob in bobs:
                await bob.close()
    finally:
        server.stop()
    return out, profile_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    args.messages = max(1, min(args.messages, 5000))
    with tempfile.TemporaryDirectory(prefix="starling-client-send-") as tmp:
        result, profile_text = asyncio.run(figures(args, Path(tmp)))
    lines = [
        f"# Starling client send benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"commit {git_commit()}, {cpu_model()}, SQLite server on the same machine",
        "",
        "| what | figure |",
        "|---|---|",
        f"| encrypted sends, one device, sequential ({args.messages}, room of 3 devices) | {result['encrypted_per_s']:,.1f} /s |",
        f"| of which the client's own work (encryption, checks, store) | {result['client_ms']:.2f} ms a message |",
        f"| of which waiting for the server (HTTP) | {result['http_ms']:.2f} ms a message |",
        f"| plain /send requests, same HTTP layer (the server's part) | {result['plain_api_per_s']:,.1f} /s |",
        f"| messages the other user decrypted | {result['bob_decrypted']:.0f} of {args.messages} |",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if profile_text:
        print(profile_text)
    if not args.no_write:
        path = ROOT / "benchmarks" / "results"
        path.mkdir(exist_ok=True)
        target = path / f"client-send-{datetime.now(UTC):%Y%m%d-%H%M%S}.md"
        target.write_text(report)
        print(f"written to {target}")


if __name__ == "__main__":
    main()

"""Memory of the encrypted file backup with one large file: `starling-chat files push` and
`files pull` of a `--mb` MiB random file (default 200), each run as its own process whose
peak resident memory (ru_maxrss, from wait4) is reported next to the file's size.

    .venv/bin/python -m benchmarks.client_bigfile               # 200 MiB, SQLite server
    .venv/bin/python -m benchmarks.client_bigfile --mb 50 --no-write

A `starling serve` (SQLite) in a temporary directory. The file is pushed (hashed, encrypted
and uploaded in parts, streamed), then pulled on a second device after a key-backup restore
and compared byte for byte (by SHA-256). Also the time of each step and its MiB/s.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.client import PASSWORD, register
from benchmarks.machine import ROOT, cpu_model, git_commit
from benchmarks.server.servers import start_starling


def run_chat(store: Path, *args: str) -> tuple[str, float, float]:
    """Run starling-chat; (stdout, seconds, peak RSS in MiB of that process, from wait4).
    Raises on failure."""
    env = {**os.environ, "STARLING_CHAT_PASSPHRASE": "bench passphrase"}
    started = time.perf_counter()
    pid = os.posix_spawn(
        sys.executable,
        [sys.executable, "-m", "starling_client.cli", "--store", str(store), *args],
        env,
        file_actions=[
            (
                os.POSIX_SPAWN_OPEN,
                1,
                str(store) + ".out",
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                0o600,
            )
        ],
    )
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    out = Path(str(store) + ".out").read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"starling-chat {args} failed: {out}")
    return out, seconds, usage.ru_maxrss / 1024


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def measure(mib: int, work: Path) -> dict[str, float]:
    server = start_starling(work / "server", "sqlite")
    figures: dict[str, float] = {}
    try:
        asyncio.run(register(server.base_url, "alice", work))
        tree = work / "tree"
        tree.mkdir()
        big = tree / "big.bin"
        with big.open("wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
        one, two = work / "one", work / "two"
        login = ("login", "--homeserver", server.base_url, "alice", "--password", PASSWORD)
        run_chat(one, *login)
        _, figures["push_s"], figures["push_rss"] = run_chat(one, "files", "push", str(tree))
        out, _, _ = run_chat(one, "backup")
        recovery_key = out.splitlines()[0].removeprefix("recovery key: ")
        run_chat(two, *login)
        run_chat(two, "restore", "--recovery-key", recovery_key)
        restored = work / "restored"
        _, figures["pull_s"], figures["pull_rss"] = run_chat(
            two, "files", "pull", "--to", str(restored)
        )
        assert sha256(restored / "big.bin") == sha256(big), "the pulled file differs"
        _, _, figures["idle_rss"] = run_chat(one, "files", "ls")
    finally:
        server.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="file size in MiB (1-2000)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    mib = max(1, min(args.mb, 2000))
    with tempfile.TemporaryDirectory(prefix="starling-client-bigfile-") as tmp:
        f = measure(mib, Path(tmp))
    lines = [
        f"# Starling client file backup of one {mib} MiB file, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"commit {git_commit()}, {cpu_model()}, SQLite server on the same machine",
        "",
        "| step | time | throughput | peak RSS of the starling-chat process |",
        "|---|---|---|---|",
        f"| `files push` | {f['push_s']:.1f} s | {mib / f['push_s']:.1f} MiB/s | {f['push_rss']:.0f} MiB |",
        f"| `files pull` (new device, after restore) | {f['pull_s']:.1f} s | {mib / f['pull_s']:.1f} MiB/s | {f['pull_rss']:.0f} MiB |",
        f"| `files ls` (for comparison: the process alone) | | | {f['idle_rss']:.0f} MiB |",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if not args.no_write:
        path = ROOT / "benchmarks" / "results"
        path.mkdir(exist_ok=True)
        target = path / f"client-bigfile-{datetime.now(UTC):%Y%m%d-%H%M%S}.md"
        target.write_text(report)
        print(f"written to {target}")


if __name__ == "__main__":
    main()

"""Starling's encrypted client (issue 13): how fast it encrypts and decrypts, how long a new
device takes to read 1000 encrypted messages after a key-backup restore, and the file
backup's throughput against a plain upload of the same files.

    .venv/bin/python -m benchmarks.client                     # all three, SQLite server
    .venv/bin/python -m benchmarks.client --messages 300 --files 5 --file-mb 1 --no-write

1. **Crypto, no server**: `--crypto-messages` Megolm encryptions by one CryptoMachine and
   their decryptions by another (after an Olm session and a room-key share between them).
2. **History on a new device**: a `starling serve` (SQLite) in a temporary directory;
   device 1 sends `--messages` encrypted messages to a room, makes a key backup; device 2
   logs in, restores the backup with the recovery key (timed) and reads the whole history
   through /messages, decrypting every message (timed).
3. **File backup**: `--files` random files of `--file-mb` MiB each, pushed with
   `files push` (encrypt + upload + one index event each) versus uploaded as they are
   (`/upload`), in MiB/s.

Writes benchmarks/results/client-<date>.md (unless --no-write) and prints the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from nio import AsyncClient, AsyncClientConfig

from benchmarks.machine import ROOT, cpu_model, git_commit
from benchmarks.server.servers import SERVER_NAME, start_starling
from starling_client.client import Client
from starling_client.crypto import MEGOLM, CryptoMachine
from starling_client.files import FileBackup

PASSWORD = "benchmark password"
ROOM = "!bench:example.org"


def crypto_rates(count: int) -> tuple[float, float]:
    """Megolm encryptions and decryptions per second between two machines."""
    alice = CryptoMachine("@alice:example.org", "A")
    bob = CryptoMachine("@bob:example.org", "B")
    published: dict[str, dict[str, object]] = {}
    for machine in (alice, bob):
        body = machine.keys_to_upload()
        assert body is not None
        published[machine.user_id] = body
        machine.keys_uploaded({"one_time_key_counts": {"signed_curve25519": 25}})
        machine.set_room_encryption(ROOM, {"algorithm": MEGOLM, "rotation_period_msgs": 10**9})
    users = ["@alice:example.org", "@bob:example.org"]
    alice.track_users(users)
    alice.receive_keys_query(
        users,
        {
            "device_keys": {
                u: {b["device_keys"]["device_id"]: b["device_keys"]} for u, b in published.items()
            }
        },  # type: ignore[index]
    )
    otks = published["@bob:example.org"]["one_time_keys"]
    key_id, key = next(iter(otks.items()))  # type: ignore[attr-defined]
    alice.receive_keys_claim(
        {"@bob:example.org": {"B": "signed_curve25519"}},
        {"one_time_keys": {"@bob:example.org": {"B": {key_id: key}}}},
    )
    share = alice.share_room_key(ROOM, users)
    bob.receive_to_device(
        {
            "type": "m.room.encrypted",
            "sender": alice.user_id,
            "content": share["@bob:example.org"]["B"],
        }
    )
    content = {"msgtype": "m.text", "body": "x" * 200}
    started = time.perf_counter()
    events = [
        {
            "type": "m.room.encrypted",
            "sender": alice.user_id,
            "event_id": f"${i}",
            "content": alice.encrypt_room_event(ROOM, "m.room.message", content),
        }
        for i in range(count)
    ]
    encrypt_s = time.perf_counter() - started
    started = time.perf_counter()
    for event in events:
        bob.decrypt_room_event(ROOM, event)
    decrypt_s = time.perf_counter() - started
    return count / encrypt_s, count / decrypt_s


async def register(url: str, user: str, tmp: Path) -> None:
    client = AsyncClient(
        url,
        f"@{user}:{SERVER_NAME}",
        store_path=str(tmp),
        config=AsyncClientConfig(encryption_enabled=False),
    )
    try:
        await client.register(user, PASSWORD, "reg")
    finally:
        await client.close()


async def server_figures(args: argparse.Namespace, work: Path) -> dict[str, float]:
    server = start_starling(work / "server", "sqlite")
    figures: dict[str, float] = {}
    try:
        await register(server.base_url, "alice", work)
        one = await Client.login(work / "one", server.base_url, "alice", PASSWORD, "pw")
        try:
            room_id = await one.create_room(name="history")
            started = time.perf_counter()
            for i in range(args.messages):
                await one.send_text(room_id, f"message {i} " + "x" * 100)
            figures["send_per_s"] = args.messages / (time.perf_counter() - started)
            await one.sync_once(timeout_ms=0)
            recovery_key = await one.create_backup()

            # File backup against plain uploads of the same bytes.
            tree = work / "files"
            tree.mkdir()
            for i in range(args.files):
                (tree / f"f{i}.bin").write_bytes(os.urandom(args.file_mb << 20))
            total_mib = args.files * args.file_mb
            started = time.perf_counter()
            result = await FileBackup(one).push(tree)
            assert result.sent == args.files
            figures["push_mib_s"] = total_mib / (time.perf_counter() - started)
            started = time.perf_counter()
            for path in sorted(tree.iterdir()):
                await one.api.upload(path.read_bytes(), "application/octet-stream")
            figures["plain_mib_s"] = total_mib / (time.perf_counter() - started)
        finally:
            await one.close()

        two = await Client.login(work / "two", server.base_url, "alice", PASSWORD, "pw")
        try:
            started = time.perf_counter()
            restored = await two.restore_backup(recovery_key)
            figures["restore_s"] = time.perf_counter() - started
            figures["restored_sessions"] = restored
            started = time.perf_counter()
            history = await two.load_history(room_id, limit=args.messages + 100)
            figures["history_s"] = time.perf_counter() - started
            readable = [m for m in history if m.error is None and m.type == "m.room.message"]
            figures["history_decrypted"] = len(readable)
            assert len(readable) >= args.messages, (len(readable), args.messages)
        finally:
            await two.close()
    finally:
        server.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crypto-messages", type=int, default=5000)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--file-mb", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    enc, dec = crypto_rates(args.crypto_messages)
    with tempfile.TemporaryDirectory(prefix="starling-client-bench-") as tmp:
        figures = asyncio.run(server_figures(args, Path(tmp)))
    lines = [
        f"# Starling client benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"commit {git_commit()}, {cpu_model()}, SQLite server on the same machine",
        "",
        "| what | figure |",
        "|---|---|",
        f"| Megolm encrypt ({args.crypto_messages} messages, 200-byte bodies) | {enc:,.0f} /s |",
        f"| Megolm decrypt (replay-checked) | {dec:,.0f} /s |",
        f"| encrypted sends through the server (one device, sequential) | {figures['send_per_s']:,.0f} /s |",
        f"| key-backup restore on a new device ({figures['restored_sessions']:.0f} sessions) | {figures['restore_s']:.2f} s |",
        f"| new device reads and decrypts {figures['history_decrypted']:.0f} messages of history | {figures['history_s']:.2f} s |",
        f"| file backup push ({args.files} x {args.file_mb} MiB, encrypted) | {figures['push_mib_s']:.1f} MiB/s |",
        f"| plain upload of the same files | {figures['plain_mib_s']:.1f} MiB/s |",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if not args.no_write:
        out = ROOT / "benchmarks" / "results"
        out.mkdir(exist_ok=True)
        path = out / f"client-{datetime.now(UTC):%Y%m%d-%H%M%S}.md"
        path.write_text(report)
        print(f"written to {path}")


if __name__ == "__main__":
    main()

"""A `starling serve` subprocess that can be SIGKILLed and restarted on the same data."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

STARLING = [sys.executable, "-m", "starling.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class KillableServer:
    """generate-config once (open registration, no rate limits), then any number of
    start/kill cycles of `starling serve` on that data directory and database."""

    def __init__(self, data_dir: Path, database_arg: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / "server.log"
        self.starts = 0
        self.early_kills = 0
        self._proc: subprocess.Popen[bytes] | None = None
        generated = subprocess.run(
            [
                *STARLING,
                "generate-config",
                "--server-name",
                "localhost",
                "--data-dir",
                str(data_dir),
                "--http-port",
                str(self.port),
                "--federation-port",
                str(free_port()),
                "--database",
                database_arg,
                "--open-registration",
                "--no-rate-limit",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert generated.returncode == 0, generated.stderr

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    async def start(self) -> None:
        """Start the server and wait until it answers /versions (generous deadline)."""
        assert self._proc is None
        self.starts += 1
        self._proc = await asyncio.to_thread(self._spawn)
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise AssertionError(f"starling serve exited:\n{self.log_tail()}")
                try:
                    async with session.get(
                        f"{self.url}/_matrix/client/versions",
                        timeout=aiohttp.ClientTimeout(total=2),
                    ) as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"starling serve did not come up:\n{self.log_tail()}")

    async def start_and_kill_early(self, after: float) -> None:
        """Start the server and SIGKILL it `after` seconds later, up or not: a crash
        while it opens the database, runs migrations or loads its streams."""
        assert self._proc is None
        self.starts += 1
        self.early_kills += 1
        self._proc = await asyncio.to_thread(self._spawn)
        await asyncio.sleep(after)
        await asyncio.to_thread(self.kill)

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as out:
            out.write(f"\n===== start {self.starts} =====\n".encode())
            out.flush()
            return subprocess.Popen(
                [*STARLING, "serve", "-c", str(self.data_dir / "starling.yaml")],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, killed as a whole
            )

    def kill(self) -> None:
        """SIGKILL the whole process group: no cleanup, no flush, like a power cut of the
        process (the database server itself keeps running)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM, then SIGKILL if it lingers)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass

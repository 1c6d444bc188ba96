"""A real `starling serve` process on a free loopback port, on both engines, for interop
tests that drive it with real clients (DESIGN §8)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.dbfixtures import ENGINES, fresh_database_url

STARLING = [sys.executable, "-m", "starling.cli"]
SERVER_NAME = "localhost"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class RunningServer:
    url: str  # http://127.0.0.1:<port>
    server_name: str
    engine: str
    log: Path  # the server's stdout and stderr

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"starling serve exited early:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer in time:\n{log.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def _launch(data_dir: Path, port: int, database_arg: str, log: Path) -> subprocess.Popen[bytes]:
    """generate-config (open registration, no rate limits), then `starling serve` in its own
    process group, its output going to `log`."""
    generated = subprocess.run(
        [
            *STARLING,
            "generate-config",
            "--server-name",
            SERVER_NAME,
            "--data-dir",
            str(data_dir),
            "--http-port",
            str(port),
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
    with open(log, "wb") as out:
        return subprocess.Popen(
            [*STARLING, "serve", "-c", str(data_dir / "starling.yaml")],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, stopped as a whole
        )


@pytest.fixture(params=ENGINES)
async def starling_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    """`starling serve` on a free loopback port with open registration and no rate limits,
    on SQLite or on a fresh PostgreSQL database (dropped afterwards)."""
    engine: str = request.param
    async with fresh_database_url(engine, tmp_path) as url:
        port = free_port()
        log = tmp_path / "server.log"
        database_arg = "sqlite" if engine == "sqlite" else url
        proc = await asyncio.to_thread(_launch, tmp_path / "server", port, database_arg, log)
        try:
            base = f"http://127.0.0.1:{port}"
            await asyncio.to_thread(
                _wait_until_up,
                f"{base}/_matrix/client/versions",
                proc,
                log,
                time.monotonic() + 30,
            )
            yield RunningServer(base, SERVER_NAME, engine, log)
        finally:
            await asyncio.to_thread(_stop, proc)

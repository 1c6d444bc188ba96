"""Start and stop the two servers under test, on loopback, with comparable configs.

Both run from the same interpreter (benchmarks/.venv-synapse, where Starling is installed
editable next to matrix-synapse), in their own process group, logging at INFO to a file in
their work directory. Both get: open registration without verification, every rate limit
out of reach, presence off, room version 12 (both defaults), no federation traffic. Synapse
also gets `suppress_key_server_warning`, no trusted key servers, only a client listener,
and `bcrypt_rounds: 4` (registration is setup, never timed, and 222 bcrypt-12 hashes would
add a minute to every run).

`Server.rss()` reads /proc/<pid>/status (VmRSS, VmHWM) of the server process and all its
descendants.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SERVER_NAME = "bench.local"
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# BENCH_DB_SUFFIX: other names, so two runs sharing one PostgreSQL server do not drop
# each other's databases.
_SUFFIX = os.environ.get("BENCH_DB_SUFFIX", "")
DATABASES = {"starling": f"bench_starling{_SUFFIX}", "synapse": f"bench_synapse{_SUFFIX}"}
# Rate limits nobody reaches (the same numbers `starling generate-config --no-rate-limit` uses).
UNLIMITED = {"per_second": 1_000_000, "burst_count": 1_000_000}
POOL = {"cp_min": 5, "cp_max": 10}  # Synapse's defaults, given to both


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- process tree and memory -----------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids.extend(int(c) for c in f.read().split())
    return kids


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(_children(p))
    return tree


def _status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


@dataclass
class Server:
    name: str  # "starling" or "synapse"
    proc: subprocess.Popen[bytes]
    base_url: str
    workdir: Path
    log: Path
    # The pid whose tree is measured: the server itself, not a profiler wrapped around it.
    measured_pid: int = 0
    peak_sampled_kib: int = field(default=0)

    def pids(self) -> list[int]:
        return process_tree(self.measured_pid or self.proc.pid)

    def rss_kib(self) -> int:
        """VmRSS now, summed over the server's process tree."""
        return sum(_status_kib(p, "VmRSS") for p in self.pids())

    def hwm_kib(self) -> int:
        """VmHWM (each process's peak resident set), summed over the tree."""
        return sum(_status_kib(p, "VmHWM") for p in self.pids())

    def reset_peak(self) -> None:
        """Start the peak readings afresh: VmHWM := VmRSS for every process of the tree
        (`echo 5 > /proc/PID/clear_refs`, Linux >= 4.0) and the sampled peak."""
        for pid in self.pids():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        self.peak_sampled_kib = self.rss_kib()

    def sample(self) -> None:
        self.peak_sampled_kib = max(self.peak_sampled_kib, self.rss_kib())

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the process group (SIGINT first for a profiler, which then writes its
        output), SIGKILL whatever is left after 20 s."""
        if self.proc.poll() is None:
            try:
                if self.measured_pid and self.measured_pid != self.proc.pid:
                    os.kill(self.proc.pid, signal.SIGINT)  # py-spy: stop and write
                    time.sleep(0.5)
                    os.kill(self.measured_pid, signal.SIGTERM)
                else:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers in the group, if any
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)


def _wait_until_up(server: Server, timeout: float) -> None:
    url = f"{server.base_url}/_matrix/client/versions"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited early:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(
        f"{server.name} did not answer {url} in {timeout:.0f}s:\n{server.log_tail()}"
    )


def _find_child_pid(parent: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = _children(parent)
        if kids:
            return kids[0]
        time.sleep(0.05)
    return parent


def _launch(
    name: str, argv: list[str], workdir: Path, port: int, profile_out: Path | None
) -> Server:
    log = workdir / f"{name}.log"
    if profile_out is not None:
        py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
        argv = [
            py_spy,
            "record",
            "--rate",
            "200",
            "--threads",
            "--format",
            "raw",  # collapsed stacks: grep-able, and flamegraph.pl / speedscope read them
            "--output",
            str(profile_out),
            "--",
            *argv,
        ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = Server(name, proc, f"http://127.0.0.1:{port}", workdir, log)
    server.measured_pid = _find_child_pid(proc.pid) if profile_out is not None else proc.pid
    return server


# --- PostgreSQL databases --------------------------------------------------------------


async def recreate_postgres_databases() -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        for db in DATABASES.values():
            await conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {DATABASES['starling']}")
        # Synapse refuses a database whose collation is not C.
        await conn.execute(
            f"CREATE DATABASE {DATABASES['synapse']} ENCODING 'UTF8' "
            "LC_COLLATE='C' LC_CTYPE='C' TEMPLATE template0"
        )
    finally:
        await conn.close()


async def drop_postgres_databases() -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        for db in DATABASES.values():
            await conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    finally:
        await conn.close()


# --- Starling --------------------------------------------------------------------------


def start_starling(workdir: Path, db: str, profile_out: Path | None = None) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    database = (
        "sqlite"
        if db == "sqlite"
        else f"postgresql://postgres@127.0.0.1:5432/{DATABASES['starling']}"
    )
    subprocess.run(
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
            database,
            "--open-registration",
            "--no-rate-limit",
            "--force",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    config_path = workdir / "starling.yaml"
    cfg: dict[str, Any] = yaml.safe_load(config_path.read_text())
    cfg["presence"] = {"enabled": False}
    cfg["rc_media_create"] = dict(UNLIMITED)
    cfg["default_room_version"] = "12"
    if db != "sqlite":
        cfg["database"]["args"].update(POOL)
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    argv = [sys.executable, "-m", "starling.cli", "serve", "-c", str(config_path)]
    server = _launch("starling", argv, workdir, port, profile_out)
    try:
        _wait_until_up(server, 60)
    except BaseException:
        server.stop()
        raise
    return server


# --- Synapse ---------------------------------------------------------------------------


def _synapse_rate_limits() -> dict[str, Any]:
    u = dict(UNLIMITED)
    limits: dict[str, Any] = {
        key: dict(u)
        for key in (
            "rc_message",
            "rc_registration",
            "rc_registration_token_validity",
            "rc_admin_redaction",
            "rc_joins_per_room",
            "rc_3pid_validation",
            "rc_third_party_invite",
            "rc_media_create",
            "rc_key_requests",
            "rc_delayed_event_mgmt",
            "rc_room_creation",
            "rc_reports",
            "rc_user_directory",
            "rc_profile",
        )
    }
    limits["rc_login"] = {k: dict(u) for k in ("address", "account", "failed_attempts")}
    limits["rc_joins"] = {k: dict(u) for k in ("local", "remote")}
    limits["rc_invites"] = {k: dict(u) for k in ("per_room", "per_user", "per_issuer")}
    limits["rc_presence"] = {"per_user": dict(u)}
    limits["rc_federation"] = {
        "window_size": 1000,
        "sleep_limit": 1_000_000,
        "sleep_delay": 1,
        "reject_limit": 1_000_000,
        "concurrent": 1_000_000,
    }
    return limits


def start_synapse(workdir: Path, db: str) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config_path = workdir / "homeserver.yaml"
    if not config_path.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "synapse.app.homeserver",
                "--server-name",
                SERVER_NAME,
                "--config-path",
                str(config_path),
                "--generate-config",
                "--report-stats=no",
                "--data-directory",
                str(workdir),
            ],
            check=True,
            capture_output=True,
            timeout=120,
            cwd=workdir,
        )
    cfg: dict[str, Any] = yaml.safe_load(config_path.read_text())
    cfg["listeners"] = [
        {
            "port": port,
            "bind_addresses": ["127.0.0.1"],
            "type": "http",
            "tls": False,
            "x_forwarded": False,
            "resources": [{"names": ["client"], "compress": False}],
        }
    ]
    if db == "sqlite":
        cfg["database"] = {"name": "sqlite3", "args": {"database": str(workdir / "homeserver.db")}}
    else:
        cfg["database"] = {
            "name": "psycopg2",
            "args": {
                "user": "postgres",
                "host": "127.0.0.1",
                "port": 5432,
                "database": DATABASES["synapse"],
                **POOL,
            },
        }
    cfg.update(
        {
            "enable_registration": True,
            "enable_registration_without_verification": True,
            "presence": {"enabled": False},
            "suppress_key_server_warning": True,
            "trusted_key_servers": [],
            "report_stats": False,
            "default_room_version": "12",
            "bcrypt_rounds": 4,
            "federation_domain_whitelist": [],
        }
    )
    cfg.update(_synapse_rate_limits())
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    argv = [sys.executable, "-m", "synapse.app.homeserver", "-c", str(config_path)]
    server = _launch("synapse", argv, workdir, port, None)
    try:
        _wait_until_up(server, 120)
    except BaseException:
        server.stop()
        raise
    return server

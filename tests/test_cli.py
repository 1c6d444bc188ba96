"""The `starling` command end to end: generate-config, serve (both engines), register-user."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.dbfixtures import fresh_database_url

STARLING = [sys.executable, "-m", "starling.cli"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STARLING, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["generate-config"],
        ["serve"],
        ["register-user"],
        ["version"],
        ["debug"],
        ["debug", "canonical-json"],
        ["debug", "event-id"],
        ["debug", "check-auth"],
        ["debug", "resolve-state"],
        ["debug", "federation-check"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    r = run(*command, "--help")
    assert r.returncode == 0, r.stderr
    assert "usage: starling" in r.stdout


def test_version() -> None:
    r = run("version")
    assert r.returncode == 0 and r.stdout.startswith("starling ")


def test_generate_config_writes_config_and_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    r = run("generate-config", "--server-name", "example.org", "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    cfg = (tmp_path / "d" / "starling.yaml").read_text()
    assert "server_name: example.org" in cfg
    key = (tmp_path / "d" / "example.org.signing.key").read_text().split()
    assert key[0] == "ed25519" and len(key) == 3
    again = run(
        "generate-config", "--server-name", "example.org", "--data-dir", str(tmp_path / "d")
    )
    assert again.returncode == 2 and "--force" in again.stderr
    forced = run(
        "generate-config",
        "--server-name",
        "example.org",
        "--data-dir",
        str(tmp_path / "d"),
        "--force",
    )
    assert forced.returncode == 0
    assert (tmp_path / "d" / "example.org.signing.key").read_text().split() != key


def test_generate_config_rejects_bad_input_without_writing(tmp_path: Path) -> None:
    r = run("generate-config", "--server-name", "not a name", "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 2 and "server_name" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "d").exists()
    r = run(
        "generate-config",
        "--server-name",
        "a.org",
        "--data-dir",
        str(tmp_path / "d"),
        "--database",
        "mysql://x",
    )
    assert r.returncode == 2 and "--database" in r.stderr


def test_no_rate_limit_flag(tmp_path: Path) -> None:
    from starling.config import load_config

    r = run(
        "generate-config", "--server-name", "a.org", "--data-dir", str(tmp_path), "--no-rate-limit"
    )
    assert r.returncode == 0, r.stderr
    cfg = load_config(tmp_path / "starling.yaml", environ={})
    assert cfg.rc_message.per_second >= 1_000_000
    assert cfg.rc_login.failed_attempts.burst_count >= 1_000_000


def test_serve_with_bad_config_is_one_clear_line(tmp_path: Path) -> None:
    cfg = tmp_path / "starling.yaml"
    cfg.write_text("server_name: a.org\nlisteners: [{port: 8008, bogus: 1}]\n")
    r = run("serve", "-c", str(cfg))
    assert r.returncode == 2
    assert "listeners[0].bogus" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(params=["sqlite", "postgres"])
async def database_arg(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield "sqlite"
        return
    async with fresh_database_url("postgres", tmp_path) as dsn:
        yield dsn


def _wait_for(url: str, proc: subprocess.Popen[str], deadline: float) -> bytes:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"server exited early: {proc.stderr.read() if proc.stderr else ''}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return resp.read()
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer in time")


@pytest.mark.integration
def test_serve_answers_and_exits_cleanly_on_sigterm(tmp_path: Path, database_arg: str) -> None:
    port = free_port()
    r = run(
        "generate-config",
        "--server-name",
        "localhost",
        "--data-dir",
        str(tmp_path),
        "--http-port",
        str(port),
        "--federation-port",
        str(free_port()),
        "--database",
        database_arg,
    )
    assert r.returncode == 0, r.stderr
    config = str(tmp_path / "starling.yaml")
    reg = run("register-user", "-c", config, "alice", "--password", "pw", "--admin")
    assert reg.returncode == 0, reg.stderr
    assert "@alice:localhost" in reg.stdout
    dup = run("register-user", "-c", config, "alice", "--password", "pw")
    assert dup.returncode == 2 and "already taken" in dup.stderr
    bad = run("register-user", "-c", config, "Not Valid!", "--password", "pw")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr

    proc = subprocess.Popen(
        [*STARLING, "serve", "-c", config],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        body = _wait_for(
            f"http://127.0.0.1:{port}/_matrix/client/versions", proc, time.monotonic() + 30
        )
        assert b'"versions"' in body
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        code = proc.wait(timeout=10)
        assert code == 0, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() - start < 5
        out = proc.stdout.read() if proc.stdout else ""
        assert f"listening on http://127.0.0.1:{port}" in out
        assert "register-user" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

"""A real Synapse (matrix-synapse from PyPI) on loopback, for federation interop tests.

Synapse runs from its own virtualenv (benchmarks/.venv-synapse, built by
benchmarks/synapse_venv.sh; `make synapse` or `make test` builds it once and reuses it):
it must not share our venv. `synapse_venv()` builds it on first use too (under a file
lock, so parallel test workers build it once).

The server is set up as a test peer: server name `localhost:PORT` where PORT is its TLS
federation listener (a certificate from the test CA), a plain-HTTP client listener, SQLite,
open registration, no rate limits, `federation_verify_certificates: false`,
`ip_range_blacklist: []`, `trusted_key_servers: []`, `report_stats: false`, presence off,
nothing reaching the internet. Its log is `<data dir>/homeserver.log`.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.federation.harness import FederatedServer, TestPKI, free_port

ROOT = Path(__file__).resolve().parents[2]
VENV_SCRIPT = ROOT / "benchmarks" / "synapse_venv.sh"
VENV = Path(os.environ.get("SYNAPSE_VENV") or ROOT / "benchmarks" / ".venv-synapse")
INSTALL_TIMEOUT = 1200.0
START_TIMEOUT = 180.0

_UNLIMITED = {"per_second": 1_000_000, "burst_count": 1_000_000}


def synapse_venv() -> Path:
    """The Synapse virtualenv's python, built (or refreshed) by benchmarks/synapse_venv.sh.
    If that fails the test is skipped with the reason, except in CI (`CI` set), where it
    fails: CI must run the interop tests."""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / ".venv-synapse.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = subprocess.run(
            ["bash", "-c", f'source "{VENV_SCRIPT}"'],
            env={**os.environ, "SYNAPSE_VENV": str(VENV)},
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    if built.returncode != 0:
        problem = f"could not build the Synapse venv {VENV}: {built.stderr[-2000:]}"
        if os.environ.get("CI"):
            pytest.fail(problem + " — CI runs the Synapse interop tests")
        pytest.skip(problem)
    return VENV / "bin" / "python"


def _rate_limits() -> dict[str, Any]:
    u = _UNLIMITED
    limits: dict[str, Any] = {
        key: dict(u)
        for key in (
            "rc_message",
            "rc_registration",
            "rc_admin_redaction",
            "rc_joins_per_room",
            "rc_third_party_invite",
            "rc_key_requests",
            "rc_room_creation",
            "rc_profile",
        )
    }
    limits["rc_login"] = {k: dict(u) for k in ("address", "account", "failed_attempts")}
    limits["rc_joins"] = {k: dict(u) for k in ("local", "remote")}
    limits["rc_invites"] = {k: dict(u) for k in ("per_room", "per_user", "per_issuer")}
    limits["rc_federation"] = {
        "window_size": 1000,
        "sleep_limit": 1_000_000,
        "sleep_delay": 1,
        "reject_limit": 1_000_000,
        "concurrent": 1_000_000,
    }
    return limits


@dataclass
class SynapseServer(FederatedServer):
    """A Synapse process; the client helpers of FederatedServer work on it unchanged."""

    python: Path = VENV / "bin" / "python"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "homeserver.yaml"

    def log_tail(self, chars: int = 6000) -> str:
        log = self.data_dir / "homeserver.log"
        text = log.read_text(errors="replace")[-chars:] if log.exists() else ""
        return text + "\n--- stdout/stderr ---\n" + super().log_tail(2000)

    def generate(self, pki: TestPKI) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                str(self.python),
                "-m",
                "synapse.app.homeserver",
                "--server-name",
                self.server_name,
                "--config-path",
                str(self.config_path),
                "--generate-config",
                "--report-stats=no",
                "--data-directory",
                str(self.data_dir),
            ],
            check=True,
            capture_output=True,
            timeout=120,
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
        )
        cfg: dict[str, Any] = yaml.safe_load(self.config_path.read_text())
        cfg["listeners"] = [
            {
                "port": self.federation_port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": True,
                "x_forwarded": False,
                "resources": [{"names": ["federation"], "compress": False}],
            },
            {
                "port": self.client_port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client", "media"], "compress": False}],
            },
        ]
        cfg["database"] = {
            "name": "sqlite3",
            "args": {"database": str(self.data_dir / "homeserver.db")},
        }
        cfg.update(
            {
                "tls_certificate_path": str(pki.cert),
                "tls_private_key_path": str(pki.key),
                "enable_registration": True,
                "enable_registration_without_verification": True,
                "registration_shared_secret": secrets.token_hex(16),
                "presence": {"enabled": False},
                "suppress_key_server_warning": True,
                "trusted_key_servers": [],
                "report_stats": False,
                "federation_verify_certificates": False,
                "ip_range_blacklist": [],
                "url_preview_enabled": False,
                "bcrypt_rounds": 4,
                "user_directory": {"enabled": False},
            }
        )
        cfg.update(_rate_limits())
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def start(self) -> None:
        """Start Synapse and block until its client API answers."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(self.python), "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.data_dir,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"synapse exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(
                    self.client_url + "/_matrix/client/versions", timeout=2
                ) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"synapse did not start in time:\n{self.log_tail()}")


def start_synapse(directory: Path, pki: TestPKI) -> SynapseServer:
    """Build (or reuse) the venv, configure and start a Synapse in `directory`."""
    python = synapse_venv()
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = SynapseServer(
        label="synapse",
        data_dir=directory / "data",
        client_port=free_port(),
        federation_port=port,
        name_port=port,
        engine="sqlite",
        log=directory / "synapse.out",
        python=python,
    )
    server.generate(pki)
    server.start()
    return server

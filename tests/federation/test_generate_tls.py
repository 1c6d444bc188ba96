"""`starling generate-config` with TLS (--tls-cert/--tls-key, --tls-self-signed) and a
`tls: true` listener serving HTTPS."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from starling.config import ConfigError, load_config, load_config_dict
from tests.federation.harness import STARLING, free_port, make_test_pki


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STARLING, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


def test_tls_flags_write_a_tls_federation_listener(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    r = run(
        "generate-config",
        "--server-name",
        "localhost:9000",
        "--data-dir",
        str(tmp_path / "d"),
        "--federation-port",
        "8999",
        "--tls-cert",
        str(pki.cert),
        "--tls-key",
        str(pki.key),
    )
    assert r.returncode == 0, r.stderr
    cfg = load_config(tmp_path / "d" / "starling.yaml", environ={})
    (fed,) = [lis for lis in cfg.listeners if any("federation" in r.names for r in lis.resources)]
    assert fed.tls and fed.port == 8999
    assert fed.resources[0].names == ["federation", "keys"]
    assert cfg.tls_certificate_path == str(pki.cert.resolve())
    assert cfg.tls_private_key_path == str(pki.key.resolve())
    assert cfg.server_name == "localhost:9000"  # the name's port is not the listener's


@pytest.mark.parametrize(
    "args",
    [
        ["--tls-cert", "x.pem"],
        ["--tls-key", "x.pem"],
        ["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"],
        ["--tls-self-signed", "--tls-cert", "x.pem", "--tls-key", "y.pem"],
    ],
)
def test_bad_tls_flags(tmp_path: Path, args: list[str]) -> None:
    r = run("generate-config", "--server-name", "a.test", "--data-dir", str(tmp_path / "d"), *args)
    assert r.returncode == 2 and "tls" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "d" / "starling.yaml").exists()


def test_tls_listener_needs_the_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls_certificate_path"):
        load_config_dict(
            {"server_name": "a.test", "listeners": [{"port": 1, "tls": True}]}, environ={}
        )


@pytest.mark.integration
def test_self_signed_certificate_serves_https(tmp_path: Path) -> None:
    data = tmp_path / "d"
    port, http_port = free_port(), free_port()
    r = run(
        "generate-config",
        "--server-name",
        "localhost",
        "--data-dir",
        str(data),
        "--http-port",
        str(http_port),
        "--federation-port",
        str(port),
        "--tls-self-signed",
    )
    assert r.returncode == 0, r.stderr
    cert_path = data / "tls" / "self-signed.crt"
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert (data / "tls" / "self-signed.key").stat().st_mode & 0o077 == 0
    config = yaml.safe_load((data / "starling.yaml").read_text())
    assert config["tls_certificate_path"] == "tls/self-signed.crt"  # relative to the file

    proc = subprocess.Popen(
        [*STARLING, "serve", "-c", str(data / "starling.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        context = ssl.create_default_context(cafile=str(cert_path))
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(
                    f"https://localhost:{port}/_matrix/key/v2/server", context=context, timeout=5
                ) as resp:
                    body = json.loads(resp.read())
                    break
            except urllib.error.URLError as e:
                if isinstance(e.reason, ssl.SSLError) or time.monotonic() > deadline:
                    raise
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.1)
        assert body["server_name"] == "localhost"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=15)[0].decode()
    assert proc.returncode == 0, out
    assert f"listening on https://127.0.0.1:{port}" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"ip_range_blacklist": ["nope"]}, "ip_range_blacklist[0]"),
        ({"ip_range_whitelist": ["10.0.0.0/33"]}, "ip_range_whitelist[0]"),
        ({"federation_domain_whitelist": ["bad name"]}, "federation_domain_whitelist[0]"),
        ({"trusted_key_servers": [{"server_name": ""}]}, "trusted_key_servers[0].server_name"),
        (
            {"trusted_key_servers": [{"server_name": "n.test", "verify_keys": {"ed25519:a": "!"}}]},
            "trusted_key_servers[0].verify_keys",
        ),
        ({"old_signing_keys": {"ed25519:a": {"key": "x"}}}, "old_signing_keys.ed25519:a"),
        ({"key_refresh_interval": "1s"}, "key_refresh_interval"),
        ({"rc_federation": {"concurrent": 0}}, "rc_federation"),
    ],
)
def test_federation_config_is_validated(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config_dict({"server_name": "a.test", **extra}, environ={})
    assert message in str(e.value)


def test_federation_config_defaults_are_synapses() -> None:
    cfg = load_config_dict({"server_name": "a.test"}, environ={})
    assert cfg.federation_verify_certificates is True
    assert "127.0.0.0/8" in cfg.ip_range_blacklist and "10.0.0.0/8" in cfg.ip_range_blacklist
    assert [t.server_name for t in cfg.trusted_key_servers] == ["matrix.org"]
    assert cfg.federation_domain_whitelist is None
    cfg = load_config_dict({"server_name": "a.test", "ip_range_blacklist": []}, environ={})
    assert cfg.ip_range_blacklist == []

#!/usr/bin/env python3
"""Run one Starling homeserver for SyTest's `-I External` plugin (the `--hs-command`).

The plugin starts this once per test homeserver, in that server's scratch directory, with
the settings in the JSON file named by `$SYTEST_HS_CONFIG` (contract:
../shared/peer-suites/README.md). Starling is configured only the way an admin would:
`starling generate-config` writes the config and signing key, the settings SyTest needs are
merged into that YAML file, and `starling serve` runs in the foreground until SIGINT.

What SyTest assumes of every homeserver, and how it is set here:
- the server calls itself `localhost:<tls port>`; one HTTPS port serves the client,
  federation, key and media APIs with SyTest's certificate (a second, plain-HTTP port
  serves the client API for `--hs-plain-client`);
- outbound federation trusts SyTest's test CA (`federation_custom_ca_list`) and may reach
  loopback addresses (`ip_range_blacklist: []`); no notary (`trusted_key_servers: []`);
- open registration with the dummy stage, the shared secret from the JSON, guest access;
- no rate limits (`--no-rate-limit`);
- URL previews on, loopback pages allowed (SyTest serves the page it previews);
- reCAPTCHA keys with SyTest's fake siteverify API, not required for registration;
- SyTest's application-service registration files (`app_service_config_files`).

Database: SQLite in the server's directory, or PostgreSQL when `$STARLING_SYTEST_POSTGRES`
names an admin connection (e.g. `postgresql://postgres@127.0.0.1:5432/postgres`): then a
fresh database `starling_sytest_<port>` is created for the run and dropped afterwards.

Starling's log (stderr) goes to `<server dir>/starling.log`, kept in the results folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

POSTGRES_ENV = "STARLING_SYTEST_POSTGRES"
STARLING = [sys.executable, "-m", "starling.cli"]


def bind_address(bind_host: str) -> str:
    return "127.0.0.1" if bind_host == "localhost" else bind_host


def sytest_settings(hs: dict[str, Any]) -> dict[str, Any]:
    """The keys SyTest needs on top of what `generate-config` wrote."""
    address = bind_address(hs["bind_host"])
    settings: dict[str, Any] = {
        "public_baseurl": hs["public_baseurl"],
        "listeners": [
            {
                "port": hs["tls_port"],
                "bind_addresses": [address],
                "type": "http",
                "tls": True,
                "resources": [{"names": ["client", "federation", "keys", "media"]}],
            },
            {
                "port": hs["plain_port"],
                "bind_addresses": [address],
                "type": "http",
                "resources": [{"names": ["client", "media"]}],
            },
        ],
        "federation_custom_ca_list": [hs["federation_ca_path"]],
        "ip_range_blacklist": [],
        "trusted_key_servers": [],
        "registration_shared_secret": hs["registration_shared_secret"],
        "allow_guest_access": True,
        # SyTest lists remote room directories (as Synapse's SyTest config allows)
        "allow_public_rooms_over_federation": True,
        # SyTest mentions users by their name in the body only, as Synapse's defaults allow.
        "legacy_mention_push_rules": True,
        "url_preview_enabled": True,
        # MSC2228 self-destructing messages, as Synapse's SyTest config turns them on.
        "enable_ephemeral_messages": True,
        # SyTest's push gateway (and app services) serve HTTPS with its test CA.
        "use_insecure_ssl_client_just_for_testing_do_not_use": True,
        "url_preview_ip_range_whitelist": ["127.0.0.0/8", "::1/128"],
        # SyTest's application services (Synapse-format registration files it wrote).
        "app_service_config_files": list(hs.get("app_service_config_files") or []),
        "log_level": os.environ.get("STARLING_SYTEST_LOG_LEVEL", "INFO"),
    }
    smtp = hs.get("smtp") or {}
    if smtp.get("host") and smtp.get("port"):
        # SyTest's mail sink: validation mails for the email 3PID tests.
        settings["email"] = {
            "smtp_host": smtp["host"],
            "smtp_port": int(smtp["port"]),
            "notif_from": smtp.get("notif_from") or "homeserver@localhost",
        }
    recaptcha = hs.get("recaptcha") or {}
    if recaptcha.get("siteverify_api") and recaptcha.get("private_key"):
        # SyTest's fake siteverify API, as Synapse's SyTest config has it: the keys only,
        # so a submitted captcha is verified but registrations do not need one
        # (enable_registration_captcha stays off).
        settings["recaptcha_siteverify_api"] = recaptcha["siteverify_api"]
        settings["recaptcha_public_key"] = recaptcha.get("public_key") or ""
        settings["recaptcha_private_key"] = recaptcha["private_key"]
    cas = hs.get("cas") or {}
    if cas.get("server_url"):
        # SyTest's fake CAS server (its /cas/login and /cas/proxyValidate).
        settings["cas_config"] = {"enabled": True, "server_url": cas["server_url"]}
    return settings


def generate_config(hs: dict[str, Any], data_dir: Path, database: str) -> Path:
    """`starling generate-config` with SyTest's certificate, then SyTest's settings merged
    into the file it wrote. Returns the config path."""
    subprocess.run(
        [
            *STARLING,
            "generate-config",
            "--server-name",
            hs["server_name"],
            "--data-dir",
            str(data_dir),
            "--http-port",
            str(hs["plain_port"]),
            "--federation-port",
            str(hs["tls_port"]),
            "--tls-cert",
            hs["tls_certificate_path"],
            "--tls-key",
            hs["tls_private_key_path"],
            "--database",
            database,
            "--open-registration",
            "--no-rate-limit",
            "--force",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    config_path = data_dir / "starling.yaml"
    text = config_path.read_text(encoding="utf-8")
    config = yaml.safe_load(text)
    config.update(sytest_settings(hs))
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    config_path.write_text(
        header
        + "# Merged by tests/sytest/adapter.py for SyTest.\n"
        + yaml.safe_dump(config, sort_keys=False, default_flow_style=False),
        encoding="utf-8",
    )
    return config_path


def _postgres_name(hs: dict[str, Any]) -> str:
    return f"starling_sytest_{int(hs['tls_port'])}"


def _with_database(admin_dsn: str, name: str) -> str:
    base, _, _ = admin_dsn.rpartition("/")
    return f"{base}/{name}"


async def _recreate_postgres(admin_dsn: str, name: str, *, create: bool) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            await conn.execute(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0")
    finally:
        await conn.close()


def main() -> int:
    hs = json.loads(Path(os.environ["SYTEST_HS_CONFIG"]).read_text(encoding="utf-8"))
    hs_dir = Path(hs["hs_dir"])
    data_dir = hs_dir / "starling"

    admin_dsn = os.environ.get(POSTGRES_ENV, "")
    db_name = _postgres_name(hs)
    if admin_dsn:
        asyncio.run(_recreate_postgres(admin_dsn, db_name, create=True))
        database = _with_database(admin_dsn, db_name)
    else:
        database = "sqlite"

    config_path = generate_config(hs, data_dir, database)

    # SyTest stops the whole process group with SIGINT; Starling drains and exits on it.
    # This process only waits for Starling, then drops the PostgreSQL database.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(hs_dir / "starling.log", "ab") as log:
        server = subprocess.Popen(
            [*STARLING, "serve", "-c", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: (
                signal.signal(signal.SIGINT, signal.SIG_DFL),
                signal.signal(signal.SIGTERM, signal.SIG_DFL),
            ),
        )
        code = server.wait()
    if admin_dsn:
        asyncio.run(_recreate_postgres(admin_dsn, db_name, create=False))
    return code


if __name__ == "__main__":
    sys.exit(main())

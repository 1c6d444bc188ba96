"""`starling generate-config`: a first config file and signing key for a new server.

The file is small and commented, like Synapse's generated homeserver.yaml: everything else
has a documented default (docs/configuration.md). Paths in it are relative to the file,
so a data directory can be moved as a whole.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

from starling.config import ConfigError, load_config_dict
from starling.protocol.signing import SigningKey

CONFIG_FILE_NAME = "starling.yaml"

# Written with --no-rate-limit: every limit so high it never triggers (load tests, harnesses).
_UNLIMITED = {"per_second": 1_000_000, "burst_count": 1_000_000}


def postgres_args_from_url(url: str) -> dict[str, object]:
    """`postgresql://user:pass@host:port/db` → Synapse-style `database.args`."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"--database: expected 'sqlite' or a postgresql:// URL, got {url!r}")
    db = unquote(parts.path.lstrip("/"))
    if not db:
        raise ConfigError("--database: the PostgreSQL URL must name a database (…/dbname)")
    args: dict[str, object] = {"database": db, "user": unquote(parts.username or "postgres")}
    if parts.password:
        args["password"] = unquote(parts.password)
    args["host"] = parts.hostname or "127.0.0.1"
    args["port"] = parts.port or 5432
    return args


def build_config(
    server_name: str,
    http_port: int = 8008,
    federation_port: int = 8448,
    database: str = "sqlite",
    open_registration: bool = False,
    no_rate_limit: bool = False,
) -> dict[str, object]:
    if database == "sqlite":
        db: dict[str, object] = {"name": "sqlite3", "args": {"database": "starling.db"}}
    else:
        db = {"name": "psycopg2", "args": postgres_args_from_url(database)}
    cfg: dict[str, object] = {
        "server_name": server_name,
        "listeners": [
            {
                "port": http_port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "resources": [{"names": ["client", "media"]}],
            },
            {
                "port": federation_port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "resources": [{"names": ["federation", "keys"]}],
            },
        ],
        "database": db,
        "signing_key_path": f"{server_name.replace(':', '_')}.signing.key",
        "media_store_path": "media_store",
        "registration_shared_secret": secrets.token_urlsafe(32),
        "enable_registration": open_registration,
        "enable_registration_without_verification": open_registration,
    }
    if no_rate_limit:
        for key in ("rc_message", "rc_registration", "rc_joins_per_room", "rc_admin_redaction"):
            cfg[key] = dict(_UNLIMITED)
        cfg["rc_login"] = {k: dict(_UNLIMITED) for k in ("address", "account", "failed_attempts")}
        cfg["rc_joins"] = {k: dict(_UNLIMITED) for k in ("local", "remote")}
        cfg["rc_invites"] = {k: dict(_UNLIMITED) for k in ("per_room", "per_user", "per_issuer")}
    return cfg


HEADER = """\
# Starling configuration. Every key and its default: docs/configuration.md.
# Paths are relative to this file. Environment variables override keys:
# STARLING_<KEY>=... and STARLING_<SECTION>__<KEY>=... (e.g. STARLING_ENABLE_REGISTRATION=true).
#
# The listeners bind to 127.0.0.1 only. To federate, put a TLS reverse proxy in front of
# the federation port (or serve .well-known/matrix/server with serve_server_wellknown).
"""


def generate(
    data_dir: Path,
    server_name: str,
    *,
    http_port: int = 8008,
    federation_port: int = 8448,
    database: str = "sqlite",
    open_registration: bool = False,
    no_rate_limit: bool = False,
    force: bool = False,
) -> Path:
    """Write DIR/starling.yaml and a new signing key; return the config path."""
    cfg = build_config(
        server_name, http_port, federation_port, database, open_registration, no_rate_limit
    )
    # Validate before writing anything, so a bad server name leaves no files behind.
    load_config_dict(cfg, environ={}, config_dir=str(data_dir))
    config_path = data_dir / CONFIG_FILE_NAME
    key_path = data_dir / str(cfg["signing_key_path"])
    if not force:
        for existing in (config_path, key_path):
            if existing.exists():
                raise FileExistsError(f"{existing} already exists; pass --force to overwrite it")
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / str(cfg["media_store_path"])).mkdir(exist_ok=True)
    key = SigningKey.generate()
    key_path.write_text(key.to_key_file_line() + "\n", encoding="ascii")
    key_path.chmod(0o600)
    text = HEADER + "\n" + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)
    config_path.write_text(text, encoding="utf-8")
    config_path.chmod(0o600)  # it holds the registration shared secret
    return config_path

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
SELF_SIGNED_CERT = "tls/self-signed.crt"
SELF_SIGNED_KEY = "tls/self-signed.key"

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
    tls: tuple[str, str] | None = None,
) -> dict[str, object]:
    """The config mapping; `tls` = (certificate path, key path) makes the federation
    listener serve HTTPS with them."""
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
                "tls": tls is not None,
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
    if tls is not None:
        cfg["tls_certificate_path"], cfg["tls_private_key_path"] = tls
    if no_rate_limit:
        for key in (
            "rc_message",
            "rc_registration",
            "rc_joins_per_room",
            "rc_admin_redaction",
            "rc_to_device",
        ):
            cfg[key] = dict(_UNLIMITED)
        cfg["rc_login"] = {k: dict(_UNLIMITED) for k in ("address", "account", "failed_attempts")}
        cfg["rc_joins"] = {k: dict(_UNLIMITED) for k in ("local", "remote")}
        cfg["rc_invites"] = {k: dict(_UNLIMITED) for k in ("per_room", "per_user", "per_issuer")}
        cfg["rc_federation"] = {
            "window_size": 1000,
            "sleep_limit": 1_000_000,
            "sleep_delay": 0,
            "reject_limit": 1_000_000,
            "concurrent": 1_000_000,
        }
    return cfg


HEADER = """\
# Starling configuration. Every key and its default: docs/configuration.md.
# Paths are relative to this file. Environment variables override keys:
# STARLING_<KEY>=... and STARLING_<SECTION>__<KEY>=... (e.g. STARLING_ENABLE_REGISTRATION=true).
#
# The listeners bind to 127.0.0.1 only (edit bind_addresses to open them). Federation needs
# HTTPS: give the federation listener `tls: true` with tls_certificate_path and
# tls_private_key_path, or put a TLS reverse proxy in front of it. Others find it on port
# 8448 of server_name unless you delegate (.well-known/matrix/server, SRV records).
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
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_self_signed: bool = False,
    force: bool = False,
) -> Path:
    """Write DIR/starling.yaml and a new signing key; return the config path.

    `tls_cert` + `tls_key` (PEM files) or `tls_self_signed` (a new certificate for the
    server name's host, written to DIR/tls/) make the federation listener serve HTTPS.
    """
    tls: tuple[str, str] | None = None
    if tls_self_signed and (tls_cert or tls_key):
        raise ConfigError("--tls-self-signed makes its own certificate: drop --tls-cert/--tls-key")
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    if tls_cert and tls_key:
        for flag, given in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
            if not Path(given).is_file():
                raise ConfigError(f"{flag}: {given} is not a file")
        tls = (str(Path(tls_cert).resolve()), str(Path(tls_key).resolve()))
    elif tls_self_signed:
        tls = (SELF_SIGNED_CERT, SELF_SIGNED_KEY)
    cfg = build_config(
        server_name, http_port, federation_port, database, open_registration, no_rate_limit, tls
    )
    # Validate before writing anything, so a bad server name leaves no files behind.
    load_config_dict(cfg, environ={}, config_dir=str(data_dir))
    config_path = data_dir / CONFIG_FILE_NAME
    key_path = data_dir / str(cfg["signing_key_path"])
    written = [config_path, key_path]
    if tls_self_signed:
        written += [data_dir / SELF_SIGNED_CERT, data_dir / SELF_SIGNED_KEY]
    if not force:
        for existing in written:
            if existing.exists():
                raise FileExistsError(f"{existing} already exists; pass --force to overwrite it")
    data_dir.mkdir(parents=True, exist_ok=True)
    if tls_self_signed:
        write_self_signed_certificate(
            server_name, data_dir / SELF_SIGNED_CERT, data_dir / SELF_SIGNED_KEY
        )
    (data_dir / str(cfg["media_store_path"])).mkdir(exist_ok=True)
    key = SigningKey.generate()
    key_path.write_text(key.to_key_file_line() + "\n", encoding="ascii")
    key_path.chmod(0o600)
    text = HEADER + "\n" + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)
    config_path.write_text(text, encoding="utf-8")
    config_path.chmod(0o600)  # it holds the registration shared secret
    return config_path


def write_self_signed_certificate(server_name: str, cert_path: Path, key_path: Path) -> None:
    """A self-signed certificate (ECDSA P-256, 10 years) for the host of `server_name`
    (as a DNS name or IP address), for a LAN whose peers skip verification for it."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from starling.protocol.identifiers import parse_server_name

    host, _port = parse_server_name(server_name)
    host = host.strip("[]")
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

"""The `starling` command: generate-config, serve, register-user, version, debug.

Every command has --help. Errors a user can fix (bad config, file exists, user taken) are
printed as one line on stderr with exit code 2 (1 for a failed run), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

import yaml

from starling import __version__
from starling.config import Config, ConfigError, load_config

EXIT_USAGE = 2


def _fail(msg: str, code: int = EXIT_USAGE) -> int:
    print(f"starling: {msg}", file=sys.stderr)
    return code


def _setup_logging(config: Config) -> None:
    if config.log_config:
        path = config.resolve_path(config.log_config)
        with open(path, encoding="utf-8") as f:
            from logging import config as logging_config  # only with a log config

            logging_config.dictConfig(yaml.safe_load(f))
        return
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# --- generate-config ---------------------------------------------------------------------


def cmd_generate_config(args: argparse.Namespace) -> int:
    from starling.generate_config import generate

    try:
        path = generate(
            Path(args.data_dir),
            args.server_name,
            http_port=args.http_port,
            federation_port=args.federation_port,
            database=args.database,
            open_registration=args.open_registration,
            no_rate_limit=args.no_rate_limit,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_self_signed=args.tls_self_signed,
            force=args.force,
        )
    except (ConfigError, FileExistsError) as e:
        return _fail(str(e))
    print(f"Wrote {path} and a new signing key. Start the server with:")
    print(f"  {_own_command()} serve -c {path}")
    return 0


# --- serve -------------------------------------------------------------------------------


async def _serve(config: Config, config_path: str, worker: str | None = None) -> int:
    from starling.accounts.passwords import release_freed_memory_promptly
    from starling.app import Homeserver

    bus_errors: tuple[type[Exception], ...] = ()
    if config.redis is not None and config.redis.enabled:
        # Only with workers: a single process never imports Redis (idle memory).
        from starling.cluster.bus import BusUnavailable

        bus_errors = (BusUnavailable,)
    release_freed_memory_promptly()
    try:
        hs = await Homeserver.start(config, worker)
    except bus_errors as e:
        raise RuntimeError(str(e)) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    who = f" (worker {worker})" if worker else ""
    for url in hs.bound:
        print(
            f"Starling {__version__} for {config.server_name}{who} listening on {url}",
            flush=True,
        )
    print(
        "Create the first user with:\n"
        f"  {_own_command()} register-user -c {config_path} alice --password 'secret' --admin",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        logging.getLogger("starling").info("shutting down")
        await hs.stop()
    return 0


def _own_command() -> str:
    """How this command was invoked (e.g. .venv/bin/starling), for the hints it prints."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "starling":
        return argv0
    return "starling"


def cmd_serve(args: argparse.Namespace) -> int:
    from starling.app import load_app_services

    try:
        config = load_config(args.config)
        load_app_services(config)  # checked before anything starts
    except ConfigError as e:
        return _fail(f"invalid configuration: {e}")
    if args.worker is not None:
        from starling.config import WORKER_NAME

        if not WORKER_NAME.fullmatch(args.worker) or args.worker == "main":
            return _fail(
                f"--worker: {args.worker!r} is not a worker name (lowercase letters, digits,"
                " _ and -, not 'main', which is the process started without --worker)"
            )
        if config.redis is None or not config.redis.enabled:
            return _fail("--worker needs a redis: section in the config (docs/scaling.md)")
    _setup_logging(config)
    try:
        return asyncio.run(_serve(config, args.config[0], args.worker))
    except ConfigError as e:  # found while building the server (e.g. a module's config)
        return _fail(f"invalid configuration: {e}")
    except OSError as e:
        return _fail(f"cannot start: {e}", 1)
    except RuntimeError as e:
        return _fail(str(e), 1)


# --- register-user -----------------------------------------------------------------------


async def _register(config: Config, user: str, password: str, admin: bool) -> str:
    from starling.accounts.passwords import PasswordHasher
    from starling.accounts.registration import register_local_user
    from starling.app import storage_config
    from starling.storage.accounts import AccountStore
    from starling.storage.database import open_database

    db = await open_database(storage_config(config))
    try:
        return await register_local_user(
            AccountStore(db), PasswordHasher(), config.server_name, user, password, admin=admin
        )
    finally:
        await db.close()


def cmd_register_user(args: argparse.Namespace) -> int:
    from starling.errors import MatrixError

    try:
        config = load_config(args.config)
    except ConfigError as e:
        return _fail(f"invalid configuration: {e}")
    password = args.password
    if password is None:
        if not sys.stdin.isatty():
            return _fail("--password is required when not run on a terminal")
        import getpass

        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Confirm password: "):
            return _fail("passwords do not match")
    try:
        user_id = asyncio.run(_register(config, args.user, password, args.admin))
    except MatrixError as e:
        return _fail(e.error)
    print(f"Created {'admin ' if args.admin else ''}user {user_id}")
    return 0


# --- port-db -----------------------------------------------------------------------------


async def _port_db(config: Config, sqlite_path: Path, resume: bool) -> int:
    from starling.app import storage_config
    from starling.storage.database import DatabaseConfig, open_database
    from starling.storage.port import (
        PortError,
        other_connections,
        port_sqlite_to_postgres,
        sqlite_in_use,
    )

    if sqlite_in_use(sqlite_path):
        return _fail(f"{sqlite_path} is open in another process: stop the server first", 1)
    # The SQLite side is brought to this version's schema first (as a start would).
    source = await open_database(str(sqlite_path))
    await source.close()
    # One connection: other_connections() then counts everyone else.
    target_url = storage_config(config).url
    target = await open_database(DatabaseConfig(target_url, pool_min_size=1, pool_max_size=1))
    try:
        if await other_connections(target):
            return _fail(
                "another process is connected to the PostgreSQL database: stop the server"
                " (and every worker) first",
                1,
            )
        tty = sys.stderr.isatty()
        last_table = ""

        def progress(table: str, copied: int, total: int) -> None:
            nonlocal last_table
            width = 30
            done = width if total == 0 else min(width, copied * width // max(total, 1))
            line = f"{table:<36} [{'#' * done}{'.' * (width - done)}] {copied}/{total}"
            if tty:
                end = "\n" if copied >= total else ""
                print(f"\r{line}", end=end, file=sys.stderr, flush=True)
            elif table != last_table or copied >= total:
                if copied >= total:
                    print(line, file=sys.stderr, flush=True)
            last_table = table

        try:
            report = await port_sqlite_to_postgres(
                sqlite_path, target, resume=resume, progress=progress
            )
        except PortError as e:
            return _fail(str(e), 1)
    finally:
        await target.close()
    rows = sum(report.tables.values())
    print(
        f"Copied {rows} rows in {len(report.tables)} tables (counts verified); "
        f"{len(report.sequences)} sequences set. Start the server on the PostgreSQL config; "
        "keep media_store_path and the signing key as they were."
    )
    return 0


def cmd_port_db(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as e:
        return _fail(f"invalid configuration: {e}")
    if config.database.is_sqlite:
        return _fail("the config must name the PostgreSQL database to copy into (database:)")
    path = Path(args.sqlite_database)
    if not path.is_file():
        return _fail(f"no SQLite database at {path}")
    try:
        return asyncio.run(_port_db(config, path, args.resume))
    except OSError as e:
        return _fail(f"cannot port: {e}", 1)


# --- version -----------------------------------------------------------------------------


def cmd_version(args: argparse.Namespace) -> int:
    print(f"starling {__version__}")
    return 0


# --- parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="starling",
        description="Starling: a federated, end-to-end encrypted Matrix homeserver.",
    )
    parser.add_argument("--version", action="version", version=f"starling {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    g = sub.add_parser(
        "generate-config",
        help="write a new config file and signing key",
        description="Write DIR/starling.yaml and a new ed25519 signing key for a new server.",
    )
    g.add_argument("--server-name", required=True, help="the domain in user IDs (immutable)")
    g.add_argument("--data-dir", required=True, help="where the config, key and data live")
    g.add_argument("--http-port", type=int, default=8008, help="client API port (default 8008)")
    g.add_argument(
        "--federation-port", type=int, default=8448, help="federation port (default 8448)"
    )
    g.add_argument(
        "--database",
        default="sqlite",
        help="'sqlite' (default, DIR/starling.db) or a postgresql://user@host:port/db URL",
    )
    g.add_argument(
        "--open-registration",
        action="store_true",
        help="let anyone register without a token (off by default)",
    )
    g.add_argument(
        "--no-rate-limit",
        action="store_true",
        help="turn every rate limit off (load tests and test harnesses)",
    )
    g.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="PEM certificate chain: the federation listener serves HTTPS with it",
    )
    g.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    g.add_argument(
        "--tls-self-signed",
        action="store_true",
        help="make a self-signed certificate in DIR/tls/ for the federation listener (LANs)",
    )
    g.add_argument("--force", action="store_true", help="overwrite an existing config and key")
    g.set_defaults(func=cmd_generate_config)

    s = sub.add_parser(
        "serve",
        help="run the homeserver",
        description="Run the homeserver until SIGTERM or SIGINT, then drain and exit 0.",
    )
    s.add_argument(
        "-c",
        "--config",
        required=True,
        action="append",
        help="path to starling.yaml; repeat to add files whose top-level keys replace the"
        " earlier ones' (a worker's own listeners, as Synapse's --config-path)",
    )
    s.add_argument(
        "--worker",
        metavar="NAME",
        help="run as worker NAME of a server with several processes sharing PostgreSQL and"
        " Redis (needs redis: in the config; docs/scaling.md). Without it: the main process",
    )
    s.set_defaults(func=cmd_serve)

    r = sub.add_parser(
        "register-user",
        help="create an account directly in the database",
        description="Create a local account directly (like Synapse's register_new_matrix_user).",
    )
    r.add_argument("-c", "--config", required=True, help="path to starling.yaml")
    r.add_argument("user", help="localpart or full user ID (@alice:example.org)")
    r.add_argument("--password", help="the password (prompted for on a terminal if omitted)")
    r.add_argument("--admin", action="store_true", help="make the user a server admin")
    r.set_defaults(func=cmd_register_user)

    p = sub.add_parser(
        "port-db",
        help="copy a SQLite database into PostgreSQL",
        description="Copy every table of a SQLite database into a new PostgreSQL database"
        " (the one the config names), set its sequences and stream positions, and verify"
        " the row counts (like Synapse's synapse_port_db). Stop the server first; an"
        " interrupted port continues with --resume.",
    )
    p.add_argument(
        "-c",
        "--config",
        "--postgres-config",
        required=True,
        action="append",
        help="the config whose database: is the PostgreSQL database to fill",
    )
    p.add_argument("--sqlite-database", required=True, help="the SQLite file to copy from")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted port into the same database"
    )
    p.set_defaults(func=cmd_port_db)

    v = sub.add_parser("version", help="print the version", description="Print the version.")
    v.set_defaults(func=cmd_version)

    from starling.admin.cli import add_admin_commands
    from starling.debug_cli import add_debug_commands

    add_admin_commands(sub)
    add_debug_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with contextlib.suppress(BrokenPipeError):
        code: int = args.func(args)
        return code
    return 1


if __name__ == "__main__":
    sys.exit(main())

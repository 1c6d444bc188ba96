"""The composition root: builds every service with explicit arguments and the HTTP apps.

Nothing else in Starling constructs services; each one receives exactly the collaborators
it uses here. `Homeserver.start` opens the database (applying migrations), builds the
services and one aiohttp application per configured listener; `stop` drains them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiohttp import web

from starling.api.discovery import DiscoveryResource, register_metrics
from starling.api.http import make_web_app
from starling.config import Config, Listener
from starling.protocol.signing import SigningKey
from starling.storage.database import Database, open_database
from starling.storage.database import DatabaseConfig as StorageConfig

logger = logging.getLogger(__name__)

# How long in-flight requests may run on after SIGTERM before they are cut.
SHUTDOWN_GRACE_SECONDS = 3.0


def storage_config(config: Config) -> StorageConfig:
    """Where the storage layer finds the database that config.database describes."""
    args = config.database.args
    if config.database.is_sqlite:
        url = (
            args.database
            if args.database == ":memory:"
            else str(config.resolve_path(args.database))
        )
    else:
        url = config.database.postgres_dsn()
    return StorageConfig(url=url, pool_min_size=args.cp_min, pool_max_size=args.cp_max)


def load_signing_key(config: Config) -> SigningKey:
    path = config.resolve_path(config.signing_key_path)
    try:
        text = path.read_text(encoding="ascii")
    except OSError as e:
        raise RuntimeError(
            f"cannot read signing key {path}: {e.strerror} (starling generate-config writes one)"
        ) from None
    return SigningKey.from_key_file(text)


@dataclass
class Services:
    """Everything the HTTP layer may call, built once in `build_services`."""

    config: Config
    db: Database
    signing_key: SigningKey


def build_services(config: Config, db: Database, signing_key: SigningKey) -> Services:
    return Services(config=config, db=db, signing_key=signing_key)


def build_listener_app(services: Services, listener: Listener) -> web.Application:
    """The aiohttp application serving one listener's resources."""
    config = services.config
    app = make_web_app(config.max_request_body_size)
    names = {n for r in listener.resources for n in r.names}
    if listener.type == "metrics":
        register_metrics(app)
        return app
    DiscoveryResource(config).register(
        app, client="client" in names, federation="federation" in names
    )
    if "metrics" in names and config.enable_metrics:
        register_metrics(app)
    return app


@dataclass
class Homeserver:
    config: Config
    services: Services
    runners: list[web.AppRunner] = field(default_factory=list)
    bound: list[str] = field(default_factory=list)

    @classmethod
    async def start(cls, config: Config) -> Homeserver:
        signing_key = load_signing_key(config)
        db = await open_database(storage_config(config))
        hs = cls(config=config, services=build_services(config, db, signing_key))
        try:
            await hs._start_listeners()
        except BaseException:
            await hs.stop()
            raise
        return hs

    async def _start_listeners(self) -> None:
        for listener in self.config.listeners:
            if listener.type == "metrics" and not self.config.enable_metrics:
                logger.warning(
                    "metrics listener on port %d ignored: enable_metrics is off", listener.port
                )
                continue
            app = build_listener_app(self.services, listener)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
            await runner.setup()
            self.runners.append(runner)
            for addr in listener.bind_addresses:
                site = web.TCPSite(runner, addr, listener.port, reuse_address=True)
                await site.start()
                host = f"[{addr}]" if ":" in addr else addr
                self.bound.append(f"http://{host}:{listener.port}")

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close the database."""
        for runner in self.runners:
            try:
                await asyncio.wait_for(runner.cleanup(), SHUTDOWN_GRACE_SECONDS + 1)
            except TimeoutError:
                logger.warning("listener did not drain in time; closing anyway")
        self.runners.clear()
        await self.services.db.close()

"""The federation transport as one bundle, built once by app.py: the signed outbound
client, the keyring, this server's key answers, the inbound rate limiter, and the
`on_inbound_request` hooks (called with the origin of every authenticated inbound
request; the sender uses them to reset a destination's backoff and flush its queue).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp.abc import AbstractResolver

from starling.config import Config, parse_duration
from starling.federation.client import FederationClient
from starling.federation.discovery import SrvResolver
from starling.federation.keyring import (
    Keyring,
    KeyServer,
    notaries_from_config,
    parse_old_signing_keys,
)
from starling.federation.ratelimit import FederationRateLimiter
from starling.protocol.signing import SigningKey
from starling.storage.server_keys import ServerKeyStore


@dataclass
class FederationTransport:
    client: FederationClient
    keyring: Keyring
    key_server: KeyServer
    rate_limiter: FederationRateLimiter
    on_inbound_request: list[Callable[[str], object]] = field(default_factory=list)

    async def close(self) -> None:
        await self.client.close()


def build_federation_transport(
    config: Config,
    key_store: ServerKeyStore,
    signing_key: SigningKey,
    *,
    srv_resolver: SrvResolver | None = None,
    host_resolver: AbstractResolver | None = None,
) -> FederationTransport:
    client = FederationClient(
        config, signing_key, srv_resolver=srv_resolver, host_resolver=host_resolver
    )
    old_keys = parse_old_signing_keys(config.old_signing_keys)
    keyring = Keyring(
        config.server_name,
        signing_key,
        key_store,
        client,
        notaries=notaries_from_config(config.trusted_key_servers),
        old_keys=old_keys,
    )
    key_server = KeyServer(
        config.server_name,
        signing_key,
        keyring,
        old_keys=old_keys,
        refresh_interval_ms=parse_duration(config.key_refresh_interval),
    )
    return FederationTransport(
        client=client,
        keyring=keyring,
        key_server=key_server,
        rate_limiter=FederationRateLimiter(config.rc_federation),
    )

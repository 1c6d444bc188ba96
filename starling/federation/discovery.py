"""Server discovery: from a server name to where and how to connect (spec: Server-Server
API > Server discovery > Resolving server names).

`ServerResolver.resolve(server_name)` returns the ordered `Target`s to try, each saying
which host and port to connect to, which `Host` header to send, and which name the TLS
certificate must be valid for (sent as SNI unless it is an IP address). The steps, as
the spec numbers them:

1. IP literal: that address, the given port or 8448; Host = the server name.
2. Hostname with an explicit port: that host and port; Host = the server name.
3. Otherwise `https://<hostname>/.well-known/matrix/server` (cached: Cache-Control
   max-age within [5 min, 48 h], 24 h without one; an invalid answer for an hour; a
   failed fetch with exponential backoff from 2 min up to an hour, during which a
   delegation answered within the last 48 h stays in use). A valid `m.server`
   delegates to `<delegated_hostname>[:<delegated_port>]`, resolved by 3.1 IP literal,
   3.2 explicit port, 3.3 SRV `_matrix-fed._tcp`, 3.4 SRV `_matrix._tcp`, 3.5 port 8448;
   Host and certificate name are the delegated hostname (with the delegated port when
   one was given).
4-6. No valid well-known: SRV `_matrix-fed._tcp.<hostname>`, then `_matrix._tcp`, then
   port 8448; Host and certificate name are the original hostname.

SRV lookups go through an injectable `SrvResolver` (dnspython by default): tests never
query real DNS. Address (A/AAAA) resolution happens when connecting, where the IP range
rules are applied to each address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from starling.protocol.identifiers import IdentifierError, parse_server_name

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8448

WELL_KNOWN_DEFAULT_CACHE = 24 * 3600.0
WELL_KNOWN_MIN_CACHE = 5 * 60.0
WELL_KNOWN_MAX_CACHE = 48 * 3600.0
WELL_KNOWN_INVALID_CACHE = 3600.0
WELL_KNOWN_FAILURE_BACKOFF = 2 * 60.0
WELL_KNOWN_MAX_BACKOFF = 3600.0
# A .well-known/matrix/server body is a few dozen bytes; refuse anything large.
WELL_KNOWN_MAX_BYTES = 50 * 1024
# Hostnames whose well-known answer is remembered; past this the expired entries, then
# the oldest, are forgotten (a flood of names must not grow memory without bound).
WELL_KNOWN_CACHE_SIZE = 10_000


class DiscoveryError(Exception):
    """The server name cannot be resolved to anywhere to connect to."""


@dataclass(frozen=True, slots=True)
class Target:
    """One place to send a request to a server, and how."""

    host: str  # a hostname (resolved when connecting) or an IP address (no brackets)
    port: int
    host_header: str
    tls_name: str  # the name (or IP address) the certificate must be valid for

    @property
    def sni(self) -> str | None:
        """The SNI to send: none for an IP address (the spec: SNI is not supported)."""
        return None if is_ip_literal(self.tls_name) else self.tls_name


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


class SrvResolver(Protocol):
    async def resolve_srv(self, name: str) -> list[SrvRecord]:
        """The SRV records of `name`; [] when there are none (NXDOMAIN, no answer)."""
        ...


class DnsPythonSrvResolver:
    """SRV lookups with dnspython's async resolver (with its TTL-respecting cache). The
    system's resolver configuration is read at the first lookup; without one (no
    /etc/resolv.conf) every lookup finds no records, so discovery falls back to port 8448
    instead of the server failing."""

    def __init__(self, timeout: float = 10.0) -> None:
        self._timeout = timeout
        self._resolver: Any = None
        self._unconfigured = False

    def _get_resolver(self) -> Any:
        import dns.asyncresolver
        import dns.resolver

        if self._resolver is None and not self._unconfigured:
            try:
                resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration as e:
                logger.warning("no DNS resolver configuration (%s): SRV lookups are off", e)
                self._unconfigured = True
                return None
            resolver.cache = dns.resolver.Cache()
            resolver.lifetime = self._timeout
            self._resolver = resolver
        return self._resolver

    async def resolve_srv(self, name: str) -> list[SrvRecord]:
        import dns.exception
        import dns.resolver

        resolver = self._get_resolver()
        if resolver is None:
            return []
        try:
            answer = await resolver.resolve(name, "SRV")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            return []
        except dns.exception.DNSException as e:
            logger.info("SRV lookup for %s failed: %s", name, e)
            return []
        return [
            SrvRecord(r.priority, r.weight, r.port, r.target.to_text(omit_final_dot=True))
            for r in answer
        ]


@dataclass(frozen=True, slots=True)
class WellKnownResponse:
    status: int
    body: bytes
    cache_control: str | None


# Fetches https://<hostname>/.well-known/matrix/server (following redirects, bounded);
# raises OSError/TimeoutError (or any Exception) when there is no HTTP answer.
WellKnownFetcher = Callable[[str], Awaitable[WellKnownResponse]]


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def split_server_name(server_name: str) -> tuple[str, int | None]:
    """(hostname without IPv6 brackets, port or None); DiscoveryError if malformed."""
    try:
        host, port = parse_server_name(server_name)
    except IdentifierError as e:
        raise DiscoveryError(str(e)) from None
    if port is not None and not 1 <= port <= 65535:
        raise DiscoveryError(f"port {port} of {server_name!r} is out of range")
    return (host[1:-1] if host.startswith("[") else host.lower()), port


def order_srv(records: list[SrvRecord], rng: random.Random | None = None) -> list[SrvRecord]:
    """RFC 2782 order: by priority ascending; within one priority, the RFC's weighted
    random selection (a record is picked with probability proportional to its weight;
    weight-0 records only rarely come first). Records with target "." are dropped."""
    rng = rng or random.Random()
    usable = [r for r in records if r.target not in ("", ".")]
    ordered: list[SrvRecord] = []
    for priority in sorted({r.priority for r in usable}):
        group = sorted((r for r in usable if r.priority == priority), key=lambda r: r.weight)
        while group:
            total = sum(r.weight for r in group)
            pick = rng.randint(0, total)
            running = 0
            for i, r in enumerate(group):
                running += r.weight
                if running >= pick:
                    ordered.append(group.pop(i))
                    break
    return ordered


_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)


def well_known_cache_period(cache_control: str | None) -> float:
    """Seconds to keep a valid well-known answer, from its Cache-Control header."""
    if cache_control:
        lowered = cache_control.lower()
        if "no-store" in lowered or "no-cache" in lowered:
            return WELL_KNOWN_MIN_CACHE
        m = _MAX_AGE.search(cache_control)
        if m:
            return min(max(float(m.group(1)), WELL_KNOWN_MIN_CACHE), WELL_KNOWN_MAX_CACHE)
    return WELL_KNOWN_DEFAULT_CACHE


def parse_well_known(body: bytes) -> str:
    """The delegated server name of a well-known body; DiscoveryError if invalid."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise DiscoveryError("well-known body is not JSON") from None
    if not isinstance(data, dict):
        raise DiscoveryError("well-known body is not a JSON object")
    delegated = data.get("m.server")
    if not isinstance(delegated, str):
        raise DiscoveryError("well-known lacks a string m.server")
    split_server_name(delegated)  # raises if malformed
    return delegated


@dataclass
class _CacheEntry:
    delegated: str | None  # None: no valid well-known
    expires: float
    failures: int = 0
    fetched: float | None = None  # when `delegated` was last answered


class ServerResolver:
    def __init__(
        self,
        srv: SrvResolver,
        fetch_well_known: WellKnownFetcher,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._srv = srv
        self._fetch_well_known = fetch_well_known
        self._clock = clock
        self._rng = rng or random.Random()
        self._well_known: dict[str, _CacheEntry] = {}
        self._in_flight: dict[str, asyncio.Future[str | None]] = {}

    async def resolve(self, server_name: str) -> list[Target]:
        """The targets to try for `server_name`, in order (never empty)."""
        host, port = split_server_name(server_name)
        if is_ip_literal(host):  # step 1
            return [Target(host, port or DEFAULT_PORT, server_name, host)]
        if port is not None:  # step 2
            return [Target(host, port, server_name, host)]
        delegated = await self.well_known(host)  # step 3
        if delegated is not None:
            d_host, d_port = split_server_name(delegated)
            if is_ip_literal(d_host):  # 3.1
                return [Target(d_host, d_port or DEFAULT_PORT, delegated, d_host)]
            if d_port is not None:  # 3.2
                return [Target(d_host, d_port, delegated, d_host)]
            return await self._srv_targets(d_host)  # 3.3 - 3.5
        return await self._srv_targets(host)  # steps 4-6

    async def _srv_targets(self, host: str) -> list[Target]:
        """SRV `_matrix-fed._tcp`, then the deprecated `_matrix._tcp`, then port 8448;
        Host header and certificate name stay `host` either way."""
        for service in ("_matrix-fed._tcp", "_matrix._tcp"):
            records = order_srv(await self._srv.resolve_srv(f"{service}.{host}"), self._rng)
            if records:
                return [Target(r.target.rstrip("."), r.port, host, host) for r in records]
        return [Target(host, DEFAULT_PORT, host, host)]

    async def well_known(self, hostname: str) -> str | None:
        """The delegated server name `hostname`'s well-known gives, or None (cached)."""
        entry = self._well_known.get(hostname)
        if entry is not None and entry.expires > self._clock():
            return entry.delegated
        pending = self._in_flight.get(hostname)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._in_flight[hostname] = future
        try:
            result = await self._refresh(hostname, entry)
            future.set_result(result)
            return result
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            del self._in_flight[hostname]

    async def _refresh(self, hostname: str, previous: _CacheEntry | None) -> str | None:
        now = self._clock()
        try:
            response = await self._fetch_well_known(hostname)
        except Exception as e:  # no HTTP answer: back off exponentially
            failures = (previous.failures if previous else 0) + 1
            backoff = min(WELL_KNOWN_FAILURE_BACKOFF * 2 ** (failures - 1), WELL_KNOWN_MAX_BACKOFF)
            logger.info("well-known of %s unreachable (%s); retry in %ds", hostname, e, backoff)
            # A delegation answered before stays in use through a blip (up to the maximum
            # cache time after it was last answered): falling back to SRV/8448 would send
            # requests somewhere the server said not to.
            kept = None
            if (
                previous is not None
                and previous.delegated is not None
                and previous.fetched is not None
                and now - previous.fetched < WELL_KNOWN_MAX_CACHE
            ):
                kept = previous.delegated
            fetched = previous.fetched if kept is not None and previous else None
            self._remember(hostname, _CacheEntry(kept, now + backoff, failures, fetched))
            return kept
        if response.status != 200:
            self._remember(hostname, _CacheEntry(None, now + WELL_KNOWN_INVALID_CACHE))
            return None
        try:
            delegated = parse_well_known(response.body)
        except DiscoveryError as e:
            logger.info("well-known of %s is invalid: %s", hostname, e)
            self._remember(hostname, _CacheEntry(None, now + WELL_KNOWN_INVALID_CACHE))
            return None
        period = well_known_cache_period(response.cache_control)
        self._remember(hostname, _CacheEntry(delegated, now + period, fetched=now))
        return delegated

    def _remember(self, hostname: str, entry: _CacheEntry) -> None:
        cache = self._well_known
        cache.pop(hostname, None)
        cache[hostname] = entry
        if len(cache) > WELL_KNOWN_CACHE_SIZE:
            now = self._clock()
            for name in [n for n, e in cache.items() if e.expires <= now]:
                del cache[name]
            while len(cache) > WELL_KNOWN_CACHE_SIZE:
                del cache[next(iter(cache))]

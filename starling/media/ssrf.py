"""The guard that keeps URL previews from reaching inside the server's network (SSRF).

`IPPolicy` decides whether an address may be contacted: never private, loopback,
link-local, multicast, reserved, unspecified or otherwise non-global addresses, including
ones hidden inside IPv6 (IPv4-mapped ``::ffff:127.0.0.1``, NAT64 ``64:ff9b::/96``, 6to4
``2002::/16``, Teredo), plus the admin's deny list; the admin's allow list overrides both.

The policy is enforced where the connection is made, not on the URL: `guarded_session`
builds an aiohttp session whose resolver refuses a host name if any address it resolves to
is denied, and whose socket factory checks the exact address each socket is about to
connect to (this also covers IP literals, which aiohttp never resolves). A host name that
resolves to a public address when checked and a private one when connected (DNS rebinding)
is caught by the second check. Proxies from the environment are ignored.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from starling import address_guard
from starling.address_guard import BlockedAddressError, is_blocked_error

__all__ = [
    "BlockedAddressError",
    "GuardedResolver",
    "IPPolicy",
    "guarded_session",
    "guarded_socket_factory",
    "is_blocked_error",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges refused even where Python's `is_global` would let them through, or where being
# explicit documents intent.
_ALWAYS_DENIED = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
    "::/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
]
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _networks(cidrs: Iterable[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


class IPPolicy:
    def __init__(self, deny: Iterable[str] = (), allow: Iterable[str] = ()) -> None:
        self._deny = _networks(_ALWAYS_DENIED) + _networks(deny)
        self._allow = _networks(allow)

    def is_allowed(self, address: str | IPAddress) -> bool:
        try:
            ip = ipaddress.ip_address(
                address.split("%", 1)[0] if isinstance(address, str) else address
            )
        except ValueError:
            return False
        return self._allowed(ip, depth=0)

    def _allowed(self, ip: IPAddress, depth: int) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self._allow):
            return True
        if any(ip in net for net in self._deny):
            return False
        if isinstance(ip, ipaddress.IPv6Address):
            embedded = _embedded_ipv4(ip)
            if embedded and depth == 0:
                return all(self._allowed(e, depth + 1) for e in embedded)
        # Whatever is left and not globally routable (documentation, benchmarking, …).
        return ip.is_global and not ip.is_multicast


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries to the IPv4 internet."""
    found: list[ipaddress.IPv4Address] = []
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


class GuardedResolver(AbstractResolver):
    """Resolves with the system resolver and refuses names with any denied address."""

    def __init__(self, policy: IPPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner or ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for r in results:
            if not self._policy.is_allowed(r["host"]):
                raise BlockedAddressError(f"{host} ({r['host']})", "the URL preview IP policy")
        return results

    async def close(self) -> None:
        await self._inner.close()


def guarded_socket_factory(policy: IPPolicy) -> Any:
    """An aiohttp/aiohappyeyeballs socket factory that refuses denied peers."""
    return address_guard.guarded_socket_factory(policy, "the URL preview IP policy")


def guarded_session(
    policy: IPPolicy, timeout: aiohttp.ClientTimeout, *, verify_certificates: bool = True
) -> aiohttp.ClientSession:
    """`verify_certificates=False` only under `use_insecure_ssl_client_just_for_testing_
    do_not_use` (test suites serving pages with their own CA, as Synapse allows)."""
    connector = aiohttp.TCPConnector(
        ssl=verify_certificates,  # True: the default verification
        resolver=GuardedResolver(policy),
        use_dns_cache=False,
        socket_factory=guarded_socket_factory(policy),
        limit=20,
        limit_per_host=4,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        trust_env=False,
        auto_decompress=True,
        max_line_size=16 * 1024,
        max_field_size=16 * 1024,
    )

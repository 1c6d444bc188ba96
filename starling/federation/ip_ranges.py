"""Which addresses federation may connect to: `ip_range_blacklist` / `ip_range_whitelist`.

Synapse's rules: an address in the blacklist is refused unless it is in the whitelist;
the unspecified addresses (0.0.0.0, ::) are always refused; an IPv4-mapped IPv6 address
is judged as the IPv4 address it carries. The default blacklist (config.py) holds the
loopback, private and other special-purpose ranges, so a server on the internet cannot be
made to call into its own network; `ip_range_blacklist: []` allows them (LANs, tests).

The check is made where the socket is opened (`guarded_socket_factory`), on the exact
address about to be connected to: that covers IP literals (which aiohttp never resolves),
every address a name resolves to, and DNS rebinding between a check and the connect.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from starling import address_guard
from starling.address_guard import BlockedAddressError, is_blocked_error

__all__ = ["BlockedAddressError", "IPRangePolicy", "guarded_socket_factory", "is_blocked_error"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_ALWAYS_REFUSED = [ipaddress.ip_network("0.0.0.0/32"), ipaddress.ip_network("::/128")]


class IPRangePolicy:
    def __init__(self, blacklist: Iterable[str], whitelist: Iterable[str] = ()) -> None:
        self._deny: list[IPNetwork] = [ipaddress.ip_network(c, strict=False) for c in blacklist]
        self._allow: list[IPNetwork] = [ipaddress.ip_network(c, strict=False) for c in whitelist]

    def is_allowed(self, address: str | IPAddress) -> bool:
        try:
            ip = ipaddress.ip_address(
                address.split("%", 1)[0] if isinstance(address, str) else address
            )
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in _ALWAYS_REFUSED):
            return False
        if any(ip in net for net in self._allow):
            return True
        return not any(ip in net for net in self._deny)


def guarded_socket_factory(policy: IPRangePolicy) -> Any:
    """An aiohttp socket factory that refuses to open a socket to a refused address."""
    return address_guard.guarded_socket_factory(policy, "ip_range_blacklist")

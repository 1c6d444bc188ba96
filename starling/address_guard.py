"""Refusing outbound connections to forbidden addresses, where the socket is opened.

Federation (`ip_range_blacklist`) and URL previews (the SSRF policy) each decide which
addresses are allowed; this module holds what they share: the socket factory that asks
the policy about the exact address about to be connected to (covering IP literals, every
address a name resolves to, and DNS rebinding between a check and the connect), the error
it raises, and the test for that error buried in aiohttp's exception chains.
"""

from __future__ import annotations

import socket
from typing import Any, Protocol


class AddressPolicy(Protocol):
    def is_allowed(self, address: str) -> bool: ...


class BlockedAddressError(OSError):
    """A connection to an address the policy refuses."""

    def __init__(self, address: str, rule: str = "the IP policy") -> None:
        super().__init__(f"connection to {address} refused by {rule}")
        self.address = address


def guarded_socket_factory(policy: AddressPolicy, rule: str = "the IP policy") -> Any:
    """An aiohttp/aiohappyeyeballs socket factory that refuses to open a socket to an
    address `policy` refuses."""

    def factory(addr_info: tuple[Any, ...]) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        if not policy.is_allowed(str(sockaddr[0])):
            raise BlockedAddressError(str(sockaddr[0]), rule)
        return socket.socket(family=family, type=type_, proto=proto)

    return factory


def is_blocked_error(exc: BaseException) -> bool:
    """Whether a client error was caused by a refused address (anywhere in its chain)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, BlockedAddressError):
            return True
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        stack.extend((e.__cause__, e.__context__, getattr(e, "os_error", None)))
    return False

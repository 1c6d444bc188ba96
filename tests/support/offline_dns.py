"""Name resolution for in-process tests that must never reach real DNS: SRV lookups from
a table, host names from a table (loopback names only by default); anything else fails
as an unknown name would."""

from __future__ import annotations

import socket
from collections.abc import Mapping

from aiohttp.abc import AbstractResolver, ResolveResult

from starling.federation.discovery import SrvRecord


class TableSrvResolver:
    def __init__(self, records: Mapping[str, list[SrvRecord]] | None = None) -> None:
        self.records = dict(records or {})
        self.queries: list[str] = []

    async def resolve_srv(self, name: str) -> list[SrvRecord]:
        self.queries.append(name)
        return list(self.records.get(name, []))


class TableHostResolver(AbstractResolver):
    """Resolves only the names in its table (default: localhost -> 127.0.0.1)."""

    def __init__(self, hosts: Mapping[str, str] | None = None) -> None:
        self.hosts = dict(hosts or {"localhost": "127.0.0.1"})
        self.queries: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.queries.append(host)
        address = self.hosts.get(host.lower().rstrip("."))
        if address is None:
            raise OSError(f"{host}: unknown host (offline test resolver)")
        fam = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [ResolveResult(hostname=host, host=address, port=port, family=fam, proto=0, flags=0)]

    async def close(self) -> None:
        return None

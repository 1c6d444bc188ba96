"""Remote alias lookups (/query/directory for our clients) are cached for a minute and
shared while in flight; errors are not cached."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from starling.errors import MatrixError
from starling.federation.errors import FederationError
from starling.federation.remote_queries import ALIAS_CACHE_SECONDS, RemoteQueries


class FakeClient:
    def __init__(self) -> None:
        self.calls = 0
        self.known: dict[str, str] = {}

    async def get_json(
        self, destination: str, path: str, query: Any = None, *, timeout: float = 60.0
    ) -> Any:
        self.calls += 1
        await asyncio.sleep(0.01)  # concurrent lookups overlap
        room_id = self.known.get(query["room_alias"])
        if room_id is None:
            raise FederationError(404, "M_NOT_FOUND", "no such alias")
        return {"room_id": room_id, "servers": [destination, "other.example"]}


async def test_alias_answers_are_cached_briefly() -> None:
    now = [1000.0]
    client = FakeClient()
    queries = RemoteQueries(client, clock=lambda: now[0])
    alias = "#room:remote.example"

    # Not found: an error each time (never cached), so a new alias is found at once.
    for _ in range(2):
        with pytest.raises(MatrixError) as e:
            await queries.query_directory(alias)
        assert e.value.status == 404
    assert client.calls == 2
    client.known[alias] = "!r:remote.example"

    answers = await asyncio.gather(*(queries.query_directory(alias) for _ in range(5)))
    assert answers == [("!r:remote.example", ["remote.example", "other.example"])] * 5
    assert client.calls == 3  # one request for five concurrent lookups
    answers[0][1].append("mutated by a caller")
    assert await queries.query_directory(alias) == (
        "!r:remote.example",
        ["remote.example", "other.example"],
    )
    assert client.calls == 3

    # After a minute the alias's server is asked again (it may point elsewhere now).
    client.known[alias] = "!moved:remote.example"
    now[0] += ALIAS_CACHE_SECONDS + 1
    assert (await queries.query_directory(alias))[0] == "!moved:remote.example"
    assert client.calls == 4


async def test_fresh_lookups_ask_the_server() -> None:
    client = FakeClient()
    queries = RemoteQueries(client, clock=lambda: 1000.0)
    alias = "#room:remote.example"
    client.known[alias] = "!old:remote.example"
    assert (await queries.query_directory(alias))[0] == "!old:remote.example"
    client.known[alias] = "!new:remote.example"
    # A join asks anew (and the answer replaces the cached one).
    assert (await queries.query_directory(alias, fresh=True))[0] == "!new:remote.example"
    assert (await queries.query_directory(alias))[0] == "!new:remote.example"
    assert client.calls == 2

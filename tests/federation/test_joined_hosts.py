"""JoinedHosts keeps one frozenset per distinct set of servers, not one per state group
(issue 20, memory), and still answers each group's own servers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import SimpleNamespace
from typing import Any

from starling.federation.sender.hosts import JoinedHosts


class _State:
    def __init__(self, groups: dict[int, dict[tuple[str, str], str]]) -> None:
        self.groups = groups

    async def get_state_ids_for_groups(self, groups: Iterable[int]) -> Mapping[int, Any]:
        return {g: self.groups[g] for g in groups}


class _Events:
    async def get_events(self, event_ids: Iterable[str], allow_rejected: bool = False) -> Any:
        return {e: SimpleNamespace(membership="join", content={}) for e in event_ids}


class _Members:
    async def get_joined_users(self, room_id: str) -> frozenset[str]:
        return frozenset()


async def test_groups_with_the_same_servers_share_one_set() -> None:
    local = {("m.room.member", "@a:here"): "$a", ("m.room.member", "@b:here"): "$b"}
    mixed = {**local, ("m.room.member", "@c:there"): "$c"}
    state = _State({1: local, 2: dict(local), 3: mixed, 4: dict(mixed)})
    hosts = JoinedHosts(state, _Events(), _Members())  # type: ignore[arg-type]
    out = await hosts.for_groups([1, 2, 3, 4])
    assert out[1] == frozenset({"here"}) and out[3] == frozenset({"here", "there"})
    assert out[1] is out[2] and out[3] is out[4]

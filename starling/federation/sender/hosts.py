"""Which servers must receive an event: the servers with joined members in the room around
it, i.e. in the state before or after it (so a server whose last user leaves or is kicked
still learns of it), plus the server of a user whose invite is rescinded (or who is kicked
or banned); never a server the room's server ACL (in that state) denies. Invites travel by
/invite, not in transactions.

A state group never changes, so the servers joined in it are cached per group: a run of
messages on the same state costs one lookup, and a batch of events costs at most one state
query and one event query for all the groups it has not seen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from starling.protocol.event import Event, StateKey
from starling.protocol.server_acl import ACL_EVENT_TYPE, server_allowed
from starling.storage.events import LruCache, StoredEvent


class StateGroups(Protocol):
    async def get_state_ids_for_groups(
        self, groups: Iterable[int]
    ) -> Mapping[int, Mapping[StateKey, str]]: ...


class EventLoader(Protocol):
    async def get_events(
        self, event_ids: Iterable[str], allow_rejected: bool = False
    ) -> Mapping[str, Event]: ...


class CurrentMembers(Protocol):
    async def get_joined_users(self, room_id: str) -> frozenset[str]: ...


def server_of(user_id: str) -> str:
    """The server name of a user ID (everything after the first colon)."""
    return user_id.partition(":")[2]


INTERNED_MAX = 4096


class JoinedHosts:
    def __init__(
        self,
        state: StateGroups,
        events: EventLoader,
        members: CurrentMembers,
        cache_size: int = 10_000,
    ) -> None:
        self._state = state
        self._events = events
        self._members = members
        self._by_group: LruCache[int, frozenset[str]] = LruCache(cache_size)
        # Most groups of a room share one set of servers (often just this one): one
        # frozenset per distinct set, not per group (issue 20: ~200 bytes a group).
        self._interned: dict[frozenset[str], frozenset[str]] = {}

    async def for_groups(self, groups: Iterable[int]) -> dict[int, frozenset[str]]:
        """The servers with a joined member in each state group (batched over misses)."""
        out: dict[int, frozenset[str]] = {}
        missing: list[int] = []
        for group in set(groups):
            hit = self._by_group.get(group)
            if hit is None:
                missing.append(group)
            else:
                out[group] = hit
        if not missing:
            return out
        states = await self._state.get_state_ids_for_groups(missing)
        wanted = {
            eid
            for state in states.values()
            for (etype, _), eid in state.items()
            if etype in ("m.room.member", ACL_EVENT_TYPE)
        }
        members = await self._events.get_events(wanted)
        for group in missing:
            state = states.get(group, {})
            acl_id = state.get((ACL_EVENT_TYPE, ""))
            acl = members.get(acl_id) if acl_id is not None else None
            joined: set[str] = set()
            for (etype, state_key), eid in state.items():
                ev = members.get(eid) if etype == "m.room.member" else None
                if ev is not None and ev.membership == "join":
                    joined.add(server_of(state_key))
            if acl is not None:
                # A server the room's ACL shuts out is sent nothing.
                joined = {h for h in joined if server_allowed(acl.content, h)}
            hosts = self._intern(frozenset(joined))
            self._by_group.put(group, hosts)
            out[group] = hosts
        return out

    def _intern(self, hosts: frozenset[str]) -> frozenset[str]:
        hit = self._interned.get(hosts)
        if hit is not None:
            return hit
        if len(self._interned) >= INTERNED_MAX:
            self._interned.clear()
        self._interned[hosts] = hosts
        return hosts

    async def for_events(self, events: Sequence[StoredEvent]) -> dict[str, frozenset[str]]:
        """event ID -> the servers that must receive it (this server not removed).

        Each event's meta has `state_before`/`state_after` group numbers; an
        event without them falls back to the room's current members.
        """
        groups: set[int] = set()
        for _, meta in events:
            for group in (meta.state_before, meta.state_after):
                if group is not None:
                    groups.add(group)
        by_group = await self.for_groups(groups)
        current: dict[str, frozenset[str]] = {}
        out: dict[str, frozenset[str]] = {}
        for event, meta in events:
            hosts: set[str] = set()
            known = False
            for group in (meta.state_before, meta.state_after):
                if group is not None:
                    hosts |= by_group.get(group, frozenset())
                    known = True
            if not known:
                if event.room_id not in current:
                    users = await self._members.get_joined_users(event.room_id)
                    current[event.room_id] = frozenset(server_of(u) for u in users)
                hosts |= current[event.room_id]
            if (
                event.type == "m.room.member"
                and event.membership in ("leave", "ban")
                and event.state_key
                and event.sender != event.state_key
            ):
                # A rescinded invite (or a kick or ban) reaches the target's server even
                # when none of its users is joined, as Synapse does. An invite itself
                # goes to the invitee's server by /invite only, never in a transaction
                # (that server may not know the room at all).
                hosts.add(server_of(event.state_key))
            out[event.event_id] = frozenset(h for h in hosts if h)
        return out

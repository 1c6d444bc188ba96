"""In-process stand-ins for the receipt pipeline's collaborators.

* `FakeKeyring` verifies event signatures with the keys of known `FakeServer`s, exactly
  as the keyring contract says (every server the room version requires).
* `FakeRemote` is a remote homeserver's federation API answering from a `Dag` (its view
  of the room): get_missing_events, state_ids, state, event_auth, event; it records the
  requests so tests can assert what was asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from starling.federation.errors import FederationError, SignatureVerifyError
from starling.protocol.event import Event
from starling.protocol.event_signing import (
    EventSigningError,
    required_signing_servers,
    verify_event_signature,
)
from starling.protocol.signing import SignatureError
from tests.federation.dag import Dag, FakeServer


class FakeKeyring:
    def __init__(self, servers: Mapping[str, FakeServer] | list[FakeServer]) -> None:
        if isinstance(servers, list):
            servers = {s.name: s for s in servers}
        self.servers = dict(servers)

    async def verify_event_signatures(self, event: Event) -> None:
        try:
            required = required_signing_servers(event.pdu, event.room_version)
        except EventSigningError as e:
            raise SignatureVerifyError(str(e)) from None
        for server_name in sorted(required):
            server = self.servers.get(server_name)
            if server is None:
                raise SignatureVerifyError(f"no keys for {server_name}")
            try:
                verify_event_signature(
                    event.pdu, server_name, server.key.key_id, server.verify_key, event.room_version
                )
            except SignatureError as e:
                raise SignatureVerifyError(str(e)) from None


class FakeRemote:
    """A FederationClient whose every destination answers from `dag`."""

    def __init__(self, dag: Dag) -> None:
        self.dag = dag
        self.calls: list[tuple[str, str]] = []
        self.hidden: set[str] = set()  # event IDs the remote pretends not to have
        self.withheld: set[str] = set()  # left out of get_missing_events answers only
        self.extra: list[Event] = []  # slipped into every backfill/get_missing_events answer
        self.state_asked_at: list[str] = []  # the event_id of each state/state_ids request

    def _event(self, eid: str) -> Event:
        ev = self.dag.events.get(eid)
        if ev is None or eid in self.hidden:
            raise FederationError(404, "M_NOT_FOUND", "no such event")
        return ev

    async def get_json(
        self,
        destination: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        *,
        timeout: float = 60.0,
    ) -> Any:
        parts = [unquote(p) for p in path.split("/")]
        kind = parts[4]
        self.calls.append((kind, path))
        if kind in ("state_ids", "state"):
            assert query is not None
            self.state_asked_at.append(query["event_id"])
            ev = self._event(query["event_id"])
            state = self.dag.state_before(ev)
            chain = self.dag.auth_chain(state.values())
            if kind == "state_ids":
                return {
                    "pdu_ids": list(state.values()),
                    "auth_chain_ids": [e.event_id for e in chain],
                }
            return {
                "pdus": [dict(e.pdu) for e in self.dag.state_events(state)],
                "auth_chain": [dict(e.pdu) for e in chain],
            }
        if kind == "event_auth":
            ev = self._event(parts[6])
            return {"auth_chain": [dict(e.pdu) for e in self.dag.auth_chain([ev.event_id])]}
        if kind == "backfill":
            assert query is not None
            limit = int(query["limit"])
            frontier = [e for e in query["v"] if e in self.dag.events and e not in self.hidden]
            seen: set[str] = set()
            out: list[Event] = []
            while frontier and len(out) < limit:
                level = sorted(
                    {self.dag.events[e] for e in frontier if e not in seen},
                    key=lambda e: (-e.depth, e.event_id),
                )
                seen.update(e.event_id for e in level)
                frontier = []
                for ev in level[: limit - len(out)]:
                    out.append(ev)
                    frontier.extend(
                        p
                        for p in ev.prev_event_ids
                        if p in self.dag.events and p not in self.hidden
                    )
            out.extend(self.extra)
            return {"origin": "x", "origin_server_ts": 0, "pdus": [dict(e.pdu) for e in out]}
        if kind == "event":
            ev = self._event(parts[5])
            return {"origin": "x", "origin_server_ts": 0, "pdus": [dict(ev.pdu)]}
        raise FederationError(404, "M_UNRECOGNIZED", path)

    async def post_json(
        self, destination: str, path: str, body: Any, *, timeout: float = 60.0
    ) -> Any:
        kind = path.split("/")[4]
        self.calls.append((kind, path))
        if kind != "get_missing_events":
            raise FederationError(404, "M_UNRECOGNIZED", path)
        earliest = set(body["earliest_events"])
        limit = body["limit"]
        min_depth = body["min_depth"]
        out: list[Event] = []
        seen = set(body["latest_events"])
        frontier = [p for eid in body["latest_events"] for p in self._event(eid).prev_event_ids]
        while frontier and len(out) < limit:
            eid = frontier.pop(0)
            if eid in seen or eid in earliest or eid in self.hidden or eid not in self.dag.events:
                continue
            seen.add(eid)
            ev = self.dag.events[eid]
            if ev.depth < min_depth or eid in self.withheld:
                continue
            out.append(ev)
            frontier.extend(ev.prev_event_ids)
        out.extend(self.extra)
        return {"events": [dict(e.pdu) for e in out]}

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.calls if k == kind)

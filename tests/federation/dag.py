"""Hand-built signed room DAGs for federation tests.

A `FakeServer` is a remote homeserver reduced to its name and signing key. A `Dag` builds
one room's events the way real servers would: each event is hashed and signed by its
sender's server, prev_events default to the DAG's current forward extremities, auth_events
are selected from the state before the event exactly as the spec's auth-events selection
says, and the state after every event is tracked so tests can ask for it (and hand it to
a fake remote's /state_ids). Every field can be overridden to build the broken events the
receipt checks must catch (forged signatures, wrong auth events, foreign rooms...).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starling.protocol.auth_rules import auth_types_for_event
from starling.protocol.event import Event, StateKey
from starling.protocol.event_signing import hash_and_sign_event, sign_event
from starling.protocol.hashing import compute_event_id, room_id_for_create_event
from starling.protocol.room_versions import EventFormat, RedactionRules, RoomVersion
from starling.protocol.signing import SigningKey, VerifyKey

CREATE: StateKey = ("m.room.create", "")
_ts = itertools.count(1_700_000_000_000)


@dataclass
class FakeServer:
    """A remote homeserver's identity: its name and the key it signs with."""

    name: str
    key: SigningKey = field(default_factory=lambda: SigningKey.generate("a_fake"))

    @property
    def verify_key(self) -> VerifyKey:
        return VerifyKey.from_base64(self.key.public_key_base64)

    def user(self, localpart: str) -> str:
        return f"@{localpart}:{self.name}"


class Dag:
    """One room's event graph, built event by event."""

    def __init__(
        self,
        room_version: RoomVersion,
        servers: Iterable[FakeServer],
        *,
        room_id: str | None = None,
    ) -> None:
        self.room_version = room_version
        self.servers = {s.name: s for s in servers}
        self.events: dict[str, Event] = {}
        self.state_after: dict[str, dict[StateKey, str]] = {}
        self.extremities: list[str] = []
        self.room_id = room_id or f"!dag{next(_ts)}:{next(iter(self.servers))}"
        self._counter = itertools.count()

    # --- reading -------------------------------------------------------------------------

    @property
    def create_event(self) -> Event:
        return self.events[self.state_after[self.extremities[0]][CREATE]]

    def state_before(self, event: Event) -> dict[StateKey, str]:
        """The state before `event` (its prev events must not fork state)."""
        merged: dict[StateKey, str] = {}
        for prev in event.prev_event_ids:
            merged.update(self.state_after[prev])
        return merged

    def state_events(self, state: Mapping[StateKey, str]) -> list[Event]:
        return [self.events[eid] for eid in state.values()]

    def current_state(self) -> dict[StateKey, str]:
        merged: dict[StateKey, str] = {}
        for eid in self.extremities:
            merged.update(self.state_after[eid])
        return merged

    def auth_chain(self, event_ids: Iterable[str]) -> list[Event]:
        """Every event in the auth chains of `event_ids`, oldest first."""
        seen: set[str] = set()
        todo = list(event_ids)
        while todo:
            eid = todo.pop()
            for aid in self.events[eid].auth_event_ids:
                if aid not in seen:
                    seen.add(aid)
                    todo.append(aid)
        if not self.room_version.create_event_in_auth_events and self.extremities:
            seen.add(self.create_event.event_id)
        return sorted((self.events[e] for e in seen), key=lambda e: (e.depth, e.event_id))

    # --- building ------------------------------------------------------------------------

    def create(self, creator: str, extra_content: Mapping[str, Any] | None = None) -> Event:
        content: dict[str, Any] = {"room_version": self.room_version.identifier}
        if self.room_version.create_event_has_creator:
            content["creator"] = creator
        content.update(extra_content or {})
        event = self.add(creator, "m.room.create", content, state_key="", prev=[], auth=[])
        return event

    def join(self, user: str, **kw: Any) -> Event:
        return self.add(user, "m.room.member", {"membership": "join"}, state_key=user, **kw)

    def standard_room(self, creator: str, *, join_rule: str = "public") -> list[Event]:
        """create, creator's join, power levels (creator 100), join rules."""
        return [
            self.create(creator),
            self.join(creator),
            self.add(creator, "m.room.power_levels", self.power_levels(creator), state_key=""),
            self.add(creator, "m.room.join_rules", {"join_rule": join_rule}, state_key=""),
        ]

    def power_levels(self, creator: str, **extra: Any) -> dict[str, Any]:
        """Power levels content giving `creator` 100 (room 12 creators are not listed:
        their power is infinite and listing them is invalid)."""
        users = {} if self.room_version.privileged_creators else {creator: 100}
        return {"users": users, **extra}

    def message(self, sender: str, body: str = "hi", **kw: Any) -> Event:
        return self.add(sender, "m.room.message", {"msgtype": "m.text", "body": body}, **kw)

    def add(
        self,
        sender: str,
        event_type: str,
        content: dict[str, Any],
        *,
        state_key: str | None = None,
        prev: Sequence[str] | None = None,
        auth: Sequence[str] | None = None,
        extra: Mapping[str, Any] | None = None,
        signer: FakeServer | None = None,
        track: bool = True,
    ) -> Event:
        """Build, hash and sign an event; by default it joins the DAG (extremities and
        state move on). `prev`/`auth` override prev_events/auth_events; `extra` adds or
        replaces top-level keys before hashing; `signer` signs instead of the sender's
        server; `track=False` builds without adding it to the DAG."""
        rv = self.room_version
        prev_ids = list(self.extremities) if prev is None else list(prev)
        before: dict[StateKey, str] = {}
        for p in prev_ids:
            before.update(self.state_after.get(p, {}))
        if auth is None:
            keys = auth_types_for_event(event_type, state_key, sender, content, rv)
            auth_ids = [before[k] for k in keys if k in before]
        else:
            auth_ids = list(auth)
        depth = max((self.events[p].depth for p in prev_ids if p in self.events), default=0) + 1
        pdu: dict[str, Any] = {
            "type": event_type,
            "sender": sender,
            "content": content,
            "depth": depth,
            "origin_server_ts": next(_ts),
            "prev_events": prev_ids,
            "auth_events": auth_ids,
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        is_create = event_type == "m.room.create"
        if not (is_create and rv.room_id_from_create_event):
            pdu["room_id"] = self.room_id
        server = signer or self.servers[sender.partition(":")[2]]
        if rv.event_format is EventFormat.V1:
            pdu["event_id"] = f"$e{next(self._counter)}x{next(_ts)}:{server.name}"
            pdu["origin"] = server.name
            pdu["prev_events"] = [[p, self._hashes(p)] for p in prev_ids]
            pdu["auth_events"] = [[a, self._hashes(a)] for a in auth_ids]
        elif rv.redaction is not RedactionRules.V11:
            pdu["origin"] = server.name
        pdu.update(extra or {})
        signed = hash_and_sign_event(pdu, server.name, server.key, rv)
        event = Event(signed, compute_event_id(signed, rv), rv)
        if is_create and rv.room_id_from_create_event:
            self.room_id = room_id_for_create_event(signed, rv)
            event = Event(signed, event.event_id, rv)
        if track:
            self.track(event, before)
        return event

    def track(self, event: Event, before: Mapping[StateKey, str] | None = None) -> None:
        """Add an already-built event to the DAG."""
        if before is None:
            before = {}
            for p in event.prev_event_ids:
                before.update(self.state_after.get(p, {}))
        self.events[event.event_id] = event
        after = dict(before)
        if event.state_key is not None:
            after[event.state_map_key] = event.event_id
        self.state_after[event.event_id] = after
        self.extremities = [e for e in self.extremities if e not in event.prev_event_ids]
        self.extremities.append(event.event_id)

    def _hashes(self, event_id: str) -> dict[str, Any]:
        ev = self.events.get(event_id)
        hashes = ev.pdu.get("hashes") if ev is not None else None
        return dict(hashes) if isinstance(hashes, dict) else {}


def cosign(event: Event, server: FakeServer) -> Event:
    """`event` with `server`'s signature added (e.g. a restricted join's authoriser)."""
    pdu = sign_event(event.pdu, server.name, server.key, event.room_version)
    return Event(pdu, event.event_id, event.room_version)


def pdu_json(event: Event) -> dict[str, Any]:
    """The event as it travels over federation (a copy the receiver may not mutate)."""
    return dict(event.pdu)

"""A synthetic state resolution input: a big room that forked, for benchmarks.

`generate()` builds a room of about `n_state` state events (mostly joined members, a
mainline of power-levels changes, some custom state), then two forks that together add
`n_conflicted` conflicted events: display name changes on both sides, kicks and bans on
one side against the same users' own changes on the other, custom state set twice, and
concurrent power-levels edits. Every event is valid under the auth rules at the place it
was created. The output is the state resolution fixture format (events + state sets as
event ID lists), so the same JSON feeds `resolve_state`, the debug command and Synapse.

    .venv/bin/python -m benchmarks.state_res_input            # time resolve_state
    .venv/bin/python -m benchmarks.state_res_input --write x.json
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import time
from typing import Any

from starling.protocol.auth_rules import auth_types_for_event
from starling.protocol.event import Event, StateKey
from starling.protocol.room_versions import EventFormat, RoomVersion, get_room_version

SERVER = "example.com"
ADMIN = f"@admin:{SERVER}"


class _Room:
    def __init__(self, room_version: RoomVersion, seed: int) -> None:
        self.rv = room_version
        self.seed = seed
        self.counter = 0
        self.clock = 1_700_000_000_000
        self.room_id = f"!bench:{SERVER}"
        self.pdus: list[dict[str, Any]] = []
        self.depth: dict[str, int] = {}

    def _event_id(self) -> str:
        self.counter += 1
        digest = hashlib.sha256(f"{self.seed}:{self.counter}".encode()).digest()
        return "$" + base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def add(
        self,
        state: dict[StateKey, str],
        prev: list[str],
        sender: str,
        etype: str,
        state_key: str | None,
        content: dict[str, Any],
    ) -> str:
        """Append an event whose auth events come from `state`; update `state`."""
        rv = self.rv
        event_id = self._event_id()
        keys = auth_types_for_event(etype, state_key, sender, content, rv)
        auth = [state[k] for k in keys if k in state]
        refs: Any
        if rv.event_format is EventFormat.V1:
            refs = ([[p, {}] for p in prev], [[a, {}] for a in auth])
        else:
            refs = (list(prev), auth)
        depth = 1 + max((self.depth[p] for p in prev), default=0)
        self.depth[event_id] = depth
        pdu: dict[str, Any] = {
            "event_id": event_id,
            "type": etype,
            "sender": sender,
            "content": content,
            "prev_events": refs[0],
            "auth_events": refs[1],
            "depth": depth,
            "origin_server_ts": self.clock,
        }
        self.clock += 7
        if etype == "m.room.create" and rv.room_id_from_create_event:
            self.room_id = "!" + event_id[1:]
        else:
            pdu["room_id"] = self.room_id
        if state_key is not None:
            pdu["state_key"] = state_key
            state[(etype, state_key)] = event_id
        self.pdus.append(pdu)
        return event_id


def generate(
    n_state: int = 10_000,
    n_conflicted: int = 500,
    room_version: str = "11",
    seed: int = 0,
) -> dict[str, Any]:
    """The fixture-format input (without "expected") described in the module docstring."""
    rv = get_room_version(room_version)
    rng = random.Random(seed)
    room = _Room(rv, seed)
    state: dict[StateKey, str] = {}
    mods = [f"@mod{i}:{SERVER}" for i in range(5)]
    users_levels: dict[str, int] = {} if rv.privileged_creators else {ADMIN: 100}
    users_levels.update(dict.fromkeys(mods, 50))

    last = [""]

    def add(
        sender: str,
        etype: str,
        key: str | None,
        content: dict[str, Any],
        st: dict[StateKey, str] = state,
        prev: list[str] | None = None,
    ) -> str:
        event_id = room.add(
            st, prev if prev is not None else [last[0]], sender, etype, key, content
        )
        last[0] = event_id
        return event_id

    create_content: dict[str, Any] = {"room_version": room_version}
    if rv.create_event_has_creator:
        create_content["creator"] = ADMIN
    last[0] = room.add(state, [], ADMIN, "m.room.create", "", create_content)
    add(ADMIN, "m.room.member", ADMIN, {"membership": "join"})
    add(ADMIN, "m.room.power_levels", "", {"users": dict(users_levels)})
    add(ADMIN, "m.room.join_rules", "", {"join_rule": "public"})
    add(ADMIN, "m.room.topic", "", {"topic": "benchmark"})
    for mod in mods:
        add(mod, "m.room.member", mod, {"membership": "join"})

    # Keys each fork will touch: 1 power levels key plus n_conflicted/2 - 1 others.
    n_keys = max(n_conflicted // 2 - 1, 4)
    n_custom = n_keys // 5
    n_members_conflicted = n_keys - n_custom
    n_members = max(n_state - len(state) - n_custom - 40, n_members_conflicted + 2)
    members = [f"@user{i}:{SERVER}" for i in range(n_members)]
    for i, user in enumerate(members):
        add(user, "m.room.member", user, {"membership": "join", "displayname": f"u{i}"})
        if i % 500 == 499:  # a mainline of power levels changes across history
            users_levels[user] = 10
            add(ADMIN, "m.room.power_levels", "", {"users": dict(users_levels)})
    custom_keys = [f"key{i}" for i in range(n_custom)]
    for key in custom_keys:
        add(rng.choice(mods), "org.example.state", key, {"v": 0})
    while len(state) < n_state:
        add(rng.choice(mods), "org.example.filler", f"f{len(state)}", {"v": 0})

    fork_point = last[0]
    base = dict(state)
    state_a = dict(base)
    state_b = dict(base)
    last_a = [fork_point]
    last_b = [fork_point]

    def on(side: str, sender: str, etype: str, key: str | None, content: dict[str, Any]) -> None:
        st, lst = (state_a, last_a) if side == "a" else (state_b, last_b)
        lst[0] = room.add(st, [lst[0]], sender, etype, key, content)

    # Concurrent power levels: the admin promotes a user on one side, a moderator
    # promotes another on the other.
    on("a", ADMIN, "m.room.power_levels", "", {"users": {**users_levels, members[0]: 50}})
    on("b", mods[0], "m.room.power_levels", "", {"users": {**users_levels, members[1]: 20}})

    targets = rng.sample(members[2:], n_members_conflicted)
    for i, user in enumerate(targets):
        kind = i % 10
        if kind < 6:  # both sides change the display name
            on("a", user, "m.room.member", user, {"membership": "join", "displayname": "a"})
            on("b", user, "m.room.member", user, {"membership": "join", "displayname": "b"})
        elif kind < 8:  # kicked on one side, renamed on the other
            on("a", rng.choice(mods), "m.room.member", user, {"membership": "leave"})
            on("b", user, "m.room.member", user, {"membership": "join", "displayname": "b"})
        elif kind < 9:  # banned on one side, left on the other
            on("b", rng.choice(mods), "m.room.member", user, {"membership": "ban"})
            on("a", user, "m.room.member", user, {"membership": "leave"})
        else:  # left on one side, renamed on the other
            on("a", user, "m.room.member", user, {"membership": "leave"})
            on("b", user, "m.room.member", user, {"membership": "join", "displayname": "b"})
    for key in custom_keys:
        on("a", rng.choice(mods), "org.example.state", key, {"v": 1})
        on("b", rng.choice(mods), "org.example.state", key, {"v": 2})

    return {
        "name": f"synthetic-{n_state}-state-{n_conflicted}-conflicted",
        "room_version": room_version,
        "events": room.pdus,
        "state_sets": [sorted(state_a.values()), sorted(state_b.values())],
    }


def load(
    data: dict[str, Any],
) -> tuple[RoomVersion, list[dict[StateKey, str]], dict[str, Event]]:
    """(room version, state sets, events) ready for `resolve_state`."""
    from starling.protocol.state_res import state_set_from_ids

    rv = get_room_version(data["room_version"])
    events = {p["event_id"]: Event(p, p["event_id"], rv) for p in data["events"]}
    return rv, [state_set_from_ids(ids, events) for ids in data["state_sets"]], events


def main() -> None:
    from starling.protocol.state_res import resolve_state

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=int, default=10_000)
    parser.add_argument("--conflicted", type=int, default=500)
    parser.add_argument("--room-version", default="11")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--write", metavar="PATH", help="write the input as JSON and exit")
    args = parser.parse_args()
    data = generate(args.state, args.conflicted, args.room_version, args.seed)
    if args.write:
        with open(args.write, "w", encoding="utf-8") as f:
            json.dump(data, f)
        return
    rv, state_sets, events = load(data)
    conflicted = {k for k in state_sets[0].keys() | state_sets[1].keys()}
    conflicted = {k for k in conflicted if state_sets[0].get(k) != state_sets[1].get(k)}
    print(
        f"room {rv.identifier}: {len(events)} events, "
        f"{len(state_sets[0])}/{len(state_sets[1])} state, {len(conflicted)} conflicted keys"
    )
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        result = resolve_state(rv, state_sets, events)
        times.append(time.perf_counter() - start)
    print(
        f"resolve_state: best {min(times) * 1000:.1f} ms, median "
        f"{sorted(times)[len(times) // 2] * 1000:.1f} ms; {len(result)} keys"
    )


if __name__ == "__main__":
    main()

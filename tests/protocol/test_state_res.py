"""State resolution v1, v2 and v2.1: named scenarios (JSON fixtures), order independence,
and the edges of the API.

The fixtures under fixtures/state_res/ were produced by the `Dag` builder below from the
`SCENARIOS` table (`python -m tests.protocol.test_state_res` rewrites them); the expected
states in that table were written by hand from each scenario's story, not read back from
our resolver.
"""

from __future__ import annotations

import heapq
import json
import sys
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from starling.protocol.auth_rules import auth_types_for_event
from starling.protocol.event import Event, StateKey
from starling.protocol.room_versions import EventFormat, RoomVersion, get_room_version
from starling.protocol.state_res import (
    MissingEventsError,
    auth_chain,
    resolve_state,
    state_set_from_ids,
)

FIXTURES = Path(__file__).parent / "fixtures" / "state_res"

ALICE = "@alice:example.com"
BOB = "@bob:example.com"
CHARLIE = "@charlie:example.com"
EVELYN = "@evelyn:example.com"
ZARA = "@zara:example.com"

JOIN = {"membership": "join"}
LEAVE = {"membership": "leave"}
BAN = {"membership": "ban"}

CREATE = "m.room.create"
MEMBER = "m.room.member"
POWER = "m.room.power_levels"
JOIN_RULES = "m.room.join_rules"
TOPIC = "m.room.topic"
MESSAGE = "m.room.message"


# --- loading fixtures -------------------------------------------------------------------


def load_fixture(
    data: Mapping[str, Any],
) -> tuple[RoomVersion, list[dict[StateKey, str]], dict[str, Event]]:
    """(room version, state sets, events) from the fixture format that
    `starling debug resolve-state --trust-ids` also reads."""
    room_version = get_room_version(data["room_version"])
    events = {e["event_id"]: Event(e, e["event_id"], room_version) for e in data["events"]}
    state_sets = [state_set_from_ids(ids, events) for ids in data["state_sets"]]
    return room_version, state_sets, events


def expected_state(data: Mapping[str, Any]) -> dict[StateKey, str]:
    return {(t, k): e for t, k, e in data["expected"]}


def fixture_files() -> list[Path]:
    return sorted(FIXTURES.glob("*.json"))


# --- the DAG builder --------------------------------------------------------------------


class Dag:
    """Builds a room's events compactly, the way Synapse's state tests describe them.

    Events are named by short node IDs ("PA", "T1") that become event IDs
    "$PA:example.com". Each event's auth events are chosen from the state before it
    (auth events selection), the state before a merge is resolved with the room's own
    algorithm, timestamps follow creation order and depth follows prev_events.
    """

    def __init__(self, room_version: str) -> None:
        self.room_version = get_room_version(room_version)
        rv = self.room_version
        self.room_id = (
            "!CREATE:example.com" if rv.room_id_from_create_event else "!room:example.com"
        )
        self.events: dict[str, Event] = {}
        self.pdus: list[dict[str, Any]] = []
        self.state_after: dict[str, dict[StateKey, str]] = {}
        self.clock = 0

    @staticmethod
    def eid(node: str) -> str:
        return f"${node}:example.com"

    def add(
        self,
        node: str,
        sender: str,
        etype: str,
        state_key: str | None,
        content: dict[str, Any],
        prev: Sequence[str],
        state_before: Mapping[StateKey, str] | None = None,
    ) -> str:
        rv = self.room_version
        event_id = self.eid(node)
        if state_before is None:
            states = [self.state_after[p] for p in prev]
            if not states:
                state_before = {}
            elif len(states) == 1:
                state_before = states[0]
            else:
                state_before = resolve_state(rv, states, self.events)
        keys = auth_types_for_event(etype, state_key, sender, content, rv)
        auth = [state_before[k] for k in keys if k in state_before]
        prev_ids = [self.eid(p) for p in prev]
        depth = 1 + max((self.events[p].depth for p in prev_ids), default=0)

        def refs(ids: list[str]) -> list[Any]:
            if rv.event_format is EventFormat.V1:
                return [[i, {}] for i in ids]
            return list(ids)

        pdu: dict[str, Any] = {
            "event_id": event_id,
            "type": etype,
            "sender": sender,
            "content": content,
            "prev_events": refs(prev_ids),
            "auth_events": refs(auth),
            "depth": depth,
            "origin_server_ts": self.clock,
        }
        if not (rv.room_id_from_create_event and etype == CREATE):
            pdu["room_id"] = self.room_id
        if state_key is not None:
            pdu["state_key"] = state_key
        self.clock += 1
        event = Event(pdu, event_id, rv)
        self.events[event_id] = event
        self.pdus.append(pdu)
        after = dict(state_before)
        if state_key is not None:
            after[(etype, state_key)] = event_id
        self.state_after[node] = after
        return event_id

    def build(self, nodes: Sequence[tuple[Any, ...]], edges: Sequence[Sequence[str]]) -> None:
        """Add `nodes` ((node, sender, type, state_key, content) tuples) with prev_events
        from `edges` (chains newest first: ["END", "B", "A"] means END -> B -> A), in a
        topological order that breaks ties by node name."""
        spec = {n[0]: n for n in nodes}
        prevs: dict[str, set[str]] = {n: set() for n in spec}
        for chain in edges:
            for newer, older in pairwise(chain):
                prevs[newer].add(older)
        waiting = {n: len(p) for n, p in prevs.items()}
        later: dict[str, list[str]] = {}
        for n, ps in prevs.items():
            for p in ps:
                later.setdefault(p, []).append(n)
        ready = [n for n, c in waiting.items() if c == 0]
        heapq.heapify(ready)
        while ready:
            node = heapq.heappop(ready)
            _, sender, etype, state_key, content = spec[node]
            self.add(node, sender, etype, state_key, content, sorted(prevs[node]))
            for n in later.get(node, ()):
                waiting[n] -= 1
                if waiting[n] == 0:
                    heapq.heappush(ready, n)

    def fixture(
        self,
        name: str,
        state_sets: Sequence[Mapping[StateKey, str]],
        expected: Mapping[StateKey, str],
    ) -> dict[str, Any]:
        return {
            "name": name,
            "room_version": self.room_version.identifier,
            "events": self.pdus,
            "state_sets": [sorted(s.values()) for s in state_sets],
            "expected": sorted([t, k, e] for (t, k), e in expected.items()),
        }


def initial_nodes(room_version: str, users: dict[str, int] | None = None) -> list[tuple[Any, ...]]:
    """The room every Synapse-style scenario starts from: Alice creates it (admin, or
    creator in room 12), public join rule, Bob, Charlie and Zara joined."""
    rv = get_room_version(room_version)
    create_content: dict[str, Any] = {"room_version": room_version}
    if rv.create_event_has_creator:
        create_content["creator"] = ALICE
    alice_level = pl(users or {ALICE: 100}, room_version)["users"]
    return [
        ("CREATE", ALICE, CREATE, "", create_content),
        ("IMA", ALICE, MEMBER, ALICE, JOIN),
        ("IPOWER", ALICE, POWER, "", {"users": alice_level}),
        ("IJR", ALICE, JOIN_RULES, "", {"join_rule": "public"}),
        ("IMB", BOB, MEMBER, BOB, JOIN),
        ("IMC", CHARLIE, MEMBER, CHARLIE, JOIN),
        ("IMZ", ZARA, MEMBER, ZARA, JOIN),
        ("START", ZARA, MESSAGE, None, {}),
        ("END", ZARA, MESSAGE, None, {}),
    ]


INITIAL_EDGES = ["START", "IMZ", "IMC", "IMB", "IJR", "IPOWER", "IMA", "CREATE"]


def synapse_style(
    name: str,
    room_version: str,
    nodes: Sequence[tuple[Any, ...]],
    edges: Sequence[Sequence[str]],
    expected_nodes: Sequence[str],
) -> dict[str, Any]:
    """A scenario in the shape of Synapse's tests/state/test_v2.py: the state at END
    (resolving the states after END's prev events) is the state at START with the keys of
    `expected_nodes` set to those events, and nothing else changed."""
    dag = Dag(room_version)
    dag.build([*initial_nodes(room_version), *nodes], [INITIAL_EDGES, *edges])
    end = dag.events[dag.eid("END")]
    node_of = {dag.eid(n): n for n in dag.state_after}
    state_sets = [dag.state_after[node_of[p]] for p in end.prev_event_ids]
    expected = dict(dag.state_after["START"])
    for node in expected_nodes:
        event = dag.events[dag.eid(node)]
        expected[event.state_map_key] = event.event_id
    return dag.fixture(name, state_sets, expected)


def pl(users: dict[str, int], room_version: str, **extra: Any) -> dict[str, Any]:
    """Power levels content; room 12 never lists the creator (Alice)."""
    if get_room_version(room_version).privileged_creators:
        users = {u: v for u, v in users.items() if u != ALICE}
    return {"users": users, **extra}


# --- the scenarios --------------------------------------------------------------------


def scenario_ban_vs_power_levels(rv: str) -> dict[str, Any]:
    # Alice bans Bob while Bob, concurrently, re-sends the power levels: the ban wins
    # because Alice's events sort first, and Bob's power levels fail once he is banned.
    nodes = [
        ("PA", ALICE, POWER, "", pl({ALICE: 100, BOB: 50}, rv)),
        ("MA", ALICE, MEMBER, ALICE, JOIN),
        ("MB", ALICE, MEMBER, BOB, BAN),
        ("PB", BOB, POWER, "", pl({ALICE: 100, BOB: 50}, rv)),
    ]
    edges = [["END", "MB", "MA", "PA", "START"], ["END", "PB", "PA"]]
    return synapse_style("ban-vs-power-levels", rv, nodes, edges, ["PA", "MA", "MB"])


def scenario_join_rule_evasion(rv: str) -> dict[str, Any]:
    # Evelyn joins concurrently with Alice closing the room: the join rule goes first.
    nodes = [
        ("JR", ALICE, JOIN_RULES, "", {"join_rule": "invite"}),
        ("ME", EVELYN, MEMBER, EVELYN, JOIN),
    ]
    edges = [["END", "JR", "START"], ["END", "ME", "START"]]
    return synapse_style("join-rule-evasion", rv, nodes, edges, ["JR"])


def scenario_offtopic_power_levels(rv: str) -> dict[str, Any]:
    # Charlie demotes himself after Bob promoted him; a fork that only knows Alice's
    # power levels does not undo the chain.
    nodes = [
        ("PA", ALICE, POWER, "", pl({ALICE: 100, BOB: 50}, rv)),
        ("PB", BOB, POWER, "", pl({ALICE: 100, BOB: 50, CHARLIE: 50}, rv)),
        ("PC", CHARLIE, POWER, "", pl({ALICE: 100, BOB: 50, CHARLIE: 0}, rv)),
    ]
    edges = [["END", "PC", "PB", "PA", "START"], ["END", "PA"]]
    return synapse_style("offtopic-power-levels", rv, nodes, edges, ["PC"])


def scenario_topic_basic(rv: str) -> dict[str, Any]:
    # Alice demotes Bob while Bob re-sends the power levels and sets a topic: Alice's
    # power levels win and Bob's topic is dropped.
    nodes = [
        ("T1", ALICE, TOPIC, "", {}),
        ("PA1", ALICE, POWER, "", pl({ALICE: 100, BOB: 50}, rv)),
        ("T2", ALICE, TOPIC, "", {}),
        ("PA2", ALICE, POWER, "", pl({ALICE: 100, BOB: 0}, rv)),
        ("PB", BOB, POWER, "", pl({ALICE: 100, BOB: 50}, rv)),
        ("T3", BOB, TOPIC, "", {}),
    ]
    edges = [["END", "PA2", "T2", "PA1", "T1", "START"], ["END", "T3", "PB", "PA1"]]
    return synapse_style("topic-basic", rv, nodes, edges, ["PA2", "T2"])


def scenario_topic_reset(rv: str) -> dict[str, Any]:
    # Bob's topic is undone when the fork that bans him is merged with one that never
    # saw his topic: the ban wins and the topic returns to Alice's.
    nodes = [
        ("T1", ALICE, TOPIC, "", {}),
        ("PA", ALICE, POWER, "", pl({ALICE: 100, BOB: 50}, rv)),
        ("T2", BOB, TOPIC, "", {}),
        ("MB", ALICE, MEMBER, BOB, BAN),
    ]
    edges = [["END", "MB", "T2", "PA", "T1", "START"], ["END", "T1"]]
    return synapse_style("topic-reset", rv, nodes, edges, ["T1", "MB", "PA"])


def scenario_topic(rv: str) -> dict[str, Any]:
    # Like topic-basic, but both forks merged once already (at MZ1) and Alice sets a
    # later topic: hers stands and so do her power levels.
    nodes = [
        ("T1", ALICE, TOPIC, "", {}),
        ("PA1", ALICE, POWER, "", pl({ALICE: 100, BOB: 50}, rv)),
        ("T2", ALICE, TOPIC, "", {}),
        ("PA2", ALICE, POWER, "", pl({ALICE: 100, BOB: 0}, rv)),
        ("PB", BOB, POWER, "", pl({ALICE: 100, BOB: 50}, rv)),
        ("T3", BOB, TOPIC, "", {}),
        ("MZ1", ZARA, MESSAGE, None, {}),
        ("T4", ALICE, TOPIC, "", {}),
    ]
    edges = [
        ["END", "T4", "MZ1", "PA2", "T2", "PA1", "T1", "START"],
        ["END", "MZ1", "T3", "PB", "PA1"],
    ]
    return synapse_style("topic", rv, nodes, edges, ["T4", "PA2"])


def scenario_mainline_sort(rv: str) -> dict[str, Any]:
    # T3 wins over the later T4 because it is based on the newer power levels (PA2);
    # without mainline ordering the timestamp would pick T4.
    nodes = [
        ("T1", ALICE, TOPIC, "", {}),
        ("PA1", ALICE, POWER, "", pl({ALICE: 100, BOB: 50}, rv)),
        ("T2", ALICE, TOPIC, "", {}),
        ("PA2", ALICE, POWER, "", pl({ALICE: 100, BOB: 50}, rv, events={POWER: 100})),
        ("PB", BOB, POWER, "", pl({ALICE: 100, BOB: 50}, rv)),
        ("T3", BOB, TOPIC, "", {}),
        ("T4", ALICE, TOPIC, "", {}),
    ]
    edges = [
        ["END", "T3", "PA2", "T2", "PA1", "T1", "START"],
        ["END", "T4", "PB", "PA1"],
    ]
    return synapse_style("mainline-sort", rv, nodes, edges, ["T3", "PA2"])


def msc4297_problem_a(rv: str) -> dict[str, Any]:
    """MSC4297 problem A: both forks agree Alice has left, but one fork's state (from a
    partial sync) carries her older join rules. v2 replays both join rules on top of the
    unconflicted "Alice left" and drops them all; v2.1 replays them on their own auth
    events and keeps the newer one."""
    dag = Dag(rv)
    dag.build(
        [
            *initial_nodes(rv)[:5],
            ("JR2", ALICE, JOIN_RULES, "", {"join_rule": "invite"}),
            ("LA", ALICE, MEMBER, ALICE, LEAVE),
        ],
        [["LA", "JR2", "IMB", "IJR", "IPOWER", "IMA", "CREATE"]],
    )
    correct = dag.state_after["LA"]
    stale = {**correct, (JOIN_RULES, ""): dag.eid("IJR")}
    expected = dict(correct)
    if not dag.room_version.privileged_creators:
        del expected[(JOIN_RULES, "")]
    name = "msc4297-problem-a-" + ("v2.1" if dag.room_version.privileged_creators else "v2")
    return dag.fixture(name, [correct, stale], expected)


def msc4297_problem_b(rv: str) -> dict[str, Any]:
    """MSC4297 problem B: Alice promotes Bob, Bob promotes Charlie, Charlie sets a topic
    and edits the power levels. One fork's state (from a partial sync) has Alice's first
    power levels but Charlie's topic, so the promotions in between are in both auth
    chains and not in the auth difference. v2 replays only the two conflicted power
    levels and resets to Alice's; v2.1 adds the events between them and keeps Charlie's."""
    nodes = [
        *initial_nodes(rv)[:6],
        ("PL1", ALICE, POWER, "", pl({ALICE: 100, BOB: 50}, rv)),
        ("PL2", BOB, POWER, "", pl({ALICE: 100, BOB: 50, CHARLIE: 50}, rv)),
        ("T", CHARLIE, TOPIC, "", {"topic": "promoted"}),
        ("PL3", CHARLIE, POWER, "", pl({ALICE: 100, BOB: 50, CHARLIE: 50}, rv, events={TOPIC: 50})),
    ]
    dag = Dag(rv)
    dag.build(nodes, [["PL3", "T", "PL2", "PL1", "IMC", "IMB", "IJR", "IPOWER", "IMA", "CREATE"]])
    correct = dag.state_after["PL3"]
    stale = {**correct, (POWER, ""): dag.eid("IPOWER")}
    expected = dict(correct)
    if not dag.room_version.privileged_creators:
        expected[(POWER, "")] = dag.eid("IPOWER")
    name = "msc4297-problem-b-" + ("v2.1" if dag.room_version.privileged_creators else "v2")
    return dag.fixture(name, [correct, stale], expected)


def v1_demotion_and_topic() -> dict[str, Any]:
    """Room version 1. Alice demotes Bob while Bob, on another fork, edits the power
    levels and later sets a topic deeper in the DAG than Alice's. The power levels are
    resolved first (ascending depth, each next one must pass on top of the previous), so
    Alice's demotion stands; the topic with the highest depth is Bob's, but it fails
    against the demoted Bob, so Alice's topic is taken."""
    rv = "1"
    dag = Dag(rv)
    dag.build(
        [
            *initial_nodes(rv, {ALICE: 100, BOB: 50})[:5],
            ("PA", ALICE, POWER, "", {"users": {ALICE: 100, BOB: 0}}),
            ("TA", ALICE, TOPIC, "", {"topic": "alice"}),
            ("PB", BOB, POWER, "", {"users": {ALICE: 100, BOB: 50, CHARLIE: 10}}),
            ("MB", BOB, MESSAGE, None, {}),
            ("TB", BOB, TOPIC, "", {"topic": "bob"}),
        ],
        [
            ["TA", "PA", "IMB", "IJR", "IPOWER", "IMA", "CREATE"],
            ["TB", "MB", "PB", "IMB"],
        ],
    )
    return dag.fixture(
        "v1-demotion-and-topic",
        [dag.state_after["TA"], dag.state_after["TB"]],
        {**dag.state_after["TA"]},
    )


def v1_ban_vs_rejoin() -> dict[str, Any]:
    """Room version 1. Alice bans Charlie while Charlie, on another fork, changes his
    display name. Member conflicts go in ascending depth: the ban is shallower, so it is
    applied first, and Charlie's join fails against it."""
    rv = "1"
    dag = Dag(rv)
    dag.build(
        [
            *initial_nodes(rv)[:6],
            ("BC", ALICE, MEMBER, CHARLIE, BAN),
            ("X1", CHARLIE, MESSAGE, None, {}),
            ("JC", CHARLIE, MEMBER, CHARLIE, {"membership": "join", "displayname": "C"}),
        ],
        [
            ["BC", "IMC", "IMB", "IJR", "IPOWER", "IMA", "CREATE"],
            ["JC", "X1", "IMC"],
        ],
    )
    return dag.fixture(
        "v1-ban-vs-rejoin",
        [dag.state_after["BC"], dag.state_after["JC"]],
        dag.state_after["BC"],
    )


def v1_join_rule_evasion() -> dict[str, Any]:
    """Room version 1, the same story as join-rule-evasion: in v1 a key present on only
    one side is not a conflict, so Evelyn's join is simply kept (one of the bugs v2
    fixed)."""
    rv = "1"
    dag = Dag(rv)
    dag.build(
        [
            *initial_nodes(rv)[:5],
            ("JR", ALICE, JOIN_RULES, "", {"join_rule": "invite"}),
            ("ME", EVELYN, MEMBER, EVELYN, JOIN),
        ],
        [["JR", "IMB", "IJR", "IPOWER", "IMA", "CREATE"], ["ME", "IMB"]],
    )
    a, b = dag.state_after["JR"], dag.state_after["ME"]
    return dag.fixture("v1-join-rule-evasion", [a, b], {**a, **b, (JOIN_RULES, ""): dag.eid("JR")})


V2_ROOM = "11"
V2_1_ROOM = "12"


def all_scenarios() -> list[dict[str, Any]]:
    return [
        scenario_ban_vs_power_levels(V2_ROOM),
        scenario_join_rule_evasion(V2_ROOM),
        scenario_offtopic_power_levels(V2_ROOM),
        scenario_topic_basic(V2_ROOM),
        scenario_topic_reset(V2_ROOM),
        scenario_topic(V2_ROOM),
        scenario_mainline_sort(V2_ROOM),
        msc4297_problem_a(V2_ROOM),
        msc4297_problem_a(V2_1_ROOM),
        msc4297_problem_b(V2_ROOM),
        msc4297_problem_b(V2_1_ROOM),
        v1_demotion_and_topic(),
        v1_ban_vs_rejoin(),
        v1_join_rule_evasion(),
    ]


def write_fixtures() -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for scenario in all_scenarios():
        path = FIXTURES / f"{scenario['name']}.json"
        path.write_text(json.dumps(scenario, indent=1, sort_keys=True) + "\n", encoding="utf-8")


# --- the tests ------------------------------------------------------------------------


@pytest.mark.parametrize("path", fixture_files(), ids=lambda p: p.stem)
def test_named_scenario(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    room_version, state_sets, events = load_fixture(data)
    assert resolve_state(room_version, state_sets, events) == expected_state(data)


def test_every_named_scenario_has_a_fixture() -> None:
    names = {p.stem for p in fixture_files()}
    assert names == {s["name"] for s in all_scenarios()}


def _fixture_data() -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in fixture_files()]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_result_does_not_depend_on_input_order(data: st.DataObject) -> None:
    fixture = data.draw(st.sampled_from(_fixture_data()))
    room_version, state_sets, events = load_fixture(fixture)
    expected = resolve_state(room_version, state_sets, events)
    shuffled_sets = data.draw(st.permutations(state_sets))
    shuffled_sets = [dict(data.draw(st.permutations(list(s.items())))) for s in shuffled_sets]
    shuffled_events = dict(data.draw(st.permutations(list(events.items()))))
    assert resolve_state(room_version, shuffled_sets, shuffled_events) == expected


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    room_version=st.sampled_from(["1", "2", "10", "11", "12"]),
    data=st.data(),
)
def test_synthetic_forks_do_not_depend_on_input_order(
    seed: int, room_version: str, data: st.DataObject
) -> None:
    from benchmarks.state_res_input import generate, load

    fixture = generate(n_state=40, n_conflicted=24, room_version=room_version, seed=seed)
    rv, state_sets, events = load(fixture)
    expected = resolve_state(rv, state_sets, events)
    for key in state_sets[0].keys() & state_sets[1].keys():
        if state_sets[0][key] == state_sets[1][key]:
            assert expected[key] == state_sets[0][key]
    shuffled_sets = [dict(data.draw(st.permutations(list(s.items())))) for s in state_sets[::-1]]
    shuffled_events = dict(data.draw(st.permutations(list(events.items()))))
    assert resolve_state(rv, shuffled_sets, shuffled_events) == expected


def test_no_conflict_returns_the_common_state() -> None:
    _, state_sets, events = load_fixture(_fixture_data()[0])
    rv = get_room_version(V2_ROOM)
    assert resolve_state(rv, [state_sets[0], dict(state_sets[0])], events) == state_sets[0]
    assert resolve_state(rv, [state_sets[0]], events) == state_sets[0]
    assert resolve_state(rv, [], events) == {}


def test_missing_events_are_reported() -> None:
    fixture = json.loads((FIXTURES / "topic-basic.json").read_text(encoding="utf-8"))
    room_version, state_sets, events = load_fixture(fixture)
    gone = Dag.eid("PA1")
    del events[gone]
    with pytest.raises(MissingEventsError) as info:
        resolve_state(room_version, state_sets, events)
    assert gone in info.value.event_ids


def test_auth_chain() -> None:
    dag = Dag(V2_ROOM)
    dag.build(initial_nodes(V2_ROOM), [INITIAL_EDGES])
    chain = auth_chain([dag.eid("IMB")], dag.events)
    assert chain == {dag.eid("CREATE"), dag.eid("IPOWER"), dag.eid("IJR"), dag.eid("IMA")}
    with pytest.raises(MissingEventsError):
        auth_chain(["$nope:example.com"], dag.events)


def test_state_set_from_ids_rejects_bad_input() -> None:
    dag = Dag(V2_ROOM)
    dag.build(initial_nodes(V2_ROOM), [INITIAL_EDGES])
    with pytest.raises(ValueError):
        state_set_from_ids([dag.eid("START")], dag.events)
    dag.add("IMB2", BOB, MEMBER, BOB, {"membership": "join", "displayname": "B"}, ["START"])
    with pytest.raises(ValueError):
        state_set_from_ids([dag.eid("IMB"), dag.eid("IMB2")], dag.events)


def test_rejected_auth_events_are_not_used() -> None:
    # In v2.1 the first pass starts empty, so Alice's join rules need her join from
    # their own auth events; if that join was rejected they cannot pass.
    fixture = json.loads((FIXTURES / "msc4297-problem-a-v2.1.json").read_text(encoding="utf-8"))
    room_version, state_sets, events = load_fixture(fixture)
    result = resolve_state(room_version, state_sets, events, rejected_event_ids={Dag.eid("IMA")})
    assert (JOIN_RULES, "") not in result


if __name__ == "__main__":
    if sys.argv[1:] == ["write-fixtures"]:
        write_fixtures()
    else:
        print("usage: python -m tests.protocol.test_state_res write-fixtures")

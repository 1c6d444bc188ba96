"""The protocol core, side by side with Synapse, in one process on the same inputs.

Cases (room version 11):

* hash + sign 10 000 events (a mix of messages, replies, edits, reactions and state);
* verify the signature of each, Synapse as its keyring does it (redact, then
  `signedjson.sign.verify_signed_json`), from a built event and from the PDU dict;
* compute each event ID (Synapse: `make_event_from_dict(...).event_id`, and
  `compute_event_reference_hash` of an already built event);
* state resolution over a room of 10 000 state events whose two forks conflict on
  about 500 events (`benchmarks/state_res_input.py`), Synapse's
  `synapse.state.v2.resolve_events_with_store` over an in-memory store the way its
  own tests/state/test_v2.py drives it.

Before timing, the outputs are checked to be identical (signed events, event IDs,
resolved state); the run stops if they are not. Implementations alternate within
each repetition (order swapped every repetition) and the table reports best and
median wall time and the ratio Synapse / Starling (> 1: Starling is faster).

Needs Synapse importable: run it through `benchmarks/run_protocol.sh`, which builds
benchmarks/.venv-synapse with both. `--profile CASE` profiles Starling's side of a
case instead of timing it.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import datetime
import gc
import importlib.metadata
import os
import platform
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import state_res_input
from benchmarks.machine import cpu_model, git_commit
from starling.protocol.event import Event
from starling.protocol.event_signing import hash_and_sign_event, verify_event_signature
from starling.protocol.hashing import (
    add_content_hash,
    compute_event_id,
    compute_reference_hash,
)
from starling.protocol.room_versions import get_room_version
from starling.protocol.signing import SignatureError, SigningKey
from starling.protocol.state_res import resolve_state, state_set_from_ids

try:
    import signedjson.key
    import signedjson.sign
    import synapse.event_auth  # noqa: F401 - first, or synapse.state's imports are circular
    from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
    from synapse.crypto.event_signing import (
        add_hashes_and_signatures,
        compute_event_reference_hash,
    )
    from synapse.events import make_event_from_dict
    from synapse.events.utils import redact_event
    from synapse.state.v2 import resolve_events_with_store
    from synapse.storage.databases.main.event_federation import StateDifference
    from synapse.synapse_rust.events import redact_event_dict
except ImportError as e:  # pragma: no cover - depends on the environment
    sys.exit(f"{e}: run this through benchmarks/run_protocol.sh (it builds a venv with Synapse)")

ROOT = Path(__file__).resolve().parent.parent
ROOM_VERSION = "11"
SERVER = "example.com"
KEY_VERSION = "bench"
SEED = bytes(range(32))

JsonDict = dict[str, Any]


# --- inputs ----------------------------------------------------------------------------


def _fake_event_id(rng: random.Random) -> str:
    return "$" + base64.urlsafe_b64encode(rng.randbytes(32)).decode().rstrip("=")


_WORDS = (
    "the quick brown fox jumps over lazy dog matrix federation room state event "
    "hello world lunch meeting tomorrow release deploy server bug fix review "
    "café naïve déjà vu 日本語 テスト 🚀 🎉 👍 ok thanks"
).split()


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))


def make_sign_inputs(n: int, seed: int = 1) -> list[JsonDict]:
    """`n` unsigned, unhashed room version 11 PDUs from SERVER's users: ~80% messages
    (plain, HTML, replies, edits, reactions), ~20% state (members, power levels,
    topic, name, custom state). All local senders, so SERVER signs every one."""
    rng = random.Random(seed)
    users = [f"@user{i}:{SERVER}" for i in range(200)]
    room_id = f"!signbench:{SERVER}"
    recent = [_fake_event_id(rng) for _ in range(20)]
    auth_base = [_fake_event_id(rng) for _ in range(3)]  # create, power levels, join rules
    pdus: list[JsonDict] = []
    ts = 1_700_000_000_000
    for i in range(n):
        sender = rng.choice(users)
        r = rng.random()
        state_key: str | None = None
        content: JsonDict
        if r < 0.45:
            etype = "m.room.message"
            content = {"msgtype": "m.text", "body": _text(rng, 2, 60)}
        elif r < 0.55:
            etype = "m.room.message"
            body = _text(rng, 5, 40)
            content = {
                "msgtype": "m.text",
                "body": body,
                "format": "org.matrix.custom.html",
                "formatted_body": f"<p><b>{body[:20]}</b>{body[20:]}</p>",
            }
        elif r < 0.65:
            etype = "m.room.message"
            content = {
                "msgtype": "m.text",
                "body": "> <@x:y> quoted\n\n" + _text(rng, 2, 30),
                "m.relates_to": {"m.in_reply_to": {"event_id": rng.choice(recent)}},
            }
        elif r < 0.70:
            etype = "m.room.message"
            new = _text(rng, 2, 30)
            content = {
                "msgtype": "m.text",
                "body": "* " + new,
                "m.new_content": {"msgtype": "m.text", "body": new},
                "m.relates_to": {"rel_type": "m.replace", "event_id": rng.choice(recent)},
            }
        elif r < 0.80:
            etype = "m.reaction"
            content = {
                "m.relates_to": {
                    "rel_type": "m.annotation",
                    "event_id": rng.choice(recent),
                    "key": rng.choice(["👍", "🎉", "❤️", "😂"]),
                }
            }
        elif r < 0.92:
            etype, state_key = "m.room.member", sender
            content = {"membership": "join", "displayname": _text(rng, 1, 3)}
            if rng.random() < 0.5:
                content["avatar_url"] = f"mxc://{SERVER}/{_fake_event_id(rng)[1:20]}"
        elif r < 0.95:
            etype, state_key = "m.room.power_levels", ""
            content = {
                "users": {u: rng.choice([50, 100]) for u in rng.sample(users, 20)},
                "users_default": 0,
                "events": {"m.room.name": 50, "m.room.power_levels": 100},
                "events_default": 0,
                "state_default": 50,
                "ban": 50,
                "kick": 50,
                "redact": 50,
                "invite": 0,
            }
        elif r < 0.97:
            etype, state_key = "m.room.topic", ""
            content = {"topic": _text(rng, 3, 20)}
        elif r < 0.98:
            etype, state_key = "m.room.name", ""
            content = {"name": _text(rng, 1, 4)}
        else:
            etype, state_key = "org.example.widget", f"w{rng.randint(0, 50)}"
            content = {"url": f"https://{SERVER}/w", "data": {"n": rng.randint(0, 10**6)}}
        prev = [recent[-1]] if rng.random() < 0.9 else rng.sample(recent, 2)
        auth = [*auth_base, _fake_event_id(rng)]
        pdu: JsonDict = {
            "room_id": room_id,
            "type": etype,
            "sender": sender,
            "content": content,
            "depth": 100 + i,
            "origin_server_ts": ts,
            "prev_events": prev,
            "auth_events": auth,
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        ts += rng.randint(1, 5000)
        pdus.append(pdu)
        recent.append(_fake_event_id(rng))
        recent.pop(0)
    return pdus


def make_state_res_input(n_state: int, n_conflicted: int) -> JsonDict:
    """`state_res_input.generate`'s room with real event IDs (reference hashes), since
    Synapse computes room version 3+ event IDs itself and refuses explicit ones.

    Each event gets its content hash, and its prev/auth references are renamed, in
    creation order (parents come first)."""
    data = state_res_input.generate(n_state, n_conflicted, ROOM_VERSION)
    rv = get_room_version(data["room_version"])
    rename: dict[str, str] = {}
    events: list[JsonDict] = []
    for pdu in data["events"]:
        out = {k: v for k, v in pdu.items() if k != "event_id"}
        out["prev_events"] = [rename[e] for e in pdu["prev_events"]]
        out["auth_events"] = [rename[e] for e in pdu["auth_events"]]
        out = add_content_hash(out, strict=True)
        out["signatures"] = {}
        rename[pdu["event_id"]] = compute_event_id(out, rv)
        events.append(out)
    return {
        "room_version": data["room_version"],
        "events": events,
        "event_ids": [rename[p["event_id"]] for p in data["events"]],
        "state_sets": [sorted(rename[e] for e in s) for s in data["state_sets"]],
    }


# --- Synapse's side of state resolution -----------------------------------------------


class _NoopClock:
    """What `resolve_events_with_store` needs of a clock (tests/state/test_v2.py FakeClock)."""

    async def sleep(self, duration: Any) -> None:
        return None


class _MemoryStateResStore:
    """An in-memory StateResolutionStore, as Synapse's tests/state/test_v2.py has it:
    events from a dict, auth chain difference by walking auth events in Python (a
    real Synapse asks its database, using the chain cover index)."""

    def __init__(self, event_map: dict[str, Any]) -> None:
        self.event_map = event_map

    async def get_events(
        self, event_ids: Iterable[str], allow_rejected: bool = False
    ) -> dict[str, Any]:
        em = self.event_map
        return {e: em[e] for e in event_ids if e in em}

    def _auth_chain(self, event_ids: Iterable[str]) -> set[str]:
        result: set[str] = set()
        stack = list(event_ids)
        em = self.event_map
        while stack:
            event_id = stack.pop()
            if event_id in result:
                continue
            result.add(event_id)
            stack.extend(em[event_id].auth_event_ids())
        return result

    async def get_auth_chain_difference(
        self,
        room_id: str,
        auth_sets: list[set[str]],
        conflicted_state: set[str] | None,
        additional_backwards_reachable_conflicted_events: set[str] | None,
    ) -> Any:
        chains = [self._auth_chain(a) for a in auth_sets]
        common = set(chains[0]).intersection(*chains[1:])
        return StateDifference(
            auth_difference=set(chains[0]).union(*chains[1:]) - common,
            conflicted_subgraph=set(),
        )


class _PrecomputedDiffStore(_MemoryStateResStore):
    """The same store with the auth chain difference computed beforehand: a lower
    bound for Synapse, as if its database answered that query for free."""

    def __init__(self, event_map: dict[str, Any], diff: Any) -> None:
        super().__init__(event_map)
        self.diff = diff

    async def get_auth_chain_difference(self, *args: Any) -> Any:
        return self.diff


def _run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never really suspends (in-memory store, no-op clock)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("coroutine suspended; the in-memory adapters should never block")


# --- timing ---------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    starling: Callable[[], Any]
    synapse: Callable[[], Any]
    # Called (untimed) before each run to build fresh inputs, if runs consume them.
    starling_setup: Callable[[], Any] | None = None
    synapse_setup: Callable[[], Any] | None = None
    times: dict[str, list[float]] = field(default_factory=lambda: {"starling": [], "synapse": []})


def _timed(run: Callable[..., Any], setup: Callable[[], Any] | None) -> float:
    args = () if setup is None else (setup(),)
    gc.collect()
    start = time.perf_counter()
    run(*args)
    return time.perf_counter() - start


def run_cases(cases: list[Case], repeat: int) -> None:
    for case in cases:
        print(f"  {case.name}: ", end="", flush=True)
        for rep in range(repeat):
            order = ("starling", "synapse") if rep % 2 == 0 else ("synapse", "starling")
            for impl in order:
                run = case.starling if impl == "starling" else case.synapse
                setup = case.starling_setup if impl == "starling" else case.synapse_setup
                case.times[impl].append(_timed(run, setup))
            print(".", end="", flush=True)
        print()


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}" if seconds >= 0.1 else f"{seconds * 1000:,.1f}"


def results_table(cases: list[Case]) -> str:
    lines = [
        "| case | Starling best / median (ms) | Synapse best / median (ms) "
        "| Synapse / Starling, best / median |",
        "|---|---:|---:|---:|",
    ]
    for c in cases:
        st, sy = c.times["starling"], c.times["synapse"]
        best = min(sy) / min(st)
        median = statistics.median(sy) / statistics.median(st)
        lines.append(
            f"| {c.name} | {_ms(min(st))} / {_ms(statistics.median(st))} "
            f"| {_ms(min(sy))} / {_ms(statistics.median(sy))} "
            f"| {best:.2f}x / **{median:.2f}x** |"
        )
    return "\n".join(lines)


# --- the benchmark --------------------------------------------------------------------


def machine_description() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{cpu_model()}, {os.cpu_count()} cores (shared with other engineers' "
        f"processes; load average at start {load}); Python {platform.python_version()}; "
        f"matrix-synapse {importlib.metadata.version('matrix-synapse')}; Starling {git_commit()}"
    )


class Bench:
    """Inputs, the correctness checks, and the cases, built once."""

    def __init__(self, n_events: int, n_state: int, n_conflicted: int) -> None:
        self.rv = get_room_version(ROOM_VERSION)
        self.srv = KNOWN_ROOM_VERSIONS[ROOM_VERSION]
        self.key = SigningKey(SEED, KEY_VERSION)
        self.key_id = self.key.key_id
        self.syn_key = signedjson.key.decode_signing_key_base64(
            "ed25519", KEY_VERSION, self.key.seed_base64
        )
        self.syn_verify_key = signedjson.key.get_verify_key(self.syn_key)

        t = time.perf_counter()
        self.templates = make_sign_inputs(n_events)
        self.signed = [hash_and_sign_event(p, SERVER, self.key, self.rv) for p in self.templates]
        self.syn_events = [make_event_from_dict(p, self.srv) for p in self.signed]
        self.sr = make_state_res_input(n_state, n_conflicted)
        self.sr_events = {
            eid: Event(p, eid, self.rv)
            for eid, p in zip(self.sr["event_ids"], self.sr["events"], strict=True)
        }
        self.sr_state_sets = [state_set_from_ids(s, self.sr_events) for s in self.sr["state_sets"]]
        self.syn_sr_events = {
            e.event_id: e for e in (make_event_from_dict(p, self.srv) for p in self.sr["events"])
        }
        self.syn_state_sets = [
            {(self.syn_sr_events[e].type, self.syn_sr_events[e].state_key): e for e in s}
            for s in self.sr["state_sets"]
        ]
        self.room_id = self.sr["events"][-1]["room_id"]
        print(f"inputs built in {time.perf_counter() - t:.1f} s")

    # -- correctness -------------------------------------------------------------------

    def check(self) -> list[str]:
        notes = []
        # Hash + sign: Synapse's output is the same dict, byte for byte, for every event.
        for tmpl, ours in zip(self.templates, self.signed, strict=True):
            theirs = dict(tmpl)
            add_hashes_and_signatures(self.srv, theirs, SERVER, self.syn_key)
            assert theirs == ours, f"signed events differ:\n{theirs}\n{ours}"
        notes.append(
            f"hash + sign: Starling's and Synapse's signed events (hashes and signatures) are "
            f"identical for all {len(self.signed):,} events"
        )
        # Event IDs: ours == Synapse's, both ways of computing it.
        for ours, ev in zip(self.signed, self.syn_events, strict=True):
            our_id = compute_event_id(ours, self.rv)
            assert our_id == ev.event_id, (our_id, ev.event_id)
            ref = compute_event_reference_hash(ev)[1]
            assert ref == compute_reference_hash(ours, self.rv)
        notes.append(
            f"event IDs: compute_event_id == make_event_from_dict(...).event_id, and the "
            f"reference hashes match compute_event_reference_hash, for all "
            f"{len(self.signed):,} events"
        )
        # Verify: each accepts the other's signatures (they are the same) and both reject
        # the same tampered events (a changed origin_server_ts: covered by redaction).
        for ours, ev in zip(self.signed, self.syn_events, strict=True):
            verify_event_signature(ours, SERVER, self.key_id, self.key.verify_key, self.rv)
            signedjson.sign.verify_signed_json(
                redact_event(ev).get_pdu_json(), SERVER, self.syn_verify_key
            )
        rejected = 0
        for ours in self.signed[:500]:
            bad = {**ours, "origin_server_ts": ours["origin_server_ts"] + 1}
            try:
                verify_event_signature(bad, SERVER, self.key_id, self.key.verify_key, self.rv)
                raise AssertionError("Starling accepted a tampered event")
            except SignatureError:
                pass
            try:
                signedjson.sign.verify_signed_json(
                    redact_event_dict(self.srv, bad), SERVER, self.syn_verify_key
                )
                raise AssertionError("Synapse accepted a tampered event")
            except signedjson.sign.SignatureVerifyException:
                rejected += 1
        notes.append(
            f"verify: both accept all {len(self.signed):,} signatures and both reject "
            f"{rejected} tampered copies (origin_server_ts changed)"
        )
        # State resolution: the same resolved state.
        assert self.syn_sr_events.keys() == self.sr_events.keys()
        ours_state = resolve_state(self.rv, self.sr_state_sets, self.sr_events)
        theirs_state = dict(self._synapse_resolve())
        assert ours_state == theirs_state, self._state_diff(ours_state, theirs_state)
        theirs_state = dict(self._synapse_resolve(self._precomputed_store()))
        assert ours_state == theirs_state, self._state_diff(ours_state, theirs_state)
        a, b = self.sr_state_sets
        conflicted = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
        from_a = sum(1 for k in conflicted if ours_state.get(k) == a.get(k))
        from_b = sum(1 for k in conflicted if ours_state.get(k) == b.get(k))
        notes.append(
            f"state resolution: identical resolved state ({len(ours_state):,} keys; "
            f"{len(conflicted)} conflicted keys ({self._n_conflicted_events()} events), "
            f"{len(self.sr_events):,} events in the room, resolved "
            f"{from_a} to fork A, {from_b} to fork B, "
            f"{len(conflicted) - from_a - from_b} to an earlier event); Synapse computed the "
            f"same event IDs as Starling for all {len(self.sr_events):,} events"
        )
        return notes

    @staticmethod
    def _state_diff(ours: dict[Any, str], theirs: dict[Any, str]) -> str:
        keys = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        shown = "\n".join(
            f"  {k}: starling={ours.get(k)} synapse={theirs.get(k)}" for k in keys[:10]
        )
        return f"resolved states differ on {len(keys)} keys:\n{shown}"

    # -- the implementations -----------------------------------------------------------

    def _synapse_resolve(self, store: _MemoryStateResStore | None = None) -> Any:
        if store is None:
            store = _MemoryStateResStore(self.syn_sr_events)
        return _run_sync(
            resolve_events_with_store(
                _NoopClock(), self.room_id, self.srv, self.syn_state_sets, None, store
            )
        )

    def _precomputed_store(self) -> _PrecomputedDiffStore:
        plain = _MemoryStateResStore(self.syn_sr_events)
        sets = [set(s.values()) for s in self.syn_state_sets]
        diff = _run_sync(plain.get_auth_chain_difference(self.room_id, sets, None, None))
        return _PrecomputedDiffStore(self.syn_sr_events, diff)

    def cases(self) -> list[Case]:
        rv, srv, key, key_id, vk = self.rv, self.srv, self.key, self.key_id, self.key.verify_key
        syn_key, syn_vk = self.syn_key, self.syn_verify_key
        templates, signed, syn_events = self.templates, self.signed, self.syn_events
        n = len(templates)

        def st_sign() -> None:
            for p in templates:
                hash_and_sign_event(p, SERVER, key, rv)

        def sy_sign(copies: list[JsonDict]) -> None:
            # add_hashes_and_signatures mutates its argument: fresh copies, made untimed.
            for d in copies:
                add_hashes_and_signatures(srv, d, SERVER, syn_key)

        def st_verify() -> None:
            for p in signed:
                verify_event_signature(p, SERVER, key_id, vk, rv)

        def sy_verify_event() -> None:
            # Keyring.process_json on VerifyJsonRequest.from_event's json object.
            for ev in syn_events:
                signedjson.sign.verify_signed_json(redact_event(ev).get_pdu_json(), SERVER, syn_vk)

        def sy_verify_dict() -> None:
            for p in signed:
                signedjson.sign.verify_signed_json(redact_event_dict(srv, p), SERVER, syn_vk)

        def st_event_id() -> None:
            for p in signed:
                compute_event_id(p, rv)

        def sy_event_id() -> None:
            for p in signed:
                make_event_from_dict(p, srv).event_id  # noqa: B018 - the ID is the point

        def st_ref_hash() -> None:
            for p in signed:
                compute_reference_hash(p, rv)

        def sy_ref_hash() -> None:
            for ev in syn_events:
                compute_event_reference_hash(ev)

        def st_resolve() -> None:
            resolve_state(rv, self.sr_state_sets, self.sr_events)

        k = f"{n // 1000}k" if n % 1000 == 0 else str(n)
        sr = (
            f"{len(self.sr_state_sets[0]):,} state, "
            f"{self._n_conflicted_events()} conflicted events, {len(self.sr_events):,} events"
        )
        return [
            Case(
                f"hash + sign {k} events",
                st_sign,
                sy_sign,
                synapse_setup=lambda: [dict(p) for p in templates],
            ),
            Case(
                f"verify {k} signatures (Synapse: from built events, as its keyring)",
                st_verify,
                sy_verify_event,
            ),
            Case(f"verify {k} signatures (Synapse: from PDU dicts)", st_verify, sy_verify_dict),
            Case(
                f"event ID of {k} events (Synapse: make_event_from_dict(...).event_id)",
                st_event_id,
                sy_event_id,
            ),
            Case(
                f"reference hash of {k} events (Synapse: compute_event_reference_hash)",
                st_ref_hash,
                sy_ref_hash,
            ),
            Case(f"state resolution: {sr}", st_resolve, self._synapse_resolve),
            Case(
                f"state resolution: {sr} (Synapse: auth chain difference precomputed)",
                st_resolve,
                self._synapse_resolve,
                synapse_setup=self._precomputed_store,
            ),
        ]

    def _n_conflicted_events(self) -> int:
        a, b = self.sr_state_sets
        keys = [k for k in a.keys() | b.keys() if a.get(k) != b.get(k)]
        return len({e for k in keys for e in (a.get(k), b.get(k)) if e is not None})


PROFILE_CASES = ("sign", "verify", "event-id", "state-res")


def profile(bench: Bench, case: str, top: int) -> None:
    # Indexes into Bench.cases(): Starling's side of the two verify cases is the same.
    target = bench.cases()[{"sign": 0, "verify": 1, "event-id": 3, "state-res": 5}[case]]
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(3):
        target.starling()
    profiler.disable()
    stats = pstats.Stats(profiler)
    print(f"\n=== Starling: {target.name} (3 runs), by own time ===")
    stats.sort_stats("tottime").print_stats(top)
    print(f"\n=== Starling: {target.name} (3 runs), by cumulative time ===")
    stats.sort_stats("cumulative").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000, help="events to sign/verify")
    parser.add_argument("--state", type=int, default=10_000, help="state events in the room")
    parser.add_argument("--conflicted", type=int, default=500, help="conflicted events")
    parser.add_argument("--repeat", type=int, default=7, help="runs of each implementation")
    parser.add_argument("--no-write", action="store_true", help="don't write benchmarks/results/")
    parser.add_argument(
        "--profile", choices=PROFILE_CASES, help="profile Starling's side of a case"
    )
    parser.add_argument("--top", type=int, default=25, help="rows of --profile output")
    args = parser.parse_args()

    machine = machine_description()
    print(f"machine: {machine}")
    bench = Bench(args.events, args.state, args.conflicted)
    if args.profile:
        profile(bench, args.profile, args.top)
        return

    t = time.perf_counter()
    notes = bench.check()
    print(f"correctness checks passed ({time.perf_counter() - t:.1f} s):")
    for note in notes:
        print(f"  - {note}")

    cases = bench.cases()
    print(f"timing, {args.repeat} runs each, alternating:")
    run_cases(cases, args.repeat)
    table = results_table(cases)
    print()
    print(table)

    if not args.no_write:
        now = datetime.datetime.now(datetime.UTC)
        out_dir = ROOT / "benchmarks" / "results"
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"protocol-{now:%Y-%m-%d}.md"
        command = "benchmarks/run_protocol.sh " + " ".join(sys.argv[1:])
        checks = "\n".join(f"- {n}" for n in notes)
        path.write_text(
            f"# Protocol core: Starling vs Synapse ({now:%Y-%m-%d %H:%M} UTC)\n\n"
            f"- Machine: {machine}\n- Command: `{command.strip()}`\n"
            f"- Room version {ROOM_VERSION}; {args.repeat} runs of each implementation, "
            f"alternating, in one process; wall time; ratio > 1 means Starling is faster.\n\n"
            f"{table}\n\nCorrectness checks (before timing):\n\n{checks}\n",
            encoding="utf-8",
        )
        print(f"\nwritten to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""The federation benchmark (issue 9, "Performance"): Starling vs Synapse 1.163.2 over real
federation on loopback (TLS), one implementation at a time, reported as ratios.

Per implementation, two real servers are started (A and B: `starling serve` through the
federation test harness, or Synapse through tests/federation/synapse.py), plus one fake
remote homeserver in this process (`FakeRemote`: its own ed25519 key, served at
/_matrix/key/v2/server so the servers fetch it; it hosts rooms built as signed DAGs):

1. inbound /send: the fake remote joins a public room on A (make_join + send_join), then
   sends transactions of 50 signed messages chained on its join (hashes, signatures,
   auth events as a real server builds them); accepted PDUs (no error in the /send answer)
   per second, from the first /send until A's user sees every sent message (/messages),
   bounded in count and time.
2. join a remote room of 500 members: the fake remote hosts a room of `--members`
   members (same host for both implementations, built identically); a user of A joins it
   (POST /join?via=remote): the time until the join answers; then A must list every member.
3. catch-up: a user of A and a user of B share a room hosted on A; B is stopped (SIGTERM),
   A's user sends `--missed` messages spread over `--outage` seconds, B is restarted; the
   time from the restart until B's client API (/messages) shows every missed message.
   Once B answers again, for `--nudge-after` seconds nothing else happens (the sender's own
   retry, or B pulling on its own); then B's user sends one message into the room (an inbound request from B, which both
   implementations take as "that server is back"); the table says whether that was needed.
5. remote /keys/query (issue 10): `--key-users` users of B upload device keys; A's user
   queries all of them at once, first sharing no room (each query crosses to B), then
   after they joined a public room on A (the servers may answer from their device-list
   caches); the median of `--key-queries` queries each.
4. fan-out (issue 10): `--destinations` fake remotes (each its own server name, key and
   TLS port) join a public room on A; A's user sends `--fanout-messages` messages one at a
   time; each is timed from the send until every destination has received it in a /send
   transaction (the median is reported), after one warm-up message.

Run through benchmarks/run_federation.sh (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from benchmarks.machine import ROOT, cpu_model, git_commit
from starling.protocol.auth_rules import auth_types_for_event
from starling.protocol.event import Event, StateKey
from starling.protocol.event_signing import hash_and_sign_event
from starling.protocol.hashing import compute_event_id
from starling.protocol.room_versions import get_room_version
from starling.protocol.signing import SigningKey, sign_json
from tests.federation.dag import Dag, FakeServer, pdu_json
from tests.federation.harness import (
    FederatedServer,
    TestPKI,
    federation_servers,
    make_test_pki,
    signed_request,
)
from tests.federation.tls_servers import tls_app

ROOM_VERSION = get_room_version("12")
WAIT = 120.0  # hang guard for anything crossing servers


def now_ms() -> int:
    return int(time.time() * 1000)


# --- the fake remote homeserver ----------------------------------------------------------


@dataclass
class FakeRemote:
    """A remote homeserver in this process: serves its key, accepts transactions, and
    hosts rooms built as signed DAGs (make_join, send_join, and what a receiver pulls to
    fill a gap: /event, /get_missing_events, /state_ids, /state, /backfill)."""

    pki: TestPKI
    key: SigningKey = field(default_factory=lambda: SigningKey.generate("a_bench"))
    name: str = ""
    rooms: dict[str, Dag] = field(default_factory=dict)
    received_pdus: int = 0
    # the bodies of the m.room.message PDUs received by /send (the fan-out scenario)
    received_bodies: set[str] = field(default_factory=set)
    # what the servers asked for and did not get (method path -> count): an endpoint the
    # fake remote lacks shows up here and in the report's notes
    misses: dict[str, int] = field(default_factory=dict)
    # what the servers pulled from it (endpoint -> requests): how a receiver filled gaps
    pulls: dict[str, int] = field(default_factory=dict)

    @property
    def identity(self) -> FakeServer:
        return FakeServer(self.name, self.key)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._count_misses])
        app.router.add_get("/_matrix/key/v2/server", self.keys)
        app.router.add_get("/_matrix/federation/v1/version", self.version)
        app.router.add_put("/_matrix/federation/v1/send/{txn}", self.send)
        app.router.add_get("/_matrix/federation/v1/make_join/{room}/{user}", self.make_join)
        app.router.add_put("/_matrix/federation/v2/send_join/{room}/{event}", self.send_join)
        app.router.add_get("/_matrix/federation/v1/event/{event}", self.event)
        app.router.add_post(
            "/_matrix/federation/v1/get_missing_events/{room}", self.get_missing_events
        )
        app.router.add_get("/_matrix/federation/v1/state_ids/{room}", self.state_ids)
        app.router.add_get("/_matrix/federation/v1/state/{room}", self.state)
        app.router.add_get("/_matrix/federation/v1/backfill/{room}", self.backfill)
        return app

    @web.middleware
    async def _count_misses(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        parts = request.path.split("/")
        if len(parts) > 4 and parts[2] == "federation" and parts[4] not in ("send", "version"):
            self.pulls[parts[4]] = self.pulls.get(parts[4], 0) + 1
        if response.status >= 400:
            key = f"{request.method} {request.path.rsplit('/', 1)[0]}/… {response.status}"
            self.misses[key] = self.misses.get(key, 0) + 1
        if isinstance(response, web.HTTPException):
            raise response
        return response

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with tls_app(self.app(), self.pki) as port:
            self.name = f"localhost:{port}"
            yield

    async def keys(self, request: web.Request) -> web.Response:
        body = {
            "server_name": self.name,
            "valid_until_ts": now_ms() + 24 * 3600 * 1000,
            "verify_keys": {self.key.key_id: {"key": self.key.public_key_base64}},
            "old_verify_keys": {},
        }
        return web.json_response(sign_json(body, self.name, self.key))

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"server": {"name": "fed-bench", "version": "1"}})

    async def send(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received_pdus += len(body.get("pdus", []))
        for pdu in body.get("pdus", []):
            text = pdu.get("content", {}).get("body") if isinstance(pdu, dict) else None
            if isinstance(text, str):
                self.received_bodies.add(text)
        return web.json_response({"pdus": {}})

    async def event(self, request: web.Request) -> web.Response:
        for dag in self.rooms.values():
            found = dag.events.get(request.match_info["event"])
            if found is not None:
                return web.json_response(
                    {"origin": self.name, "origin_server_ts": now_ms(), "pdus": [pdu_json(found)]}
                )
        return web.json_response({"errcode": "M_NOT_FOUND", "error": "no such event"}, status=404)

    def _state_at(self, request: web.Request) -> tuple[Dag, dict[StateKey, str]] | None:
        """The hosted room and the state before `?event_id=` in it (what /state and
        /state_ids describe), or None when the room or the event is unknown here."""
        dag = self.rooms.get(request.match_info["room"])
        event = dag.events.get(request.query.get("event_id", "")) if dag else None
        if dag is None or event is None or event.event_id not in dag.state_after:
            return None
        state = dict(dag.state_after[event.event_id])
        if event.state_key is not None:
            state.pop(event.state_map_key, None)
            state.update(
                {k: v for k, v in dag.state_before(event).items() if k == event.state_map_key}
            )
        return dag, state

    async def state_ids(self, request: web.Request) -> web.Response:
        """GET /_matrix/federation/v1/state_ids/{roomId}?event_id=: the IDs of the state
        before an event of a hosted room, and of its auth chain."""
        found = self._state_at(request)
        if found is None:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "unknown"}, status=404)
        dag, state = found
        chain = dag.auth_chain(state.values())
        return web.json_response(
            {"pdu_ids": list(state.values()), "auth_chain_ids": [e.event_id for e in chain]}
        )

    async def state(self, request: web.Request) -> web.Response:
        """GET /_matrix/federation/v1/state/{roomId}?event_id=: the same as full events
        (Synapse asks for these after /state_ids when it lacks some of them)."""
        found = self._state_at(request)
        if found is None:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "unknown"}, status=404)
        dag, state = found
        chain = dag.auth_chain(state.values())
        return web.json_response(
            {
                "pdus": [pdu_json(e) for e in dag.state_events(state)],
                "auth_chain": [pdu_json(e) for e in chain],
            }
        )

    async def backfill(self, request: web.Request) -> web.Response:
        """GET /_matrix/federation/v1/backfill/{roomId}?v=&limit=: the `v` events and the
        ones before them, walking prev_events breadth-first, at most `limit` (≤ 100)."""
        dag = self.rooms.get(request.match_info["room"])
        if dag is None:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no room"}, status=404)
        try:
            limit = max(0, min(int(request.query.get("limit", "10")), 100))
        except ValueError:
            return web.json_response({"errcode": "M_INVALID_PARAM", "error": "limit"}, status=400)
        frontier = [e for e in request.query.getall("v", []) if e in dag.events]
        found: list[Event] = []
        seen: set[str] = set()
        while frontier and len(found) < limit:
            eid = frontier.pop(0)
            if eid in seen or eid not in dag.events:
                continue
            seen.add(eid)
            found.append(dag.events[eid])
            frontier.extend(dag.events[eid].prev_event_ids)
        return web.json_response(
            {
                "origin": self.name,
                "origin_server_ts": now_ms(),
                "pdus": [pdu_json(e) for e in found],
            }
        )

    async def get_missing_events(self, request: web.Request) -> web.Response:
        """The events before `latest_events` back to `earliest_events`, oldest first (a
        receiver that processes a transaction's PDUs out of order asks for these)."""
        dag = self.rooms.get(request.match_info["room"])
        if dag is None:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no room"}, status=404)
        body = await request.json()
        earliest = set(body.get("earliest_events", []))
        limit = min(int(body.get("limit", 10)), 100)
        found: list[Event] = []
        seen = set(earliest)
        frontier = [
            p
            for e in body.get("latest_events", [])
            if e in dag.events
            for p in dag.events[e].prev_event_ids
        ]
        while frontier and len(found) < limit:
            eid = frontier.pop(0)
            if eid in seen or eid not in dag.events:
                continue
            seen.add(eid)
            found.append(dag.events[eid])
            frontier.extend(dag.events[eid].prev_event_ids)
        found.sort(key=lambda e: e.depth)
        return web.json_response({"events": [pdu_json(e) for e in found]})

    async def make_join(self, request: web.Request) -> web.Response:
        dag = self.rooms.get(request.match_info["room"])
        if dag is None:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no room"}, status=404)
        user = request.match_info["user"]
        content = {"membership": "join"}
        state = dag.current_state()
        keys = auth_types_for_event("m.room.member", user, user, content, ROOM_VERSION)
        template = {
            "type": "m.room.member",
            "sender": user,
            "state_key": user,
            "content": content,
            "room_id": dag.room_id,
            "depth": max(dag.events[e].depth for e in dag.extremities) + 1,
            "prev_events": list(dag.extremities),
            "auth_events": [state[k] for k in keys if k in state],
            "origin_server_ts": now_ms(),
        }
        return web.json_response({"room_version": ROOM_VERSION.identifier, "event": template})

    async def send_join(self, request: web.Request) -> web.Response:
        dag = self.rooms.get(request.match_info["room"])
        if dag is None:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no room"}, status=404)
        pdu = await request.json()
        event = Event(pdu, compute_event_id(pdu, ROOM_VERSION), ROOM_VERSION)
        state = dag.current_state()
        auth_chain = dag.auth_chain([*state.values(), *event.auth_event_ids])
        dag.track(event, state)
        return web.json_response(
            {
                "origin": self.name,
                "event": pdu,
                "state": [pdu_json(e) for e in dag.state_events(state)],
                "auth_chain": [pdu_json(e) for e in auth_chain],
                "members_omitted": False,
                "servers_in_room": [self.name],
            }
        )

    def host_room(self, members: int) -> str:
        """A public room on this server with `members` joined members (its creator
        included); returns its ID."""
        dag = Dag(ROOM_VERSION, [self.identity])
        creator = self.identity.user("creator")
        dag.standard_room(creator)
        for i in range(members - 1):
            dag.join(self.identity.user(f"m{i}"))
        self.rooms[dag.room_id] = dag
        return dag.room_id


# --- scenario 1: inbound /send ------------------------------------------------------------


async def remote_join(server: FederatedServer, remote: FakeRemote, room_id: str) -> Dag:
    """The fake remote joins `room_id` on `server` (make_join, send_join); returns a Dag
    positioned on its join, to build further events from."""
    user = remote.identity.user("bench")
    status, body = await signed_request(
        server,
        "GET",
        f"/_matrix/federation/v1/make_join/{room_id}/{user}?ver={ROOM_VERSION.identifier}",
        origin=remote.name,
        key=remote.key,
    )
    assert status == 200, (status, body)
    template = dict(body["event"])
    template["origin_server_ts"] = now_ms()
    template.pop("origin", None)
    signed = hash_and_sign_event(template, remote.name, remote.key, ROOM_VERSION)
    join = Event(signed, compute_event_id(signed, ROOM_VERSION), ROOM_VERSION)
    status, body = await signed_request(
        server,
        "PUT",
        f"/_matrix/federation/v2/send_join/{room_id}/{join.event_id}",
        origin=remote.name,
        key=remote.key,
        body=signed,
    )
    assert status == 200, (status, body)
    dag = Dag(ROOM_VERSION, [remote.identity], room_id=room_id)
    after: dict[StateKey, str] = {}
    for pdu in body["state"]:
        after[(pdu["type"], pdu["state_key"])] = compute_event_id(pdu, ROOM_VERSION)
    after[("m.room.member", user)] = join.event_id
    for pdu in [*body["state"], *body["auth_chain"]]:
        eid = compute_event_id(pdu, ROOM_VERSION)
        dag.events[eid] = Event(pdu, eid, ROOM_VERSION)
    dag.events[join.event_id] = join
    dag.state_after[join.event_id] = after
    dag.extremities = [join.event_id]
    return dag


async def inbound_send(
    server: FederatedServer, remote: FakeRemote, args: argparse.Namespace
) -> dict[str, Any]:
    alice = await server.register()
    room_id = await server.create_room(
        alice, preset="public_chat", room_version=ROOM_VERSION.identifier
    )
    dag = await remote_join(server, remote, room_id)
    remote.rooms[room_id] = dag  # served to the receiver's /get_missing_events
    sender = remote.identity.user("bench")
    base = now_ms()
    txns = [
        [
            pdu_json(
                dag.message(sender, f"bench {t}.{i}", extra={"origin_server_ts": base + t * 50 + i})
            )
            for i in range(50)
        ]
        for t in range(args.txns)
    ]
    accepted = errors = sent = 0
    first_error = ""
    start = time.perf_counter()
    for t, pdus in enumerate(txns):
        body = {"origin": remote.name, "origin_server_ts": now_ms(), "pdus": pdus}
        status, resp = await signed_request(
            server,
            "PUT",
            f"/_matrix/federation/v1/send/bench{t}x{start}",
            origin=remote.name,
            key=remote.key,
            body=body,
        )
        assert status == 200, (status, resp)
        sent += len(pdus)
        for result in resp["pdus"].values():
            if result.get("error"):
                errors += 1
                first_error = first_error or str(result["error"])
            else:
                accepted += 1
        if time.perf_counter() - start > args.time_limit:
            break
    answered = time.perf_counter() - start
    last = f"bench {t}.49"

    async def has_last() -> bool:
        chunk = await server.messages(alice, room_id, 5)
        return any(e["content"].get("body") == last for e in chunk)

    # Synapse answers /send once the PDUs are staged and processes them afterwards, and
    # when a gap is too long for /get_missing_events it persists the newest event over the
    # gap and fetches the rest only when a client pages back (/backfill). So the
    # measurement ends when every sent message is visible to A's user (/messages paged
    # back, which is what triggers that backfill); the last message's arrival is kept too.
    await eventually(has_last, f"{last} visible on {server.label}", timeout=WAIT + 600, poll=0.05)
    last_visible = time.perf_counter() - start
    wanted = {p["content"]["body"] for pdus in txns[: t + 1] for p in pdus}
    visible: set[str] = set()

    async def all_visible() -> bool:
        nonlocal visible
        visible = await visible_bodies(server, alice.token, room_id, sent)
        return wanted <= visible

    await eventually(all_visible, f"all {sent} messages visible on {server.label}", poll=0.2)
    elapsed = time.perf_counter() - start
    return {
        "pdus_per_s": accepted / elapsed,
        "sent": sent,
        "accepted": accepted,
        "errors": errors,
        "first_error": first_error,
        "seconds": elapsed,
        "last_visible_seconds": last_visible,
        "answered_seconds": answered,
    }


async def visible_bodies(server: FederatedServer, token: str, room_id: str, n: int) -> set[str]:
    """The bodies of the newest `n` (or more) events of the room that `token`'s user can
    read, paging back through /messages (bounded: at most n / 100 + 5 pages)."""
    bodies: set[str] = set()
    params = {"dir": "b", "limit": "100"}
    for _ in range(n // 100 + 5):
        status, resp = await server.client_request(
            "GET", f"/_matrix/client/v3/rooms/{room_id}/messages", token, params=params
        )
        assert status == 200, (status, resp)
        bodies.update(str(e.get("content", {}).get("body")) for e in resp["chunk"])
        if not resp["chunk"] or "end" not in resp:
            break
        params = {**params, "from": resp["end"]}
    return bodies


# --- scenario 2: join a remote room of N members -------------------------------------------


async def remote_room_join(
    server: FederatedServer, remote: FakeRemote, members: int
) -> dict[str, Any]:
    room_id = remote.host_room(members)
    bob = await server.register()
    start = time.perf_counter()
    await server.join(bob, room_id, via=[remote.name])
    elapsed = time.perf_counter() - start

    async def all_members() -> bool:
        status, body = await server.client_request(
            "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/joined_members", bob.token
        )
        return status == 200 and len(body["joined"]) == members + 1

    await eventually(all_members, f"{members + 1} members on {server.label}")
    return {"seconds": elapsed, "members": members}


# --- scenario 3: catch-up ------------------------------------------------------------------


async def catch_up(
    a: FederatedServer, b: FederatedServer, args: argparse.Namespace
) -> dict[str, Any]:
    alice = await a.register()
    carol = await b.register()
    room_id = await a.create_room(alice, preset="public_chat", room_version=ROOM_VERSION.identifier)
    await b.join(carol, room_id, via=[a.server_name])
    await a.send_message(alice, room_id, "before the outage")

    async def seen(body: str) -> bool:
        return any(e["content"].get("body") == body for e in await b.messages(carol, room_id, 10))

    await eventually(lambda: seen("before the outage"), "the first message on B")
    await asyncio.to_thread(b.stop)
    await b.close()
    down = time.monotonic()
    missed = [f"missed {i}" for i in range(args.missed)]
    for i, text in enumerate(missed):
        await asyncio.sleep(max(0.0, down + i * args.outage / args.missed - time.monotonic()))
        await a.send_message(alice, room_id, text)
    await asyncio.sleep(max(0.0, down + args.outage - time.monotonic()))
    restart = time.perf_counter()
    await asyncio.to_thread(b.start)
    answering = time.perf_counter()
    nudged = False
    deadline = restart + WAIT
    while True:
        status, resp = await b.client_request(
            "GET",
            f"/_matrix/client/v3/rooms/{room_id}/messages",
            carol.token,
            params={"dir": "b", "limit": str(args.missed + 10)},
        )
        bodies = (
            {e["content"].get("body") for e in resp.get("chunk", [])} if status == 200 else set()
        )
        if all(m in bodies for m in missed):
            break
        now = time.perf_counter()
        if now > deadline:
            raise AssertionError(f"{b.label} did not catch up within {WAIT} s")
        if not nudged and now - answering > args.nudge_after:
            nudged = True
            await b.send_message(carol, room_id, "back")
        await asyncio.sleep(0.1)
    done = time.perf_counter()
    return {
        "seconds": done - restart,
        "after_start_seconds": done - answering,
        "start_seconds": answering - restart,
        "nudged": nudged,
        "missed": args.missed,
    }


# --- scenario 4: fan-out --------------------------------------------------------------------


async def fan_out(
    server: FederatedServer, directory: Path, args: argparse.Namespace
) -> dict[str, Any]:
    pki = make_test_pki(directory / "fanout-pki")
    remotes = [FakeRemote(pki) for _ in range(args.destinations)]
    async with contextlib.AsyncExitStack() as stack:
        for remote in remotes:
            await stack.enter_async_context(remote.running())
        alice = await server.register()
        room_id = await server.create_room(
            alice, preset="public_chat", room_version=ROOM_VERSION.identifier
        )
        for remote in remotes:
            await remote_join(server, remote, room_id)

        async def delivered(text: str) -> float:
            start = time.perf_counter()
            await server.send_message(alice, room_id, text)

            async def everywhere() -> bool:
                return all(text in r.received_bodies for r in remotes)

            await eventually(everywhere, f"{text!r} at {len(remotes)} destinations", poll=0.005)
            return time.perf_counter() - start

        await delivered("warm-up")
        times = sorted([await delivered(f"fan-out {i}") for i in range(args.fanout_messages)])
    return {
        "median_ms": 1000 * times[len(times) // 2],
        "max_ms": 1000 * times[-1],
        "destinations": len(remotes),
        "messages": len(times),
    }


async def eventually(
    check: Callable[[], Any], what: str, *, timeout: float = WAIT, poll: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(poll)


# --- scenario 5: remote /keys/query -------------------------------------------------------


async def remote_keys_query(
    a: FederatedServer, b: FederatedServer, args: argparse.Namespace
) -> dict[str, Any]:
    """A's user asks for the keys of `--key-users` users of B: first sharing no room with
    them (every query goes to B over federation), then once they all joined a room with
    A's user (the servers may answer from their device-list caches)."""
    from tests.e2ee.support import Device

    alice = await a.register()
    users = []
    for i in range(args.key_users):
        user = await b.register(f"keys{i}")
        device = Device(user.user_id, user.device_id, user.token)
        status, body = await b.client_request(
            "POST",
            "/_matrix/client/v3/keys/upload",
            user.token,
            {"device_keys": device.device_keys()},
        )
        assert status == 200, body
        users.append(user)

    async def query() -> float:
        start = time.perf_counter()
        status, body = await a.client_request(
            "POST",
            "/_matrix/client/v3/keys/query",
            alice.token,
            {"device_keys": {u.user_id: [] for u in users}, "timeout": 30_000},
        )
        elapsed = time.perf_counter() - start
        assert status == 200, body
        assert not body.get("failures"), body.get("failures")
        assert all(body["device_keys"].get(u.user_id) for u in users), "keys missing"
        return elapsed

    async def median(n: int) -> float:
        times = sorted([await query() for _ in range(n)])
        return times[len(times) // 2]

    await query()
    apart = await median(args.key_queries)
    room_id = await a.create_room(alice, preset="public_chat")
    slots = asyncio.Semaphore(5)

    async def join(user: Any) -> None:
        async with slots:
            await b.join(user, room_id, via=[a.server_name])

    await asyncio.gather(*(join(u) for u in users))

    async def all_joined() -> bool:
        members = [
            e
            for e in await a.state(alice, room_id)
            if e["type"] == "m.room.member" and e["content"].get("membership") == "join"
        ]
        return len(members) == len(users) + 1

    await eventually(all_joined, f"{len(users)} users of B joined on A")
    # Let each server notice and fill its cache (a first query starts Starling's resyncs).
    await query()
    await asyncio.sleep(5)
    await query()
    sharing = await median(args.key_queries)
    return {
        "users": len(users),
        "queries": args.key_queries,
        "apart_median_ms": 1000 * apart,
        "sharing_median_ms": 1000 * sharing,
    }


# --- servers -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def servers(impl: str, directory: Path) -> AsyncIterator[list[FederatedServer]]:
    if impl == "starling":
        async with federation_servers(directory, 2, engine="sqlite") as pair:
            yield pair
        return
    from tests.federation.synapse import start_synapse

    pki = make_test_pki(directory / "pki")
    started: list[FederatedServer] = []
    try:
        for label in ("a", "b"):
            server = await asyncio.to_thread(start_synapse, directory / label, pki)
            server.label = f"synapse-{label}"
            started.append(server)
        yield started
    finally:
        for running in started:
            await running.close()
            await asyncio.to_thread(running.stop)


async def run_impl(impl: str, args: argparse.Namespace, scenarios: set[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    keep = os.environ.get("FEDBENCH_KEEP") is not None  # keep the servers' directories
    prefix = f"fedbench-{impl}-"
    place = (
        contextlib.nullcontext(tempfile.mkdtemp(prefix=prefix))
        if keep
        else tempfile.TemporaryDirectory(prefix=prefix)
    )
    with place as tmp:
        if keep:
            print(f"{impl}: servers' directories kept in {tmp}", file=sys.stderr)
        directory = Path(tmp)
        remote = FakeRemote(make_test_pki(directory / "remote-pki"))
        async with remote.running(), servers(impl, directory) as (a, b):
            try:
                if "send" in scenarios:
                    results["send"] = await inbound_send(a, remote, args)
                    results["send"]["pulled_from_remote"] = dict(remote.pulls)
                    print(impl, "send", results["send"], file=sys.stderr)
                if "join" in scenarios:
                    results["join"] = await remote_room_join(a, remote, args.members)
                    print(impl, "join", results["join"], file=sys.stderr)
                if "catchup" in scenarios:
                    results["catchup"] = await catch_up(a, b, args)
                    print(impl, "catchup", results["catchup"], file=sys.stderr)
                if "keys" in scenarios:
                    results["keys"] = await remote_keys_query(a, b, args)
                    print(impl, "keys", results["keys"], file=sys.stderr)
                if "fanout" in scenarios:
                    results["fanout"] = await fan_out(a, directory, args)
                    print(impl, "fanout", results["fanout"], file=sys.stderr)
            except BaseException:
                for server in (a, b):
                    print(
                        f"--- {server.label} log tail ---\n{server.log_tail(3000)}", file=sys.stderr
                    )
                raise
            if remote.misses:
                results.setdefault("notes", []).append(f"the fake remote answered {remote.misses}")
            for server in (a, b):
                if "Traceback" in server.log_tail(10**7):
                    results.setdefault("notes", []).append(f"a Traceback in {server.label}'s log")
    return results


# --- report --------------------------------------------------------------------------------


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> str:
    st, sy = results.get("starling", {}), results.get("synapse", {})
    lines = [
        "# Federation benchmark",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; Starling {git_commit()}; Synapse 1.163.2",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, load average at start "
        f"{args.load_at_start}; Python {sys.version.split()[0]}",
        f"- sizes: {args.txns} transactions of 50 PDUs (at most {args.time_limit} s); "
        f"a room of {args.members} members; {args.missed} messages missed over a "
        f"{args.outage} s outage, nudge after {args.nudge_after} s",
        "",
        "| row | Starling | Synapse | Starling's advantage |",
        "|---|---:|---:|---:|",
    ]

    def row(name: str, key: str, field_: str, unit: str, higher_better: bool) -> None:
        s = st.get(key, {}).get(field_)
        y = sy.get(key, {}).get(field_)
        ratio = ""
        if s and y:
            ratio = f"**{(s / y if higher_better else y / s):.2f}x**"

        def fmt(v: float | None) -> str:
            return f"{v:.1f} {unit}" if v is not None else "—"

        lines.append(f"| {name} | {fmt(s)} | {fmt(y)} | {ratio} |")

    row("inbound /send, accepted PDUs/s", "send", "pdus_per_s", "PDU/s", True)
    row(f"join a remote room of {args.members} members", "join", "seconds", "s", False)
    row(
        f"catch-up after a {args.outage:g} s outage, from the restarted server answering",
        "catchup",
        "after_start_seconds",
        "s",
        False,
    )
    row(
        "the same, from the restart (includes the server's start-up)",
        "catchup",
        "seconds",
        "s",
        False,
    )
    row(
        f"one message to {args.destinations} destination servers (median of "
        f"{args.fanout_messages})",
        "fanout",
        "median_ms",
        "ms",
        False,
    )
    row(
        f"/keys/query for {args.key_users} users of another server, sharing no room "
        f"(median of {args.key_queries})",
        "keys",
        "apart_median_ms",
        "ms",
        False,
    )
    row(
        f"the same once they share a room (device-list caches; median of {args.key_queries})",
        "keys",
        "sharing_median_ms",
        "ms",
        False,
    )
    lines.append("")
    for impl, res in results.items():
        for key, value in res.items():
            lines.append(f"- {impl} {key}: {value}")
    return "\n".join(lines) + "\n"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--txns", type=int, default=20, help="transactions of 50 PDUs")
    parser.add_argument("--time-limit", type=float, default=60.0, help="bound on the /send loop")
    parser.add_argument("--members", type=int, default=500)
    parser.add_argument("--missed", type=int, default=30)
    parser.add_argument("--outage", type=float, default=30.0)
    parser.add_argument("--nudge-after", type=float, default=10.0)
    parser.add_argument("--only", choices=["starling", "synapse"])
    parser.add_argument("--destinations", type=int, default=20, help="fan-out destinations")
    parser.add_argument("--fanout-messages", type=int, default=10)
    parser.add_argument("--key-users", type=int, default=100, help="users in /keys/query")
    parser.add_argument("--key-queries", type=int, default=10)
    parser.add_argument("--scenarios", default="send,join,catchup,fanout,keys")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    # SIGTERM (e.g. from `timeout`) unwinds like ^C, so the servers are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    args.txns = max(1, min(args.txns, 200))
    args.members = max(2, min(args.members, 5000))
    args.missed = max(1, min(args.missed, 500))
    args.outage = max(1.0, min(args.outage, 300.0))
    args.destinations = max(1, min(args.destinations, 100))
    args.fanout_messages = max(1, min(args.fanout_messages, 100))
    args.key_users = max(1, min(args.key_users, 1000))
    args.key_queries = max(1, min(args.key_queries, 100))
    args.load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    scenarios = set(args.scenarios.split(","))
    results: dict[str, dict[str, Any]] = {}
    for impl in ("starling", "synapse"):
        if args.only in (None, impl):
            results[impl] = asyncio.run(run_impl(impl, args, scenarios))
    text = report(args, results)
    print(text)
    if not args.no_write:
        out = ROOT / "benchmarks" / "results" / f"federation-{datetime.now(UTC):%Y%m%d-%H%M}.md"
        out.parent.mkdir(exist_ok=True)
        out.write_text(text)
        print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

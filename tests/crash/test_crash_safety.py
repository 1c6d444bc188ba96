"""Crash safety (issue 18): nothing acknowledged is lost, nothing happens twice, nothing
unacknowledged half-exists — across SIGKILLs of a real `starling serve` at random moments.

Several clients work at once against one server process: two users send room messages,
one sends to-device messages, one uploads one-time keys while another claims them, two
long-poll /sync (one reading
the room, one reading its to-device inbox). The test SIGKILLs the server at random
moments (STARLING_CRASH_KILLS times, at least 20 in CI; some more while it is still
starting), restarts it on the same data,
and the clients carry on as real clients do: a request without an answer is retried with
the same transaction ID, a /sync without an answer is retried with the same `since`.
After the last restart it checks:

- every message that got a 200 is in the room exactly once, with the event ID the 200
  gave, and retrying its transaction ID gives that event ID again; no message is there
  twice (unacknowledged ones at most once);
- the /sync chain that lived through every crash saw every message exactly once (no
  stream gap hid one from it), and so does a fresh /sync after the last restart;
- every to-device message that got a 200 reached the device exactly once;
- no one-time key is handed out twice by /keys/claim, and every one that got a 200 is
  either handed out or still counted (nothing beyond what was sent);
- in the database: every event with a stream position has its state groups, and every
  forward extremity is a stored event.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from starling.protocol.signing import SigningKey, sign_json
from starling.protocol.unpadded_base64 import encode_base64
from starling.storage import DatabaseConfig, open_database
from tests.crash.server import KillableServer
from tests.support.dbfixtures import ENGINES, fresh_database_url

pytestmark = pytest.mark.integration

KILLS = int(os.environ.get("STARLING_CRASH_KILLS", "20"))
# How long the clients work between a start and the next kill: short bursts keep the
# whole run near a minute while still landing kills mid-request.
BURST_SECONDS = (0.15, 0.8)
V3 = "/_matrix/client/v3"
TO_DEVICE_TYPE = "org.starling.crash_test"
SYNC_FILTER = '{"room":{"timeline":{"limit":1000},"state":{"lazy_load_members":true}}}'
KEY_TARGET = 60  # one-time keys Bob's device keeps on the server
NO_ROOMS_FILTER = '{"room":{"rooms":[]},"presence":{"not_types":["*"]}}'


class Unreachable(Exception):
    """No answer: the server was killed before or while serving the request."""


@dataclass
class Client:
    session: aiohttp.ClientSession
    base: str
    user_id: str
    device_id: str
    token: str

    async def call(
        self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        try:
            async with self.session.request(
                method,
                self.base + path,
                json=body,
                params=params,
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=aiohttp.ClientTimeout(total=60),
            ) as resp:
                return resp.status, await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as e:
            raise Unreachable(str(e)) from None


@dataclass
class Record:
    """What the clients asked for and what was acknowledged."""

    sent: dict[str, str] = field(default_factory=dict)  # message txn -> acked event ID
    attempted: set[str] = field(default_factory=set)  # message txns ever sent
    to_device_acked: set[str] = field(default_factory=set)
    to_device_attempted: set[str] = field(default_factory=set)
    keys_acked: set[str] = field(default_factory=set)
    keys_attempted: set[str] = field(default_factory=set)
    keys_claimed: list[str] = field(default_factory=list)  # key IDs handed out by 200s
    claims_unanswered: int = 0  # claims without an answer: each may have taken one key
    room_chain: list[str] = field(default_factory=list)  # event IDs seen by the /sync chain
    inbox: list[str] = field(default_factory=list)  # to-device ids seen by the inbox chain
    unexpected: list[str] = field(default_factory=list)  # non-200 answers to valid requests


class Workload:
    def __init__(self, server: KillableServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session
        self.up = asyncio.Event()
        self.stopping = False
        self.rec = Record()
        self.room_id = ""

    # --- setup, with the server up ---------------------------------------------------

    async def register(self, name: str) -> Client:
        async with self.session.post(
            f"{self.server.url}{V3}/register",
            json={"username": name, "password": "crash-test-pw", "auth": {"type": "m.login.dummy"}},
        ) as resp:
            body = await resp.json()
            assert resp.status == 200, body
        return Client(
            self.session, self.server.url, body["user_id"], body["device_id"], body["access_token"]
        )

    async def setup(self) -> None:
        self.alice = await self.register("alice")
        self.bob = await self.register("bob")
        self.carol = await self.register("carol")
        status, body = await self.alice.call("POST", f"{V3}/createRoom", {"preset": "public_chat"})
        assert status == 200, body
        self.room_id = body["room_id"]
        for c in (self.bob, self.carol):
            status, body = await c.call("POST", f"{V3}/join/{self.room_id}", {})
            assert status == 200, body
        # Bob's device keys, so his one-time keys can be signed and accepted.
        self.bob_key = SigningKey(secrets.token_bytes(32), self.bob.device_id)
        device_keys = sign_json(
            {
                "user_id": self.bob.user_id,
                "device_id": self.bob.device_id,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                "keys": {
                    f"curve25519:{self.bob.device_id}": encode_base64(secrets.token_bytes(32)),
                    f"ed25519:{self.bob.device_id}": self.bob_key.public_key_base64,
                },
            },
            self.bob.user_id,
            self.bob_key,
        )
        status, body = await self.bob.call(
            "POST", f"{V3}/keys/upload", {"device_keys": device_keys}
        )
        assert status == 200, body
        # The sync chains start before any workload, so they must see all of it.
        self.carol_since = await self._initial_since(self.carol, SYNC_FILTER)
        self.bob_since = await self._initial_since(self.bob, NO_ROOMS_FILTER)

    async def _initial_since(self, client: Client, filter_text: str) -> str:
        status, body = await client.call("GET", f"{V3}/sync", params={"filter": filter_text})
        assert status == 200, body
        since: str = body["next_batch"]
        return since

    # --- the clients ------------------------------------------------------------------

    async def _until_acked(self, client: Client, method: str, path: str, body: Any) -> Any:
        """Send until answered, as a client retrying with the same transaction does.
        None once stopping with the server down for good (never happens: the last start
        stays up)."""
        while True:
            await self.up.wait()
            try:
                status, answer = await client.call(method, path, body)
            except Unreachable:
                await asyncio.sleep(0.05)
                continue
            if status != 200:
                self.rec.unexpected.append(f"{method} {path}: {status} {answer}")
                await asyncio.sleep(0.05)
                if len(self.rec.unexpected) > 20:
                    raise AssertionError("\n".join(self.rec.unexpected))
                continue
            return answer

    async def sender(self, client: Client, label: str) -> None:
        n = 0
        while not self.stopping:
            n += 1
            txn = f"{label}-{n}"
            self.rec.attempted.add(txn)
            path = f"{V3}/rooms/{self.room_id}/send/m.room.message/{txn}"
            answer = await self._until_acked(
                client, "PUT", path, {"msgtype": "m.text", "body": txn}
            )
            self.rec.sent[txn] = answer["event_id"]

    async def to_device_sender(self) -> None:
        n = 0
        while not self.stopping:
            n += 1
            txn = f"td-{n}"
            self.rec.to_device_attempted.add(txn)
            body = {"messages": {self.bob.user_id: {self.bob.device_id: {"id": txn}}}}
            await self._until_acked(
                self.carol, "PUT", f"{V3}/sendToDevice/{TO_DEVICE_TYPE}/{txn}", body
            )
            self.rec.to_device_acked.add(txn)

    async def key_uploader(self) -> None:
        """Bob's device keeps about KEY_TARGET one-time keys on the server, as clients do:
        it uploads three more whenever the count it was last told is below the target."""
        n = 0
        count = 0
        while not self.stopping:
            if count >= KEY_TARGET:
                await asyncio.sleep(0.05)
                count = 0  # ask again (an empty upload answers the count)
                answer = await self._until_acked(self.bob, "POST", f"{V3}/keys/upload", {})
                count = answer["one_time_key_counts"].get("signed_curve25519", 0)
                continue
            n += 1
            keys = {}
            for i in range(3):
                key_id = f"K{n}x{i}"
                self.rec.keys_attempted.add(key_id)
                signed = sign_json(
                    {"key": encode_base64(secrets.token_bytes(32))},
                    self.bob.user_id,
                    self.bob_key,
                )
                keys[f"signed_curve25519:{key_id}"] = signed
            answer = await self._until_acked(
                self.bob, "POST", f"{V3}/keys/upload", {"one_time_keys": keys}
            )
            self.rec.keys_acked.update(k.partition(":")[2] for k in keys)
            count = answer["one_time_key_counts"].get("signed_curve25519", 0)

    async def key_claimer(self) -> None:
        """Carol claims Bob's one-time keys, as a client starting an Olm session does. A
        claim has no transaction ID, so one without an answer is not retried."""
        body = {"one_time_keys": {self.bob.user_id: {self.bob.device_id: "signed_curve25519"}}}
        while not self.stopping:
            await self.up.wait()
            try:
                status, answer = await self.carol.call("POST", f"{V3}/keys/claim", body)
            except Unreachable:
                self.rec.claims_unanswered += 1
                await asyncio.sleep(0.05)
                continue
            if status != 200:
                self.rec.unexpected.append(f"POST /keys/claim: {status} {answer}")
                continue
            got = answer["one_time_keys"].get(self.bob.user_id, {}).get(self.bob.device_id, {})
            self.rec.keys_claimed.extend(k.partition(":")[2] for k in got)
            await asyncio.sleep(0.02)

    async def _sync_once(self, client: Client, since: str, filter_text: str, timeout: int) -> Any:
        params = {"since": since, "timeout": str(timeout), "filter": filter_text}
        while True:
            await self.up.wait()
            try:
                status, body = await client.call("GET", f"{V3}/sync", params=params)
            except Unreachable:
                await asyncio.sleep(0.05)
                continue
            if status != 200:
                self.rec.unexpected.append(f"GET /sync since={since}: {status} {body}")
                await asyncio.sleep(0.05)
                continue
            return body

    def _take_room(self, body: Any) -> int:
        room = body.get("rooms", {}).get("join", {}).get(self.room_id)
        if room is None:
            return 0
        timeline = room.get("timeline", {})
        if timeline.get("limited"):
            self.rec.unexpected.append(f"limited incremental timeline: {timeline}")
        new = [
            e["event_id"] for e in timeline.get("events", []) if e.get("type") == "m.room.message"
        ]
        self.rec.room_chain.extend(new)
        return len(new)

    def _take_inbox(self, body: Any) -> int:
        events = body.get("to_device", {}).get("events", [])
        new = [e["content"]["id"] for e in events if e.get("type") == TO_DEVICE_TYPE]
        self.rec.inbox.extend(new)
        return len(new)

    async def room_syncer(self) -> None:
        while not self.stopping:
            body = await self._sync_once(self.carol, self.carol_since, SYNC_FILTER, 500)
            self._take_room(body)
            self.carol_since = body["next_batch"]

    async def inbox_syncer(self) -> None:
        while not self.stopping:
            body = await self._sync_once(self.bob, self.bob_since, NO_ROOMS_FILTER, 500)
            self._take_inbox(body)
            self.bob_since = body["next_batch"]

    async def drain_chains(self) -> None:
        """After the writers stopped: sync both chains until nothing new arrives."""
        quiet = 0
        while quiet < 2:
            room = await self._sync_once(self.carol, self.carol_since, SYNC_FILTER, 0)
            inbox = await self._sync_once(self.bob, self.bob_since, NO_ROOMS_FILTER, 0)
            got = self._take_room(room) + self._take_inbox(inbox)
            self.carol_since, self.bob_since = room["next_batch"], inbox["next_batch"]
            quiet = quiet + 1 if got == 0 else 0


async def _run(engine: str, tmp_path: Path) -> None:
    rng = random.Random(os.environ.get("STARLING_CRASH_SEED") or secrets.randbits(32))
    async with fresh_database_url(engine, tmp_path) as db_url:
        data_dir = tmp_path / "server"
        data_dir.mkdir()
        server = await asyncio.to_thread(
            KillableServer, data_dir, "sqlite" if engine == "sqlite" else db_url
        )
        try:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                w = Workload(server, session)
                # The first start migrates an empty database: crash in the middle of that.
                await server.start_and_kill_early(rng.uniform(0.5, 2.0))
                await server.start()
                await w.setup()
                w.up.set()
                tasks = [
                    asyncio.create_task(w.sender(w.alice, "a1")),
                    asyncio.create_task(w.sender(w.alice, "a2")),
                    asyncio.create_task(w.sender(w.bob, "b1")),
                    asyncio.create_task(w.to_device_sender()),
                    asyncio.create_task(w.key_uploader()),
                    asyncio.create_task(w.key_claimer()),
                    asyncio.create_task(w.room_syncer()),
                    asyncio.create_task(w.inbox_syncer()),
                ]
                for _ in range(KILLS):
                    await asyncio.sleep(rng.uniform(*BURST_SECONDS))
                    w.up.clear()
                    await asyncio.to_thread(server.kill)
                    if rng.random() < 0.2:
                        await server.start_and_kill_early(rng.uniform(0, 1.0))
                    await server.start()
                    w.up.set()
                    for t in tasks:
                        if t.done():
                            t.result()  # surface a client's failure now
                # Last start stays up: every pending request gets its answer.
                w.stopping = True
                await asyncio.wait_for(asyncio.gather(*tasks), 120)
                await w.drain_chains()
                await _check_api(w)
            await asyncio.to_thread(server.stop)
            await _check_database(
                engine, db_url if engine == "postgres" else str(data_dir / "starling.db"), w
            )
        finally:
            await asyncio.to_thread(server.kill)
    print(
        f"crash test ({engine}): {server.starts - 1} kills ({server.early_kills} while"
        f" starting), {len(w.rec.sent)} messages, "
        f"{len(w.rec.to_device_acked)} to-device messages, {len(w.rec.keys_acked)} keys"
        f" ({len(w.rec.keys_claimed)} claimed)"
    )


async def _check_api(w: Workload) -> None:
    rec = w.rec
    assert not rec.unexpected, "\n".join(rec.unexpected)
    assert len(rec.sent) >= KILLS, "too little work got through to say anything"

    # /messages: the whole room, newest first.
    bodies: Counter[str] = Counter()
    event_of_body: dict[str, str] = {}
    token: str | None = None
    while True:
        params = {"dir": "b", "limit": "1000"}
        if token:
            params["from"] = token
        status, page = await w.alice.call("GET", f"{V3}/rooms/{w.room_id}/messages", params=params)
        assert status == 200, page
        for e in page["chunk"]:
            if e["type"] == "m.room.message":
                bodies[e["content"]["body"]] += 1
                event_of_body[e["content"]["body"]] = e["event_id"]
        if not page["chunk"] or "end" not in page:
            break
        token = page["end"]
    twice = {b: n for b, n in bodies.items() if n > 1}
    assert not twice, f"messages stored more than once: {twice}"
    assert set(bodies) <= rec.attempted, set(bodies) - rec.attempted
    lost = {txn for txn in rec.sent if txn not in bodies}
    assert not lost, f"acknowledged messages missing from /messages: {sorted(lost)}"
    wrong = {t: (e, event_of_body[t]) for t, e in rec.sent.items() if event_of_body[t] != e}
    assert not wrong, f"acknowledged event IDs differ from the stored ones: {wrong}"

    # The same transaction IDs again: the same events, nothing new.
    for txn, event_id in rec.sent.items():
        label = txn.rpartition("-")[0]
        client = w.bob if label == "b1" else w.alice
        status, body = await client.call(
            "PUT",
            f"{V3}/rooms/{w.room_id}/send/m.room.message/{txn}",
            {"msgtype": "m.text", "body": txn},
        )
        assert (status, body.get("event_id")) == (200, event_id), (txn, status, body)

    # The sync chain that lived through every crash.
    acked_ids = set(rec.sent.values())
    chain = Counter(rec.room_chain)
    assert not {e for e, n in chain.items() if n > 1}, "the /sync chain saw an event twice"
    missed = acked_ids - set(chain)
    assert not missed, f"the /sync chain never saw {len(missed)} acknowledged events"

    # A fresh /sync after the last restart, then back through its prev_batch: every
    # acknowledged event is reachable from it.
    status, body = await w.alice.call("GET", f"{V3}/sync", params={"filter": SYNC_FILTER})
    assert status == 200, body
    timeline = body["rooms"]["join"][w.room_id]["timeline"]
    fresh = {e["event_id"] for e in timeline["events"]}
    token = timeline.get("prev_batch") if timeline.get("limited") else None
    while token and not acked_ids <= fresh:
        status, page = await w.alice.call(
            "GET",
            f"{V3}/rooms/{w.room_id}/messages",
            params={"dir": "b", "limit": "1000", "from": token},
        )
        assert status == 200, page
        fresh.update(e["event_id"] for e in page["chunk"])
        token = page.get("end") if page["chunk"] else None
    assert acked_ids <= fresh, f"fresh /sync misses {len(acked_ids - fresh)} events"

    # To-device: every acknowledged message delivered exactly once.
    inbox = Counter(rec.inbox)
    assert not {m for m, n in inbox.items() if n > 1}, "a to-device message arrived twice"
    assert set(inbox) <= rec.to_device_attempted
    undelivered = rec.to_device_acked - set(inbox)
    assert not undelivered, f"acknowledged to-device messages never delivered: {undelivered}"

    # One-time keys: none handed out twice, none invented, all acknowledged ones either
    # handed out or still there.
    claimed = Counter(rec.keys_claimed)
    assert not {k for k, n in claimed.items() if n > 1}, "a one-time key was claimed twice"
    assert set(claimed) <= rec.keys_attempted
    status, body = await w.bob.call("POST", f"{V3}/keys/upload", {})
    assert status == 200, body
    count = body["one_time_key_counts"].get("signed_curve25519", 0)
    most = len(rec.keys_attempted - set(claimed))
    least = len(rec.keys_acked - set(claimed)) - rec.claims_unanswered
    assert least <= count <= most, (count, least, most)


async def _check_database(engine: str, url: str, w: Workload) -> None:
    db = await open_database(DatabaseConfig(url=url), migrate=False)
    try:
        async with db.transaction() as txn:
            no_state = await txn.fetch_all(
                "SELECT e.event_id, e.type, e.state_before, e.state_after FROM events e"
                " LEFT JOIN state_groups b ON b.state_group = e.state_before"
                " LEFT JOIN state_groups a ON a.state_group = e.state_after"
                " WHERE e.stream_ordering IS NOT NULL"
                " AND (a.state_group IS NULL OR (b.state_group IS NULL"
                # The create event alone has no state before it.
                " AND NOT (e.state_before IS NULL AND e.type = 'm.room.create')))"
            )
            dangling = await txn.fetch_all(
                "SELECT f.event_id FROM forward_extremities f"
                " LEFT JOIN events e ON e.event_id = f.event_id WHERE e.event_id IS NULL"
            )
            stored = await txn.fetch_val(
                "SELECT COUNT(*) FROM events WHERE room_id = ? AND type = 'm.room.message'",
                w.room_id,
            )
    finally:
        await db.close()
    assert not [tuple(r) for r in no_state], "events without their state groups"
    assert not [tuple(r) for r in dangling], "forward extremities that are not stored events"
    assert len(w.rec.sent) <= int(stored) <= len(w.rec.attempted)


@pytest.mark.parametrize("engine", ENGINES)
async def test_sigkill_loses_nothing_acknowledged(engine: str, tmp_path: Path) -> None:
    await asyncio.wait_for(_run(engine, tmp_path), 600)

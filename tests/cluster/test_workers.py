"""Three processes of one server on one PostgreSQL and one Redis (issue 17, docs/scaling.md).

A real `starling serve` main process and two `--worker` processes, each with its own
listener, share the database and the bus; clients talk to any of them, as behind a load
balancer. Checked, each against the running trio:

- a /sync long-poll on A wakes for a message sent through B, promptly, and for a user
  typing through C;
- concurrent sends to one room through all three give one DAG: a single forward
  extremity, every event's prev_events the event before it, the same history and current
  state read through each process; a transaction ID retried through another process
  gives back the original event;
- an access token logged out on A, and a token of an account deactivated on A, are
  refused on C (whose cache held them) within a second; a WebSocket of that device open
  on B is closed;
- SIGKILLing a worker while it sends loses no acknowledged message, and the other two
  carry on (their streams are not held back by the dead one's unfinished transaction);
- presence is one state whichever process a client reaches: set on A, it shows in a
  long-poll on C and in GET on B (which held the old state); a user whose presence was
  set on one process and who then long-polls through another stays online past the sync
  timeout, and one who stopped syncing goes offline (the timeouts run on one process,
  told by the others who syncs through them);
- rate limits are one allowance whichever process a client reaches: an admin's
  per-user message limit set on A holds on B and C, and failed logins through all three
  lock the account out on every one;
- the admin API's background tasks (room deletion, user redaction) started on A report
  their status on B and C;
- single sign-on (OpenID Connect) started on A comes back from the provider to C, and the
  login token it hands out logs in on B; the state is good once, on any process.

PostgreSQL only: several processes on one SQLite file are not supported (the config
refuses `redis:` with SQLite). Needs Redis at 127.0.0.1:6379 ($STARLING_TEST_REDIS):
skipped with the reason when it is down, a failure under CI.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import orjson
import pytest
import pytest_asyncio
import yaml
from aiohttp import web

from starling.storage import open_database
from tests.crash.server import KillableServer, free_port
from tests.modules.oidc_provider import OidcProvider
from tests.support.dbfixtures import fresh_database_url

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

V3 = "/_matrix/client/v3"
FILTER = '{"room":{"timeline":{"limit":1000}}}'
REDIS_ENV = "STARLING_TEST_REDIS"
SSO_CLIENT = "https://app.example/after-login"


def _redis_address() -> tuple[str, int]:
    host, _, port = (os.environ.get(REDIS_ENV) or "127.0.0.1:6379").rpartition(":")
    return host, int(port)


async def _require_redis() -> None:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    host, port = _redis_address()
    client = aioredis.Redis(host=host, port=port, socket_connect_timeout=2)
    try:
        await client.ping()
    except (RedisError, OSError) as e:
        message = f"Redis at {host}:{port} (${REDIS_ENV}) is unreachable: {e}"
        if os.environ.get("CI"):
            raise RuntimeError(message + " — CI runs the workers test") from None
        pytest.skip(message)
    finally:
        await client.aclose()


class Worker(KillableServer):
    """One process of the trio: the shared config plus a file with its own listener."""

    def __init__(self, data_dir: Path, name: str | None) -> None:
        self.data_dir = data_dir
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / f"{name or 'main'}.log"
        self.starts = 0
        self.early_kills = 0
        self._proc = None
        own = data_dir / f"{name or 'main'}.yaml"
        own.write_text(
            yaml.safe_dump(
                {
                    "listeners": [
                        {
                            "port": self.port,
                            "bind_addresses": ["127.0.0.1"],
                            "resources": [{"names": ["client"]}],
                        }
                    ]
                }
            )
        )

    def _spawn(self) -> Any:
        import subprocess

        from tests.crash.server import STARLING

        command = [
            *STARLING,
            "serve",
            "-c",
            str(self.data_dir / "starling.yaml"),
            "-c",
            str(self.data_dir / f"{self.name or 'main'}.yaml"),
        ]
        if self.name:
            command += ["--worker", self.name]
        with open(self.log, "ab") as out:
            return subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )


class Client:
    def __init__(self, session: aiohttp.ClientSession, user_id: str, token: str) -> None:
        self.session = session
        self.user_id = user_id
        self.token = token

    async def call(
        self, base: str, method: str, path: str, body: Any = None, **params: str
    ) -> tuple[int, Any]:
        async with self.session.request(
            method,
            base + V3 + path,
            json=body,
            params=params or None,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=aiohttp.ClientTimeout(total=60),
        ) as resp:
            return resp.status, await resp.json(content_type=None)

    async def ok(self, base: str, method: str, path: str, body: Any = None, **params: str) -> Any:
        status, answer = await self.call(base, method, path, body, **params)
        assert status == 200, (method, path, status, answer)
        return answer


class Trio:
    def __init__(
        self,
        workers: list[Worker],
        session: aiohttp.ClientSession,
        dsn: str,
        idp: OidcProvider,
    ) -> None:
        self.a, self.b, self.c = workers
        self.workers = workers
        self.session = session
        self.dsn = dsn
        self.idp = idp

    async def register(self, name: str, base: str) -> Client:
        async with self.session.post(
            f"{base}{V3}/register",
            json={"username": name, "password": "workers-pw", "auth": {"type": "m.login.dummy"}},
        ) as resp:
            answer = await resp.json()
            assert resp.status == 200, answer
        return Client(self.session, answer["user_id"], answer["access_token"])

    async def login(self, name: str, base: str) -> Client:
        async with self.session.post(
            f"{base}{V3}/login",
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": name},
                "password": "workers-pw",
            },
        ) as resp:
            answer = await resp.json()
            assert resp.status == 200, answer
        return Client(self.session, answer["user_id"], answer["access_token"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def idp() -> AsyncIterator[OidcProvider]:
    """An OpenID Connect provider on loopback (tests/modules/oidc_provider.py)."""
    provider = OidcProvider()
    runner = web.AppRunner(provider.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    provider.issuer = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield provider
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def trio(tmp_path_factory: pytest.TempPathFactory, idp: OidcProvider) -> AsyncIterator[Trio]:
    await _require_redis()
    data_dir = tmp_path_factory.mktemp("workers")
    async with fresh_database_url("postgres", data_dir) as dsn:
        main = KillableServer(data_dir, dsn)  # writes starling.yaml and the signing key
        config_path = data_dir / "starling.yaml"
        config = yaml.safe_load(config_path.read_text())
        host, port = _redis_address()
        config["redis"] = {"host": host, "port": port}
        config["oidc_providers"] = [
            {
                "idp_id": "test",
                "idp_name": "Test IdP",
                "issuer": idp.issuer,
                "client_id": idp.client_id,
                "client_secret": idp.client_secret,
                "scopes": ["openid", "profile"],
                "user_mapping_provider": {
                    "config": {"localpart_template": "{{ user.preferred_username }}"}
                },
            }
        ]
        config["sso"] = {"client_whitelist": [SSO_CLIENT]}
        # Three wrong passwords per account (no refill within a test), every other
        # limit off (generate-config --no-rate-limit).
        config["rc_login"]["failed_attempts"] = {"per_second": 0.001, "burst_count": 3}
        workers = [Worker(data_dir, None), Worker(data_dir, "w1"), Worker(data_dir, "w2")]
        # The load balancer's address would be here; the first process stands in for it.
        config["public_baseurl"] = workers[0].url + "/"
        config_path.write_text(yaml.safe_dump(config))
        del main
        try:
            await asyncio.gather(*(w.start() for w in workers))
            async with aiohttp.ClientSession() as session:
                yield Trio(workers, session, dsn, idp)
        finally:
            for w in workers:
                w.stop()


async def _room_with(trio: Trio) -> tuple[Client, Client, str]:
    suffix = secrets.token_hex(3)
    alice = await trio.register(f"alice{suffix}", trio.a.url)
    bob = await trio.register(f"bob{suffix}", trio.b.url)
    room = (await alice.ok(trio.a.url, "POST", "/createRoom", {"preset": "public_chat"}))["room_id"]
    await bob.ok(trio.c.url, "POST", f"/join/{room}", {})
    return alice, bob, room


async def _settled_sync(client: Client, base: str) -> str:
    """A sync token after which nothing is pending (what the set-up did has arrived)."""
    since = (await client.ok(base, "GET", "/sync", timeout="0"))["next_batch"]
    for _ in range(20):
        answer = await client.ok(base, "GET", "/sync", since=since, timeout="300")
        if answer["next_batch"] == since:
            return since
        since = answer["next_batch"]
    raise AssertionError("the sync stream did not settle")


async def test_sync_on_one_worker_wakes_for_a_send_through_another(trio: Trio) -> None:
    alice, bob, room = await _room_with(trio)
    since = await _settled_sync(bob, trio.a.url)
    latencies = []
    for i in range(3):
        poll = asyncio.ensure_future(
            bob.ok(trio.a.url, "GET", "/sync", since=since, timeout="20000")
        )
        await asyncio.sleep(0.3)  # the long-poll is waiting on A
        assert not poll.done()
        sent_at = time.monotonic()
        event_id = (
            await alice.ok(
                trio.b.url,
                "PUT",
                f"/rooms/{room}/send/m.room.message/wake{i}",
                {"msgtype": "m.text", "body": f"through B {i}"},
            )
        )["event_id"]
        answer = await asyncio.wait_for(poll, 10)
        latencies.append(time.monotonic() - sent_at)
        timeline = answer["rooms"]["join"][room]["timeline"]["events"]
        assert event_id in [e["event_id"] for e in timeline]
        since = answer["next_batch"]
    # "Within milliseconds": the send's own round trip plus one bus hop; bounded loosely
    # so that a loaded CI machine does not make it flaky.
    assert max(latencies) < 2.0, latencies


async def test_typing_through_one_worker_shows_in_a_sync_on_another(trio: Trio) -> None:
    alice, bob, room = await _room_with(trio)
    since = await _settled_sync(bob, trio.a.url)
    poll = asyncio.ensure_future(bob.ok(trio.a.url, "GET", "/sync", since=since, timeout="20000"))
    await asyncio.sleep(0.3)
    await alice.ok(
        trio.c.url,
        "PUT",
        f"/rooms/{room}/typing/{alice.user_id}",
        {"typing": True, "timeout": 30000},
    )
    answer = await asyncio.wait_for(poll, 10)
    ephemeral = answer["rooms"]["join"][room]["ephemeral"]["events"]
    typing = [e for e in ephemeral if e["type"] == "m.typing"]
    assert typing and typing[0]["content"]["user_ids"] == [alice.user_id]


async def test_concurrent_sends_through_three_workers_give_one_dag(trio: Trio) -> None:
    alice, bob, room = await _room_with(trio)
    per_worker = 12
    sinces = [await _settled_sync(bob, w.url) for w in trio.workers]
    seen: list[list[str]] = [[] for _ in trio.workers]
    sending = True

    async def follow(index: int) -> None:
        """Bob's sync stream on one process, while the three send: every event once."""
        since = sinces[index]
        base = trio.workers[index].url
        while sending or not all_sent <= set(seen[index]):
            answer = await bob.ok(base, "GET", "/sync", since=since, timeout="1000", filter=FILTER)
            since = answer["next_batch"]
            joined = answer["rooms"]["join"].get(room)
            if joined:
                assert not joined["timeline"]["limited"]
                seen[index] += [e["event_id"] for e in joined["timeline"]["events"]]

    all_sent: set[str] = set()
    followers = [asyncio.ensure_future(follow(i)) for i in range(3)]

    async def send(client: Client, base: str, tag: str) -> list[str]:
        ids = []
        for i in range(per_worker):
            answer = await client.ok(
                base,
                "PUT",
                f"/rooms/{room}/send/m.room.message/{tag}-{i}",
                {"msgtype": "m.text", "body": f"{tag} {i}"},
            )
            ids.append(answer["event_id"])
        return ids

    sent = await asyncio.gather(
        send(alice, trio.a.url, "a"),
        send(bob, trio.b.url, "b"),
        send(alice, trio.c.url, "c"),
        # A state change racing with the messages: state must come out the same everywhere.
        alice.ok(trio.b.url, "PUT", f"/rooms/{room}/state/m.room.topic/", {"topic": "raced"}),
    )
    all_sent |= {e for ids in sent[:3] for e in ids}
    assert len(all_sent) == 3 * per_worker
    sending = False
    # Every process's sync stream got every event exactly once (no position shown before
    # the news of an earlier commit by another process, its room caches dropped first).
    done, pending = await asyncio.wait(followers, timeout=30)
    for task in pending:
        task.cancel()
    missing = {i: sorted(all_sent - set(events)) for i, events in enumerate(seen)}
    assert not pending, f"sync streams (by process) never showed: {missing}"
    for task in done:
        task.result()
    for events in seen:
        assert all_sent <= set(events)
        assert len(events) == len(set(events))

    # A retried transaction ID through other processes gives the original event.
    again_b = await alice.ok(
        trio.b.url,
        "PUT",
        f"/rooms/{room}/send/m.room.message/a-0",
        {"msgtype": "m.text", "body": "x"},
    )
    again_c = await alice.ok(
        trio.c.url,
        "PUT",
        f"/rooms/{room}/send/m.room.message/a-0",
        {"msgtype": "m.text", "body": "x"},
    )
    assert again_b["event_id"] == again_c["event_id"] == sent[0][0]

    # One DAG: one forward extremity, each timeline event on top of the one before.
    db = await open_database(trio.dsn, migrate=False)
    try:
        rows = await db.fetch_all(
            "SELECT event_id, json FROM events WHERE room_id = ? AND NOT outlier"
            " ORDER BY stream_ordering",
            room,
        )
        extremities = await db.fetch_all(
            "SELECT event_id FROM forward_extremities WHERE room_id = ?", room
        )
    finally:
        await db.close()

    chain = [(r["event_id"], orjson.loads(r["json"])) for r in rows]
    assert [r["event_id"] for r in extremities] == [chain[-1][0]]
    for (prev_id, prev), (_, event) in itertools.pairwise(chain):
        assert event["prev_events"] == [prev_id]
        assert event["depth"] == prev["depth"] + 1
    assert all_sent <= {event_id for event_id, _ in chain}

    # The same history and current state through every process.
    histories, states = [], []
    for w in trio.workers:
        messages = await bob.ok(w.url, "GET", f"/rooms/{room}/messages", dir="b", limit="100")
        histories.append([e["event_id"] for e in messages["chunk"]])
        state = await bob.ok(w.url, "GET", f"/rooms/{room}/state")
        states.append(sorted((e["type"], e["state_key"], e["event_id"]) for e in state))
    assert histories[0] == histories[1] == histories[2]
    assert all_sent <= set(histories[0])
    assert states[0] == states[1] == states[2]
    assert ("m.room.topic", "", sent[3]["event_id"]) in states[0]


async def test_a_token_logged_out_on_one_worker_is_refused_on_another(trio: Trio) -> None:
    name = f"carol{secrets.token_hex(3)}"
    await trio.register(name, trio.a.url)
    second = await trio.login(name, trio.a.url)
    await second.ok(trio.c.url, "GET", "/account/whoami")  # cached on C now
    await second.ok(trio.a.url, "POST", "/logout", {})
    deadline = time.monotonic() + 1.0
    while True:
        status, answer = await second.call(trio.c.url, "GET", "/account/whoami")
        if status == 401:
            assert answer["errcode"] == "M_UNKNOWN_TOKEN"
            break
        assert time.monotonic() < deadline, "C still accepts a token logged out on A"
        await asyncio.sleep(0.02)


async def test_an_account_deactivated_on_one_worker_is_refused_on_another(trio: Trio) -> None:
    name = f"dave{secrets.token_hex(3)}"
    dave = await trio.register(name, trio.a.url)
    await dave.ok(trio.c.url, "GET", "/account/whoami")  # cached on C now
    await dave.ok(
        trio.a.url,
        "POST",
        "/account/deactivate",
        {
            "auth": {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": name},
                "password": "workers-pw",
            }
        },
    )
    deadline = time.monotonic() + 1.0
    while True:
        status, _ = await dave.call(trio.c.url, "GET", "/account/whoami")
        if status == 401:
            break
        assert time.monotonic() < deadline, "C still accepts a deactivated account's token"
        await asyncio.sleep(0.02)


async def test_killing_a_worker_loses_no_acknowledged_event(trio: Trio) -> None:
    alice, bob, room = await _room_with(trio)
    acknowledged: list[str] = []

    async def keep_sending() -> None:
        for i in range(10_000):
            status, answer = await alice.call(
                trio.b.url,
                "PUT",
                f"/rooms/{room}/send/m.room.message/k{i}",
                {"msgtype": "m.text", "body": f"before the kill {i}"},
            )
            assert status == 200, answer
            acknowledged.append(answer["event_id"])

    sender = asyncio.ensure_future(keep_sending())
    await asyncio.sleep(1.0)
    await asyncio.to_thread(trio.b.kill)
    with pytest.raises((aiohttp.ClientError, asyncio.TimeoutError)):
        await sender
    assert acknowledged, "nothing was sent before the kill"

    # The others carry on: a send through C reaches a sync on A.
    after = (
        await bob.ok(
            trio.c.url,
            "PUT",
            f"/rooms/{room}/send/m.room.message/after",
            {"msgtype": "m.text", "body": "after the kill"},
        )
    )["event_id"]
    seen: set[str] = set()
    since = None
    for _ in range(20):
        params = {"timeout": "2000"}
        if since is not None:
            params["since"] = since
        answer = await bob.ok(trio.a.url, "GET", "/sync", **params)
        since = answer["next_batch"]
        joined = answer["rooms"]["join"].get(room)
        if joined:
            seen |= {e["event_id"] for e in joined["timeline"]["events"]}
        if after in seen:
            break
    assert after in seen
    history = await bob.ok(trio.c.url, "GET", f"/rooms/{room}/messages", dir="b", limit="1000")
    stored = {e["event_id"] for e in history["chunk"]}
    assert set(acknowledged) <= stored
    # B comes back and serves again.
    await trio.b.start()
    await bob.ok(trio.b.url, "GET", "/sync", timeout="0")


async def test_sso_callback_on_another_worker_logs_in(trio: Trio) -> None:
    """Behind a load balancer the provider's redirect back lands on any process: the
    SSO session (state, nonce, PKCE verifier, cookie hash) is in PostgreSQL, and so is
    the login token."""
    name = f"erin{secrets.token_hex(3)}"
    trio.idp.next_user = {"sub": f"subject-{name}", "preferred_username": name}
    async with aiohttp.ClientSession() as browser:
        async with browser.get(
            f"{trio.a.url}{V3}/login/sso/redirect/oidc-test",
            params={"redirectUrl": SSO_CLIENT},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 302, await resp.text()
            to_idp = resp.headers["Location"]
            cookie = resp.cookies["starling_oidc_session"].value
        async with browser.get(to_idp, allow_redirects=False) as resp:
            assert resp.status == 302, await resp.text()
            back = urlsplit(resp.headers["Location"])
        assert back.path == "/_synapse/client/oidc/callback"
        callback = f"{back.path}?{back.query}"
        headers = {"Cookie": f"starling_oidc_session={cookie}"}
        async with browser.get(
            trio.c.url + callback, headers=headers, allow_redirects=False
        ) as resp:
            assert resp.status == 302, await resp.text()
            location = resp.headers["Location"]
        # The state is good once, whichever process sees it again.
        async with browser.get(
            trio.b.url + callback, headers=headers, allow_redirects=False
        ) as resp:
            assert resp.status == 400
    assert location.startswith(SSO_CLIENT + "?")
    token = parse_qs(urlsplit(location).query)["loginToken"][0]
    login = {"type": "m.login.token", "token": token}
    async with trio.session.post(f"{trio.b.url}{V3}/login", json=login) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
    assert answer["user_id"] == f"@{name}:localhost"
    # ... and once: not again on A.
    async with trio.session.post(f"{trio.a.url}{V3}/login", json=login) as resp:
        assert resp.status == 403
    me = Client(trio.session, answer["user_id"], answer["access_token"])
    assert (await me.ok(trio.c.url, "GET", "/account/whoami"))["user_id"] == answer["user_id"]


async def _admin(trio: Trio) -> Client:
    name = f"root{secrets.token_hex(3)}"
    await trio.register(name, trio.a.url)
    db = await open_database(trio.dsn, migrate=False)
    try:
        await db.execute("UPDATE users SET admin = ? WHERE user_id = ?", True, f"@{name}:localhost")
    finally:
        await db.close()
    return await trio.login(name, trio.a.url)  # a new token: not cached as a non-admin


async def test_a_message_limit_is_one_allowance_across_workers(trio: Trio) -> None:
    admin = await _admin(trio)
    alice, _, room = await _room_with(trio)
    override = f"/_synapse/admin/v1/users/{alice.user_id}/override_ratelimit"
    # Three messages, never refilled; set on A, so B and C must hear of it.
    async with trio.session.post(
        trio.a.url + override,
        json={"messages_per_second": 0, "burst_count": 3},
        headers={"Authorization": f"Bearer {admin.token}"},
    ) as resp:
        assert resp.status == 200, await resp.text()

    async def send(worker: Worker, i: int) -> tuple[int, Any]:
        return await alice.call(
            worker.url,
            "PUT",
            f"/rooms/{room}/send/m.room.message/limited{i}",
            {"msgtype": "m.text", "body": f"limited {i}"},
        )

    for i, worker in enumerate((trio.b, trio.c, trio.a)):
        status, answer = await send(worker, i)
        assert status == 200, (worker.name, answer)
    for i, worker in enumerate((trio.b, trio.c, trio.a), start=3):
        status, answer = await send(worker, i)
        assert status == 429, (worker.name, answer)
        assert answer["errcode"] == "M_LIMIT_EXCEEDED"
    # Lifted on C: every process's limit goes back to the config's (unlimited here).
    async with trio.session.delete(
        trio.c.url + override, headers={"Authorization": f"Bearer {admin.token}"}
    ) as resp:
        assert resp.status == 200, await resp.text()
    deadline = time.monotonic() + 1.0
    while (await send(trio.a, 10))[0] != 200:
        assert time.monotonic() < deadline, "A still applies the override lifted on C"
        await asyncio.sleep(0.02)
    assert (await send(trio.b, 11))[0] == 200


async def test_failed_logins_through_every_worker_lock_the_account_out(trio: Trio) -> None:
    name = f"frank{secrets.token_hex(3)}"
    await trio.register(name, trio.a.url)

    async def login(worker: Worker, password: str) -> tuple[int, Any]:
        async with trio.session.post(
            f"{worker.url}{V3}/login",
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": name},
                "password": password,
            },
        ) as resp:
            return resp.status, await resp.json()

    # rc_login.failed_attempts: 3 — one try through each process uses them up.
    for worker in trio.workers:
        status, answer = await login(worker, "wrong")
        assert (status, answer["errcode"]) == (403, "M_FORBIDDEN"), worker.name
    status, answer = await login(trio.a, "wrong")
    assert (status, answer["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    # Locked out everywhere, even with the right password.
    for worker in (trio.b, trio.c):
        status, answer = await login(worker, "workers-pw")
        assert (status, answer["errcode"]) == (429, "M_LIMIT_EXCEEDED"), worker.name


async def _presence(client: Client, worker: Worker, user_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = await client.ok(worker.url, "GET", f"/presence/{user_id}/status")
    return answer


async def test_presence_set_on_one_worker_is_seen_on_the_others(trio: Trio) -> None:
    alice, bob, _ = await _room_with(trio)
    # Bob joined through C; B hears of the join over the bus, a few ms later (more under
    # load): until then B refuses him alice's presence (403, they share no room yet).
    for _ in range(100):
        status, answer = await bob.call(trio.b.url, "GET", f"/presence/{alice.user_id}/status")
        if status != 403:
            break
        await asyncio.sleep(0.05)
    # B holds alice's state (offline) from this read.
    assert (status, answer["presence"]) == (200, "offline")
    since = await _settled_sync(bob, trio.c.url)
    poll = asyncio.ensure_future(bob.ok(trio.c.url, "GET", "/sync", since=since, timeout="20000"))
    await asyncio.sleep(0.3)
    await alice.ok(
        trio.a.url,
        "PUT",
        f"/presence/{alice.user_id}/status",
        {"presence": "unavailable", "status_msg": "in a meeting"},
    )
    answer = await asyncio.wait_for(poll, 10)
    events = [e for e in answer["presence"]["events"] if e["sender"] == alice.user_id]
    assert events and events[-1]["content"]["presence"] == "unavailable"
    assert events[-1]["content"]["status_msg"] == "in a meeting"
    deadline = time.monotonic() + 1.0
    while (await _presence(bob, trio.b, alice.user_id)).get("status_msg") != "in a meeting":
        assert time.monotonic() < deadline, "B still shows the presence it held before"
        await asyncio.sleep(0.02)
    # Changed again on B: the newest write wins on every process, A included.
    await alice.ok(trio.b.url, "PUT", f"/presence/{alice.user_id}/status", {"presence": "online"})
    deadline = time.monotonic() + 1.0
    for worker in trio.workers:
        while (await _presence(bob, worker, alice.user_id))["presence"] != "online":
            assert time.monotonic() < deadline, f"{worker.name} missed the change made on B"
            await asyncio.sleep(0.02)


async def test_presence_timeouts_count_syncs_on_every_worker(trio: Trio) -> None:
    """The sync timeout is 30 s (presence/service.py): this test takes about 40 s."""
    alice, bob, _ = await _room_with(trio)
    # Alice comes online on A (which runs the timeouts), then long-polls through B only.
    await alice.ok(trio.a.url, "PUT", f"/presence/{alice.user_id}/status", {"presence": "online"})
    # Bob comes online by one sync through C, and stops.
    await bob.ok(trio.c.url, "GET", "/sync", timeout="0", set_presence="online")
    started = time.monotonic()
    since = (await alice.ok(trio.b.url, "GET", "/sync", timeout="0"))["next_batch"]
    while time.monotonic() - started < 40:
        answer = await alice.ok(trio.b.url, "GET", "/sync", since=since, timeout="5000")
        since = answer["next_batch"]
    seen_by_bob = await _presence(bob, trio.c, alice.user_id)
    assert seen_by_bob["presence"] == "online", seen_by_bob
    assert (await _presence(alice, trio.b, bob.user_id))["presence"] == "offline"


async def test_a_logout_on_one_worker_closes_the_devices_websocket_on_another(
    trio: Trio,
) -> None:
    name = f"gina{secrets.token_hex(3)}"
    await trio.register(name, trio.a.url)
    gina = await trio.login(name, trio.a.url)
    async with trio.session.ws_connect(
        f"{trio.b.url}/_matrix/client/unstable/org.starling.ws/ws",
        headers={"Authorization": f"Bearer {gina.token}"},
    ) as ws:
        hello = await ws.receive_json(timeout=10)
        assert hello["type"] == "authenticated"
        await gina.ok(trio.a.url, "POST", "/logout", {})
        # Well before the socket's own sync poll or heartbeat would notice.
        frame = await ws.receive_json(timeout=1.0)
        assert (frame["type"], frame["errcode"]) == ("error", "M_UNKNOWN_TOKEN")
        closing = await ws.receive(timeout=1.0)
        assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1008


async def test_admin_task_statuses_are_answered_by_every_worker(trio: Trio) -> None:
    admin = await _admin(trio)
    alice, _, room = await _room_with(trio)
    for i in range(3):
        await alice.ok(
            trio.a.url,
            "PUT",
            f"/rooms/{room}/send/m.room.message/r{i}",
            {"msgtype": "m.text", "body": f"to redact {i}"},
        )
    auth = {"Authorization": f"Bearer {admin.token}"}

    async def admin_call(worker: Worker, method: str, path: str, body: Any = None) -> Any:
        async with trio.session.request(
            method, f"{worker.url}/_synapse/admin{path}", json=body, headers=auth
        ) as resp:
            answer = await resp.json()
            assert resp.status == 200, (worker.name, path, answer)
            return answer

    async def until_complete(worker: Worker, path: str) -> Any:
        deadline = time.monotonic() + 20
        while True:
            answer = await admin_call(worker, "GET", path)
            if answer["status"] == "complete":
                return answer
            assert answer["status"] in ("scheduled", "active"), answer
            assert time.monotonic() < deadline, answer
            await asyncio.sleep(0.1)

    redact_id = (
        await admin_call(trio.a, "POST", f"/v1/user/{alice.user_id}/redact", {"rooms": [room]})
    )["redact_id"]
    done = await until_complete(trio.b, f"/v1/user/redact_status/{redact_id}")
    assert done["failed_redactions"] == {}
    delete_id = (await admin_call(trio.a, "DELETE", f"/v2/rooms/{room}", {"purge": False}))[
        "delete_id"
    ]
    deleted = await until_complete(trio.c, f"/v2/rooms/delete_status/{delete_id}")
    assert alice.user_id in deleted["shutdown_room"]["kicked_users"]
    by_room = await admin_call(trio.b, "GET", f"/v2/rooms/{room}/delete_status")
    assert [r["delete_id"] for r in by_room["results"]] == [delete_id]
    tasks = (await admin_call(trio.c, "GET", "/v1/scheduled_tasks"))["scheduled_tasks"]
    listed = {t["id"]: (t["action"], t["status"]) for t in tasks}
    assert listed[redact_id] == ("redact_all_events", "complete")
    assert listed[delete_id] == ("shutdown_and_purge_room", "complete")

"""`starling port-db` (issue 17): a populated SQLite server, copied into PostgreSQL, serves
the same data to the same access tokens.

By nature SQLite → PostgreSQL (not parametrized over engines). The populated server has
rooms with history and state, uploaded media, device and one-time keys, a queued
to-device message and account data; after the port, a server on the PostgreSQL database
(same media directory) answers the same tokens with the same rooms, history, keys, media
and queued message, keeps transaction IDs, and carries on with new positions past the
old ones (a pre-port sync token still works). Also: a non-empty target is refused, an
interrupted port resumes and copies nothing twice, and a SQLite file in use is detected.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from starling.cli import main
from starling.storage import open_database
from starling.storage.port import PortError, port_sqlite_to_postgres, sqlite_in_use
from tests.e2ee.support import Device, upload_ok
from tests.support.dbfixtures import fresh_database_url, small_pool_config
from tests.support.harness import UNLIMITED_ROOM_RATES, Harness, make_harness

V3 = "/_matrix/client/v3"
MEDIA = b"\x89PNG not really, but bytes all the same" * 50


async def _ok(hs: Harness, method: str, path: str, token: str, body: Any = None, **params: str):
    status, answer = await hs.request(method, path, token, body, params=params or None)
    assert status == 200, (method, path, status, answer)
    return answer


async def _populate(hs: Harness) -> dict[str, Any]:
    alice_id, alice = await hs.register("alice", device_id="ALICEDEV")
    bob_id, bob = await hs.register("bob", device_id="BOBDEV")
    room = await hs.create_room(alice, preset="public_chat", name="Ported")
    await _ok(hs, "POST", f"{V3}/join/{room}", bob, {})
    sent = [await hs.send_message(alice, room, f"message {i}", txn=f"t{i}") for i in range(30)]
    await _ok(hs, "PUT", f"{V3}/rooms/{room}/state/m.room.topic/", alice, {"topic": "moving"})
    status, uploaded = await hs.request(
        "POST", "/_matrix/media/v3/upload", alice, raw=MEDIA, params={"filename": "p.png"}
    )
    assert status == 200, uploaded
    bob_device = Device(bob_id, "BOBDEV", bob)
    await upload_ok(
        hs,
        bob_device,
        device_keys=bob_device.device_keys(),
        one_time_keys=bob_device.one_time_keys(5),
    )
    await _ok(
        hs,
        "PUT",
        f"{V3}/sendToDevice/org.example.ported/td1",
        alice,
        {"messages": {bob_id: {"BOBDEV": {"secret": "kept"}}}},
    )
    await _ok(hs, "PUT", f"{V3}/user/{alice_id}/account_data/org.example.prefs", alice, {"a": 1})
    history = await _ok(hs, "GET", f"{V3}/rooms/{room}/messages", alice, dir="b", limit="100")
    alice_sync = await _ok(hs, "GET", f"{V3}/sync", alice, timeout="0")
    return {
        "alice": alice,
        "alice_id": alice_id,
        "bob": bob,
        "bob_id": bob_id,
        "room": room,
        "sent": sent,
        "history": [e["event_id"] for e in history["chunk"]],
        "alice_since": alice_sync["next_batch"],
        "mxc": uploaded["content_uri"],
    }


def _postgres_config(tmp_path: Path, dsn: str) -> Path:
    url = urllib.parse.urlsplit(dsn)
    config = {
        "server_name": "test.local",
        "database": {
            "name": "psycopg2",
            "args": {
                "user": url.username or "postgres",
                "password": url.password,
                "host": url.hostname,
                "port": url.port or 5432,
                "database": url.path.lstrip("/"),
            },
        },
    }
    path = tmp_path / "postgres.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_a_ported_server_serves_the_same_data_to_the_same_tokens(tmp_path: Path) -> None:
    sqlite_path = tmp_path / "starling.db"
    source = await open_database(small_pool_config(str(sqlite_path)))
    try:
        async with make_harness(source, tmp_path, **UNLIMITED_ROOM_RATES) as hs:
            before = await _populate(hs)
    finally:
        await source.close()
    assert not sqlite_in_use(sqlite_path)

    async with fresh_database_url("postgres", tmp_path) as dsn:
        config = _postgres_config(tmp_path, dsn)
        argv = ["port-db", "-c", str(config), "--sqlite-database", str(sqlite_path)]
        assert await asyncio.to_thread(main, argv) == 0
        # Once ported, the target is no longer empty: a second run is refused.
        assert await asyncio.to_thread(main, argv) == 1

        target = await open_database(small_pool_config(dsn))
        try:
            async with make_harness(target, tmp_path, **UNLIMITED_ROOM_RATES) as hs:
                await _check_ported(hs, before)
        finally:
            await target.close()


async def _check_ported(hs: Harness, before: dict[str, Any]) -> None:
    alice, bob, room = before["alice"], before["bob"], before["room"]
    assert (await _ok(hs, "GET", f"{V3}/account/whoami", alice))["user_id"] == before["alice_id"]
    history = await _ok(hs, "GET", f"{V3}/rooms/{room}/messages", alice, dir="b", limit="100")
    assert [e["event_id"] for e in history["chunk"]] == before["history"]
    state = await _ok(hs, "GET", f"{V3}/rooms/{room}/state/m.room.topic/", bob)
    assert state == {"topic": "moving"}
    # The queued to-device message and the room reach bob's first sync.
    sync = await _ok(hs, "GET", f"{V3}/sync", bob, timeout="0")
    assert room in sync["rooms"]["join"]
    to_device = sync["to_device"]["events"]
    assert [(e["type"], e["content"]) for e in to_device] == [
        ("org.example.ported", {"secret": "kept"})
    ]
    # Keys: bob's device keys are found, and a one-time key can be claimed.
    query = await _ok(
        hs, "POST", f"{V3}/keys/query", alice, {"device_keys": {before["bob_id"]: []}}
    )
    assert "BOBDEV" in query["device_keys"][before["bob_id"]]
    claim = await _ok(
        hs,
        "POST",
        f"{V3}/keys/claim",
        alice,
        {"one_time_keys": {before["bob_id"]: {"BOBDEV": "signed_curve25519"}}},
    )
    assert claim["one_time_keys"][before["bob_id"]]["BOBDEV"]
    account_data = await _ok(
        hs, "GET", f"{V3}/user/{before['alice_id']}/account_data/org.example.prefs", alice
    )
    assert account_data == {"a": 1}
    # Media: the same bytes from the same media directory.
    server, media_id = before["mxc"].removeprefix("mxc://").split("/")
    status, body = await hs.request(
        "GET", f"/_matrix/client/v1/media/download/{server}/{media_id}", alice
    )
    assert status == 200 and body == MEDIA
    # A retried transaction ID gives the original event; new events come after the old ones.
    again = await hs.send_message(alice, room, "retried", txn="t0")
    assert again == before["sent"][0]
    new = await hs.send_message(alice, room, "after the port")
    incremental = await _ok(
        hs, "GET", f"{V3}/sync", alice, since=before["alice_since"], timeout="0"
    )
    timeline = [e["event_id"] for e in incremental["rooms"]["join"][room]["timeline"]["events"]]
    assert new in timeline and before["sent"][0] not in timeline


def _in_use_while_another_process_has_it(sqlite_path: Path) -> bool:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            f"c = sqlite3.connect({str(sqlite_path)!r})\n"
            "c.execute('SELECT count(*) FROM events').fetchone()\n"
            "print('open', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        return sqlite_in_use(sqlite_path)
    finally:
        holder.kill()
        holder.wait(timeout=10)


async def test_port_refuses_a_file_in_use_and_resumes_after_an_interruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqlite_path = tmp_path / "starling.db"
    source = await open_database(small_pool_config(str(sqlite_path)))
    try:
        async with make_harness(source, tmp_path, **UNLIMITED_ROOM_RATES) as hs:
            _, token = await hs.register("carol")
            room = await hs.create_room(token)
            for i in range(40):
                await hs.send_message(token, room, f"m{i}")
    finally:
        await source.close()
    assert not sqlite_in_use(sqlite_path)
    # Another process (a server) with the file open is seen (POSIX locks are per process,
    # so it takes another process to test).
    assert await asyncio.to_thread(_in_use_while_another_process_has_it, sqlite_path)
    assert not sqlite_in_use(sqlite_path)
    monkeypatch.setattr("starling.storage.port.BATCH_ROWS", 7)

    class Interrupted(Exception):
        pass

    calls = 0

    def interrupt(table: str, copied: int, total: int) -> None:
        nonlocal calls
        calls += 1
        if table == "events" and copied >= 14:
            raise Interrupted

    async with fresh_database_url("postgres", tmp_path) as dsn:
        target = await open_database(small_pool_config(dsn))
        try:
            with pytest.raises(PortError, match="nothing to resume"):
                await port_sqlite_to_postgres(sqlite_path, target, resume=True)
            with pytest.raises(Interrupted):
                await port_sqlite_to_postgres(sqlite_path, target, progress=interrupt)
            partial = await target.fetch_val("SELECT count(*) FROM events")
            assert 14 <= partial < 40
            with pytest.raises(PortError, match="--resume"):
                await port_sqlite_to_postgres(sqlite_path, target)
            report = await port_sqlite_to_postgres(sqlite_path, target, resume=True)
            assert report.resumed
            with sqlite3.connect(sqlite_path) as conn:
                events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            assert report.tables["events"] == events
            assert await target.fetch_val("SELECT count(*) FROM events") == events
            assert await target.fetch_val("SELECT to_regclass('port_db_progress')") is None
        finally:
            await target.close()

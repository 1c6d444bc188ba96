"""`starling-chat` end to end against a real `starling serve` (both engines): two users log
in, one creates an encrypted room and invites the other, who joins; messages go both ways
and `tail --json` prints them decrypted; errors are one line on stderr with a non-zero
status."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interop.conftest import RunningServer
from tests.interop.test_nio_e2ee import PASSWORD, raw_messages, register

pytestmark = pytest.mark.integration


def chat(store: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STARLING_CHAT_PASSPHRASE": "cli test passphrase"}
    return subprocess.run(
        [sys.executable, "-m", "starling_client.cli", "--store", str(store), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


async def ok(store: Path, *args: str) -> str:
    done = await asyncio.to_thread(chat, store, *args)
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout


async def test_cli_conversation(starling_server: RunningServer, tmp_path: Path) -> None:
    server = starling_server
    await register(server, "alice", tmp_path / "alice-reg")
    await register(server, "bob", tmp_path / "bob-reg")
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    alice_id, bob_id = f"@alice:{server.server_name}", f"@bob:{server.server_name}"
    out = await ok(alice, "login", "--homeserver", server.url, alice_id, "--password", PASSWORD)
    assert out.startswith(f"logged in as {alice_id}")
    await ok(bob, "login", "--homeserver", server.url, "bob", "--password", PASSWORD)

    room_id = (await ok(alice, "create-room", "--name", "cli", "--invite", bob_id)).strip()
    assert room_id.startswith("!")
    rooms = [json.loads(line) for line in (await ok(bob, "rooms", "--json")).splitlines()]
    assert [(r["room_id"], r["membership"]) for r in rooms] == [(room_id, "invite")]
    assert (await ok(bob, "join", room_id)).strip() == room_id

    first = (await ok(alice, "send", room_id, "hello from the command line")).strip()
    lines = (
        await ok(bob, "tail", room_id, "--count", "1", "--timeout", "30", "--json")
    ).splitlines()
    assert len(lines) == 1
    got = json.loads(lines[0])
    assert got["event_id"] == first
    assert (got["sender"], got["msgtype"], got["body"], got["encrypted"]) == (
        alice_id,
        "m.text",
        "hello from the command line",
        True,
    )
    reply = (await ok(bob, "send", "cli", "and back")).strip()  # by room name
    lines = (
        await ok(alice, "tail", room_id, "--count", "1", "--timeout", "30", "--json")
    ).splitlines()
    assert [json.loads(x)["event_id"] for x in lines] == [reply]
    assert json.loads(lines[0])["body"] == "and back"

    # An attachment: encrypted on the way, saved decrypted by tail, byte-identical.
    doc = tmp_path / "notes.bin"
    doc.write_bytes(bytes(range(256)) * 64)
    file_event = (await ok(alice, "send-file", room_id, str(doc))).strip()
    lines = (
        await ok(bob, "tail", room_id, "--count", "1", "--timeout", "30", "--json")
    ).splitlines()
    got = json.loads(lines[0])
    assert (got["event_id"], got["msgtype"], got["body"], got["encrypted"]) == (
        file_event,
        "m.file",
        "notes.bin",
        True,
    )
    saved = await asyncio.to_thread(Path(got["file"]).read_bytes)
    assert saved == bytes(range(256)) * 64
    assert Path(got["file"]).parent == bob / "downloads"
    done = await asyncio.to_thread(chat, alice, "send-voice", room_id, str(doc))
    assert done.returncode == 1 and "not an Ogg/Opus file" in done.stderr

    token_free = await raw_messages_as(server, tmp_path, room_id)
    assert "hello from the command line" not in token_free and "and back" not in token_free

    # Nothing new: tail with a timeout and a count that cannot be met fails clearly.
    done = await asyncio.to_thread(chat, bob, "tail", room_id, "--count", "1", "--timeout", "1")
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "only 0 of 1 messages" in done.stderr

    # Errors: one line on stderr, non-zero status.
    for args in (
        ("send", "no-such-room", "x"),
        ("join", "!nope:localhost"),
    ):
        done = await asyncio.to_thread(chat, alice, *args)
        assert done.returncode == 1, (args, done)
        assert done.stderr.startswith("starling-chat: ") and done.stderr.count("\n") == 1, (
            done.stderr
        )
    done = await asyncio.to_thread(chat, tmp_path / "nobody", "rooms")
    assert done.returncode == 1 and "log in first" in done.stderr
    done = await asyncio.to_thread(
        chat, tmp_path / "carol", "login", "--homeserver", server.url, "carol", "--password", "x"
    )
    assert done.returncode == 1 and "M_FORBIDDEN" in done.stderr, done.stderr

    # Key backup with a secret-storage passphrase: Alice backs up (the recovery key is still
    # printed once), then a new device of hers restores it with the passphrase and reads the
    # room's history, which it could not decrypt before. (test_file_backup restores with
    # the recovery key.)
    phrase = tmp_path / "recovery-phrase"
    phrase.write_text("correct horse battery staple\n")
    out = await ok(alice, "backup", "--recovery-passphrase-file", str(phrase))
    recovery_key = out.splitlines()[0].removeprefix("recovery key: ")
    assert len(recovery_key.replace(" ", "")) == 48
    assert "room keys" in out.splitlines()[-1]
    again = await ok(alice, "backup")
    assert "recovery key" not in again and again.startswith("backup version ")
    alice2 = tmp_path / "alice-2"
    await ok(alice2, "login", "--homeserver", server.url, "alice", "--password", PASSWORD)
    done = await asyncio.to_thread(chat, alice2, "send", room_id, "x")
    assert done.returncode == 0  # sending needs no history
    wrong = "EsT1 tNEc rSTo gMig ppTW RZ4d kc6e xKEp uoaN fJqY pVbX RxCP"
    done = await asyncio.to_thread(chat, alice2, "restore", "--recovery-key", wrong)
    assert done.returncode == 1 and "recovery key" in done.stderr, done.stderr
    done = await asyncio.to_thread(chat, alice2, "backup")
    assert done.returncode == 1 and "restore --recovery-key" in done.stderr
    bad_phrase = tmp_path / "bad-phrase"
    bad_phrase.write_text("incorrect horse battery staple")
    done = await asyncio.to_thread(
        chat, alice2, "restore", "--recovery-passphrase-file", str(bad_phrase)
    )
    assert done.returncode == 1 and "wrong passphrase" in done.stderr, done.stderr
    done = await asyncio.to_thread(chat, alice2, "restore")
    assert done.returncode == 1 and "--recovery-key or" in done.stderr, done.stderr
    out = await ok(alice2, "restore", "--recovery-passphrase-file", str(phrase))
    assert out.startswith("restored ") and not out.startswith("restored 0 ")
    lines = (
        await ok(alice2, "tail", room_id, "--count", "3", "--timeout", "30", "--json")
    ).splitlines()
    bodies = {json.loads(x)["body"] for x in lines}
    assert {"hello from the command line", "and back", "notes.bin"} <= bodies, bodies


async def raw_messages_as(server: RunningServer, tmp_path: Path, room_id: str) -> str:
    """The room's events as the server returns them, fetched with a fresh plain login."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{server.url}/_matrix/client/v3/login",
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "alice"},
                "password": PASSWORD,
            },
        ) as resp:
            token = (await resp.json())["access_token"]
    events = await raw_messages(server, token, room_id)
    assert [e for e in events if e["type"] == "m.room.encrypted"]
    return json.dumps(events)

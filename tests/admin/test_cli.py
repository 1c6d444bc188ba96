"""`starling admin ...`: in-process against the test server (both engines), and end to end
against a real `starling serve` (both engines)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from starling.cli import main
from tests.support.harness import Harness
from tests.test_cli import STARLING, _wait_for, database_arg, free_port, run

__all__ = ["database_arg"]  # the fixture, imported for its parametrisation

HS = "test.local"


async def admin_cli(hs: Harness, token: str | None, *args: str) -> int:
    url = str(hs.client.make_url("")).rstrip("/")
    argv = ["admin", "--server", url, *(["--token", token] if token else []), *args]
    return await asyncio.wait_for(asyncio.to_thread(main, argv), timeout=60)


async def test_cli_commands(hs: Harness, admin: str, capsys: pytest.CaptureFixture[str]) -> None:
    bob, bob_token = await hs.register("bob")
    room = await hs.create_room(bob_token, name="Bob's den")
    assert await admin_cli(hs, admin, "users", "list") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["NAME", "DISPLAYNAME"]
    assert bob in out and f"@root:{HS}" in out and "(2 of 2)" in out
    assert await admin_cli(hs, admin, "--json", "users", "show", bob) == 0
    assert json.loads(capsys.readouterr().out)["name"] == bob
    code = await admin_cli(
        hs, admin, "users", "create", f"@carol:{HS}", "--password", "pw", "--displayname", "Carol"
    )
    assert code == 0 and "Carol" in capsys.readouterr().out
    assert await admin_cli(hs, admin, "users", "lock", f"@carol:{HS}") == 0
    assert "locked" in capsys.readouterr().out
    await hs.services.account_store.set_approved(f"@carol:{HS}", False)
    assert await admin_cli(hs, admin, "users", "list", "--pending", "--locked") == 0
    assert f"@carol:{HS}" in capsys.readouterr().out
    assert await admin_cli(hs, admin, "users", "approve", f"@carol:{HS}") == 0
    capsys.readouterr()
    assert await hs.services.account_store.is_approved(f"@carol:{HS}")
    assert await admin_cli(hs, admin, "rooms", "list", "--search", "den") == 0
    assert room in capsys.readouterr().out
    assert await admin_cli(hs, admin, "users", "rooms", bob) == 0
    assert capsys.readouterr().out.split() == [room]
    assert await admin_cli(hs, admin, "rooms", "delete", room, "--block") == 0
    out = capsys.readouterr().out
    assert "complete" in out and f"removed {bob}" in out
    assert await hs.services.admin_rooms.is_blocked(room)
    assert await admin_cli(hs, admin, "users", "deactivate", bob, "--erase") == 0
    assert "deactivated and erased" in capsys.readouterr().out
    user = await hs.services.account_store.get_user(bob)
    assert user is not None and user.deactivated
    assert await admin_cli(hs, admin, "reports", "list") == 0
    assert "(0 of 0)" in capsys.readouterr().out
    # refusals: a Matrix error on stderr and exit 1; no token or no server: exit 2
    assert await admin_cli(hs, bob_token, "users", "list") == 1
    assert "M_UNKNOWN_TOKEN" in capsys.readouterr().err  # bob's token went with deactivation
    assert await admin_cli(hs, admin, "users", "show", f"@ghost:{HS}") == 1
    assert "M_NOT_FOUND" in capsys.readouterr().err
    assert await admin_cli(hs, None, "users", "list") == 2
    assert "no access token" in capsys.readouterr().err
    assert await admin_cli(hs, admin, "media", "quarantine", "not-mxc") == 2
    assert "not an mxc:// URI" in capsys.readouterr().err
    code = await asyncio.to_thread(
        main,
        ["admin", "--server", f"http://127.0.0.1:{free_port()}", "--token", "t", "rooms", "list"],
    )
    assert code == 2 and "cannot reach" in capsys.readouterr().err


async def test_cli_history_commands(
    hs: Harness, admin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bob, bob_token = await hs.register("bob")
    room = await hs.create_room(bob_token, preset="public_chat")
    first = await hs.send_message(bob_token, room, "first")
    cut = await hs.send_message(bob_token, room, "second")
    await hs.send_message(bob_token, room, "third")
    code = await admin_cli(
        hs, admin, "rooms", "purge-history", room, "--before-event", cut, "--delete-local"
    )
    assert code == 0 and ": complete" in capsys.readouterr().out
    assert await hs.services.event_store.get_event(first) is None
    assert await admin_cli(hs, admin, "rooms", "purge-history", room) == 2
    assert "--before-event or --days" in capsys.readouterr().err
    code = await admin_cli(hs, admin, "users", "redact", bob, "--reason", "spam")
    assert code == 0 and ": complete" in capsys.readouterr().out
    found = await hs.services.event_store.get_event(cut)
    assert found is not None and found.meta.redacted_by is not None
    code = await admin_cli(
        hs, admin, "users", "create", f"@bot:{HS}", "--password", "pw", "--email", "Bot@x.org"
    )
    assert code == 0 and "bot@x.org" in capsys.readouterr().out
    assert await admin_cli(hs, admin, "users", "whois", bob) == 0
    assert capsys.readouterr().out.split()[:4] == ["DEVICE_ID", "IP", "LAST_SEEN", "USER_AGENT"]


@pytest.mark.integration
def test_cli_against_starling_serve(tmp_path: Path, database_arg: str) -> None:
    port = free_port()
    r = run(
        "generate-config",
        "--server-name",
        "localhost",
        "--data-dir",
        str(tmp_path),
        "--http-port",
        str(port),
        "--federation-port",
        str(free_port()),
        "--database",
        database_arg,
    )
    assert r.returncode == 0, r.stderr
    config = str(tmp_path / "starling.yaml")
    reg = run("register-user", "-c", config, "root", "--password", "pw", "--admin")
    assert reg.returncode == 0, reg.stderr
    proc = subprocess.Popen(
        [*STARLING, "serve", "-c", config],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{url}/_matrix/client/versions", proc, time.monotonic() + 30)
        login = run("admin", "--server", url, "login", "root", "--password", "pw")
        assert login.returncode == 0, login.stderr
        token = login.stdout.strip()
        env_args = ("admin", "--server", url, "--token", token)
        made = run(*env_args, "users", "create", "@dana:localhost", "--password", "pw2")
        assert made.returncode == 0, made.stderr
        listed = run(*env_args, "--json", "users", "list")
        assert listed.returncode == 0, listed.stderr
        names = [u["name"] for u in json.loads(listed.stdout)["users"]]
        assert names == ["@dana:localhost", "@root:localhost"]
        # The admin's own requests were recorded: where, when, with which user agent.
        whois = run(*env_args, "users", "whois", "@root:localhost")
        assert whois.returncode == 0 and "127.0.0.1" in whois.stdout, whois.stderr
        assert "aiohttp" in whois.stdout
        gone = run(*env_args, "users", "deactivate", "@dana:localhost")
        assert gone.returncode == 0 and "deactivated" in gone.stdout
        refused = run("admin", "--server", url, "--token", "nonsense", "users", "list")
        assert refused.returncode == 1 and "M_UNKNOWN_TOKEN" in refused.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

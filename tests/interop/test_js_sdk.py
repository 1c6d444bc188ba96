"""matrix-js-sdk against a real `starling serve` (both engines), through the Node script
tests/interop/js/conversation.mjs: registration (m.login.dummy) and password login, an invite
seen by the SDK's sync loop and a join, messages both ways each reaching the other's timeline
in order, a display name change reaching the other user, scrollback to the room's creation.
The script asserts every step itself; this test runs it and checks its JSON report again.

The SDK is pinned in tests/interop/js/package-lock.json and installed by `make dev-js`
(`make test` depends on it). Without Node.js or those packages the test is skipped with a
message, except in CI (`CI` set), where it fails."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.interop.conftest import RunningServer

pytestmark = pytest.mark.integration

JS_DIR = Path(__file__).parent / "js"
SCRIPT = JS_DIR / "conversation.mjs"
TIMEOUT_S = 60  # the script gives up by itself after 50 s
MESSAGES = 20  # the script's 2 * MESSAGES_EACH


def node_or_skip() -> str:
    node = shutil.which("node")
    if node is None:
        problem = "Node.js (`node`) is not on PATH"
    elif not (JS_DIR / "node_modules" / "matrix-js-sdk" / "package.json").is_file():
        problem = "matrix-js-sdk is not installed under tests/interop/js: run `make dev-js`"
    else:
        return node
    if os.environ.get("CI"):
        pytest.fail(f"{problem} — CI runs the JS interop test")
    pytest.skip(problem)


def run_script(node: str, server: RunningServer) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [node, str(SCRIPT), server.url],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "STARLING_URL": server.url},
        )
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        raise AssertionError(f"{SCRIPT.name} ran over {TIMEOUT_S}s:\n{stderr}") from e


async def test_js_sdk_conversation(starling_server: RunningServer) -> None:
    node = node_or_skip()
    server = starling_server
    started = time.monotonic()
    try:
        done = await asyncio.to_thread(run_script, node, server)
        assert done.returncode == 0, f"{SCRIPT.name} failed:\n{done.stderr[-6000:]}"
        lines = done.stdout.strip().splitlines()
        assert len(lines) == 1, f"expected one line of JSON on stdout, got:\n{done.stdout}"
        report = json.loads(lines[0])

        host = server.server_name
        assert report["alice"] == f"@alice:{host}" and report["bob"] == f"@bob:{host}"
        assert report["room_id"].startswith("!")
        assert report["messages_sent"] == MESSAGES
        assert report["bob_timeline_messages"] == MESSAGES
        assert report["alice_timeline_messages"] == MESSAGES
        assert report["alice_displayname_seen_by_bob"] == "Alice Liddell"
        assert report["earliest_message_seen"] is True
        assert report["scrollbacks"] >= 5
        types = report["paginated_event_types"]
        assert types[0] == "m.room.create"
        assert types.count("m.room.message") == MESSAGES
        assert types[-1] == "m.room.member"  # Alice's rename, the room's last event
        assert report["messages_request_events"] == len(types)
        assert report["summary_name"] == "js-sdk interop"
        assert report["delayed_event_sent"] is True
        assert "GET /_matrix/client/v1/room_summary/" in server.log.read_text(errors="replace")
        assert time.monotonic() - started < TIMEOUT_S
        assert "Traceback" not in server.log.read_text(errors="replace")
    except BaseException:
        print(f"--- starling serve ({server.engine}) log tail ---\n{server.log_tail()}")
        raise

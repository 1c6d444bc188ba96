"""matrix-js-sdk's sliding sync (its `SlidingSync` class, MSC4186) against a real
`starling serve` (both engines), through tests/interop/js/sliding.mjs: the SDK's sliding
sync loop, instead of /sync, sees joined rooms with names and timelines, an invite, the
join, and a new message through its long-poll; the list count is right. The script asserts
each step; this test checks its JSON report again."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

from tests.interop.conftest import RunningServer
from tests.interop.test_js_sdk import JS_DIR, node_or_skip, pytestmark  # noqa: F401

SCRIPT = JS_DIR / "sliding.mjs"
TIMEOUT_S = 60  # the script gives up by itself after 50 s


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


async def test_js_sdk_sliding_sync(starling_server: RunningServer) -> None:
    node = node_or_skip()
    server = starling_server
    try:
        done = await asyncio.to_thread(run_script, node, server)
        assert done.returncode == 0, f"{SCRIPT.name} failed:\n{done.stderr[-6000:]}"
        lines = done.stdout.strip().splitlines()
        assert len(lines) == 1, f"expected one line of JSON on stdout, got:\n{done.stdout}"
        report = json.loads(lines[0])
        assert report["bob"] == f"@bob:{server.server_name}"
        assert [m for _, m in report["rooms"]] == ["join", "join", "join"]
        assert report["names"] == ["First", "Second"]
        assert report["list_count"] == 3
        assert report["message"] == "hello over sliding sync"
        assert "Traceback" not in server.log.read_text(errors="replace")
    except BaseException:
        print(f"--- starling serve ({server.engine}) log tail ---\n{server.log_tail()}")
        raise

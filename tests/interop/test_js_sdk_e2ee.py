"""matrix-js-sdk with Rust crypto (the stack Element Web runs on) against a real `starling
serve` (both engines), newest release and one a year older (npm alias matrix-js-sdk-old),
through tests/interop/js/e2ee.mjs: cross-signing bootstrapped by Alice and seen by Bob, an
encrypted room created with an invite and joined (Bob's client knows it is encrypted),
messages both ways decrypted, an encrypted image and voice message (media encrypted as Element
does, downloaded through authenticated media and decrypted), an olm-encrypted to-device message, a second device that
decrypts new messages and, logged out, leaves the peer's device list; SAS verification
between the two users' devices; a key backup created on one device and restored on a new one
that decrypts the old messages; the server holds only ciphertext. The script asserts every step; this test checks its JSON report and the server's
access log (to-device relayed as m.room.encrypted, /keys/query bounded and silent while the
clients idle).

Installed by `make dev-js` from tests/interop/js/package-lock.json; skipped without Node.js or
the packages, except in CI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time

import pytest

from tests.interop.conftest import RunningServer
from tests.interop.test_js_sdk import JS_DIR, node_or_skip

pytestmark = pytest.mark.integration

SCRIPT = JS_DIR / "e2ee.mjs"
TIMEOUT_S = 110  # the script gives up by itself after 100 s
IDLE_MS = 6000  # both clients sync idly at the end
# A whole run makes about 20 /keys/query (each client's own, new devices, logins, the
# script's explicit downloads); the loop clients fell into made ~300 a minute.
MAX_KEY_QUERIES = 40
ACCESS = re.compile(r'starling\.access: \S+ "(?P<method>[A-Z]+) (?P<path>\S+)" (?P<status>\d+)')


def run_script(node: str, server: RunningServer, sdk: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [node, str(SCRIPT), server.url, sdk],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "IDLE_MS": str(IDLE_MS)},
        )
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        raise AssertionError(f"{SCRIPT.name} ran over {TIMEOUT_S}s:\n{stderr[-6000:]}") from e


def access_log(server: RunningServer) -> list[tuple[str, str, int]]:
    lines = server.log.read_text(errors="replace").splitlines()
    return [
        (m["method"], m["path"], int(m["status"]))
        for m in map(ACCESS.search, lines)
        if m is not None
    ]


@pytest.mark.parametrize("sdk", ["matrix-js-sdk", "matrix-js-sdk-old"])
async def test_js_sdk_rust_crypto(starling_server: RunningServer, sdk: str) -> None:
    node = node_or_skip()
    if not (JS_DIR / "node_modules" / sdk / "package.json").is_file():
        pytest.fail(f"{sdk} missing under tests/interop/js: run `make dev-js`")
    server = starling_server
    started = time.monotonic()
    try:
        done = await asyncio.to_thread(run_script, node, server, sdk)
        assert done.returncode == 0, f"{SCRIPT.name} ({sdk}) failed:\n{done.stderr[-6000:]}"
        lines = done.stdout.strip().splitlines()
        assert len(lines) == 1, f"expected one line of JSON on stdout, got:\n{done.stdout}"
        report = json.loads(lines[0])

        host = server.server_name
        assert report["sdk"] == sdk
        assert report["alice"] == f"@alice:{host}" and report["bob"] == f"@bob:{host}"
        assert report["bob_sees_alice_cross_signing"] is True
        assert report["alice_device_signed_by_owner"] is True
        assert report["bob_knows_room_encrypted"] is True
        assert report["messages_decrypted"] == 4
        assert report["attachments_round_trip"] == ["m.image", "m.audio (voice)"]
        assert report["to_device_olm"] in (True, "not reported by this SDK")
        assert report["second_device_decrypted"] is True
        assert report["logged_out_device_gone"] is True
        assert report["sas_verified"] is True
        assert report["backup_restored_keys"] >= 2  # Alice's session and Bob's
        assert report["server_ciphertext_only"] is True

        log = access_log(server)
        # Nothing the clients asked for failed with a server error.
        assert not [r for r in log if r[2] >= 500], [r for r in log if r[2] >= 500]
        # The to-device message went through the server encrypted, never in the clear.
        to_device = [p for m, p, _ in log if m == "PUT" and "/sendToDevice/" in p]
        assert any("/sendToDevice/m.room.encrypted/" in p for p in to_device)
        assert not any("org.example.starling.ping" in p for p in to_device)
        # No /keys/query loop: bounded over the run, none in the second half of the clients'
        # idle time (after the script's last request, a raw /messages read).
        queries = [
            i for i, (m, p, _) in enumerate(log) if m == "POST" and p.endswith("/keys/query")
        ]
        assert len(queries) <= MAX_KEY_QUERIES, f"{len(queries)} /keys/query requests"
        print(f"{sdk} on {server.engine}: {len(queries)} /keys/query in the whole run")
        last_read = max(i for i, (m, p, _) in enumerate(log) if "/messages?dir=b" in p)
        assert [i for i in queries if i > last_read] == []
        # The plaintext never reached the server's log either.
        text = server.log.read_text(errors="replace")
        for plaintext in report["plaintexts"]:
            assert plaintext not in text
        assert "Traceback" not in text
        assert time.monotonic() - started < TIMEOUT_S
    except BaseException:
        print(f"--- starling serve ({server.engine}) log tail ---\n{server.log_tail()}")
        raise


async def test_js_sdk_dehydrated_device(starling_server: RunningServer) -> None:
    """MSC3814 with the newest matrix-js-sdk (tests/interop/js/dehydration.mjs): Alice's
    client uploads a dehydrated device; Bob's message, sent while she is away, is decrypted
    by a device of hers that logs in afterwards and rehydrates it."""
    node = node_or_skip()
    server = starling_server
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            [node, str(JS_DIR / "dehydration.mjs"), server.url],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, f"dehydration.mjs failed:\n{done.stderr[-6000:]}"
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report == {
            "dehydration_supported": True,
            "dehydrated_device_uploaded": True,
            "rehydrated": True,
            "decrypted_after_rehydration": True,
        }
        # The new device read the dehydrated device's to-device messages from the server.
        paths = [(m, p, st) for m, p, st in access_log(server) if "/dehydrated_device/" in p]
        assert any(m == "GET" and p.endswith("/events") and st == 200 for m, p, st in paths)
        assert "Traceback" not in server.log.read_text(errors="replace")
    except BaseException:
        print(server.log.read_text(errors="replace")[-6000:])
        raise

"""The client is a separate program. Of the server's package it may share only the pure
protocol layer (DESIGN.md §2; checked module by module in tests/test_import_layers.py),
which only the low-bandwidth (CoAP) transport uses, loaded when chosen: loading the
client's everyday modules loads nothing of the server."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_whole_client_loads_no_server_module() -> None:
    code = (
        "import sys, starling_client.cli, starling_client.client, starling_client.crypto\n"
        "bad = [m for m in sys.modules if m == 'starling' or m.startswith('starling.')]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr

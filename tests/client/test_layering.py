"""The client is a separate program: no module of `starling_client` imports the server's
`starling` package, statically or at run time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[2] / "starling_client"
MODULES = sorted(CLIENT.rglob("*.py"))


def _imported(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_client_module_does_not_import_the_server(path: Path) -> None:
    bad = {m for m in _imported(path) if m == "starling" or m.startswith("starling.")}
    assert not bad, f"{path.name} imports the server: {sorted(bad)}"


def test_the_check_sees_a_server_import(tmp_path: Path) -> None:
    src = tmp_path / "x.py"
    src.write_text("from starling.protocol import canonical_json\nimport starling_client.api\n")
    assert "starling.protocol" in _imported(src)


def test_importing_the_whole_client_loads_no_server_module() -> None:
    code = (
        "import sys, starling_client.cli, starling_client.client, starling_client.crypto\n"
        "bad = [m for m in sys.modules if m == 'starling' or m.startswith('starling.')]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr

"""The layering rules of DESIGN.md §2, enforced on every module's imports.

api → domains → storage, everything may use protocol; protocol imports nothing of ours and
no I/O; client/ is a separate program that may share only protocol.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "starling"

TOP_LEVEL_SHARED = {"starling", "starling.errors", "starling.config", "starling.protocol"}
IO_MODULES = {"asyncio", "aiohttp", "asyncpg", "sqlite3", "socket", "psycopg", "ssl"}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.add(name)
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    second = parts[1]
    if second in ("protocol", "storage", "api", "client"):
        return second
    if second in ("errors", "config"):
        return "shared"
    if second in ("app", "cli", "debug_cli", "generate_config"):
        return "entry"
    return "domain"


# Which layers each layer may import (besides itself).
ALLOWED = {
    "protocol": set(),
    "shared": {"protocol"},
    "storage": {"protocol", "shared"},
    "domain": {"protocol", "shared", "storage", "domain"},
    "api": {"protocol", "shared", "storage", "domain"},
    "client": {"protocol"},
    "entry": {"protocol", "shared", "storage", "domain", "api", "entry"},
    "root": set(),
}

MODULES = _modules()


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_follow_layers(module: str, path: Path) -> None:
    layer = _layer(module)
    bad = []
    for imp in _imports(path, module):
        if layer == "protocol" and imp.split(".")[0] in IO_MODULES:
            bad.append(f"{imp} (I/O in the protocol core)")
        if not imp.startswith("starling.") and imp != "starling":
            continue
        target = _layer(imp)
        if target == "root" or target == layer:
            continue
        if target not in ALLOWED[layer]:
            bad.append(f"{imp} ({layer} must not import {target})")
    assert not bad, f"{module} breaks the layering rules: {bad}"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    src = tmp_path / "x.py"
    src.write_text("from starling.api.http import json_response\nimport asyncio\n")
    assert "starling.api.http" in _imports(src, "starling.protocol.x")
    assert _layer("starling.api.http") not in ALLOWED["protocol"]

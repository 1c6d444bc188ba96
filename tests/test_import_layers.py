"""The layering rules of DESIGN.md §2, enforced on every module's imports.

api → domains → storage, everything may use protocol; protocol imports nothing of ours and
no I/O; client/ is a separate program that may share only protocol. The API edge never
reaches storage itself (it calls domain services), and no two packages import each other,
however indirectly (cycles between domains are broken with streams and notifications).
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
    "api": {"protocol", "shared", "domain"},
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
    assert _layer("starling.storage.events") not in ALLOWED["api"]


def _package(module: str) -> str:
    """`starling.rooms.membership` → `rooms`; top-level modules are their own package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES:
        source = _package(module)
        for imp in _imports(path, module):
            if imp.startswith("starling.") and _package(imp) != source:
                graph.setdefault(source, set()).add(_package(imp))
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_package_import_cycles() -> None:
    cycles = _cycles(_package_graph())
    assert not cycles, f"packages that import each other (directly or not): {cycles}"


def test_the_checker_sees_deferred_imports(tmp_path: Path) -> None:
    """Imports under TYPE_CHECKING and inside functions count too, so the cycles #19
    named (rooms ↔ sync, account_data ↔ receipts) stay caught however they come back."""
    src = tmp_path / "x.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from starling.sync.service import SyncService\n"
        "def later() -> None:\n"
        "    from starling.receipts import service\n"
    )
    found = _imports(src, "starling.rooms.x")
    assert {"starling.sync.service", "starling.receipts"} <= found


def test_the_cycle_check_sees_a_cycle() -> None:
    graph = {
        "rooms": {"sync", "storage"},
        "sync": {"search"},
        "search": {"rooms"},
        "api": {"rooms"},
    }
    assert _cycles(graph) == [["rooms", "search", "sync"]]
    assert _cycles({"api": {"rooms"}, "rooms": {"storage"}}) == []


CLIENT_PKG = PKG.parent / "starling_client"


@pytest.mark.parametrize(
    "path", sorted(CLIENT_PKG.rglob("*.py")), ids=lambda p: p.name if isinstance(p, Path) else p
)
def test_client_sdk_imports_only_protocol(path: Path) -> None:
    """starling_client is a separate program: of the server's package it may import only
    the pure protocol layer (DESIGN.md §2)."""
    module = "starling_client." + path.stem
    bad = [
        imp
        for imp in _imports(path, module)
        if (imp == "starling" or imp.startswith("starling."))
        and not imp.startswith("starling.protocol")
    ]
    assert not bad, f"{module} imports the server's packages: {bad}"

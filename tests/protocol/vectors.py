"""Loads the spec's checked test vectors (tests/protocol/data/vectors.json, see its README)."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

_CANDIDATES = [
    os.environ.get("STARLING_SPEC_DIR", ""),
    str(Path(__file__).resolve().parent / "data"),
]


def spec_dir() -> Path:
    for c in _CANDIDATES:
        if c and (Path(c) / "vectors.json").is_file():
            return Path(c).resolve()
    raise FileNotFoundError("vectors.json not found in tests/protocol/data or STARLING_SPEC_DIR")


@cache
def _all() -> dict[str, Any]:
    with open(spec_dir() / "vectors.json", encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def test_key() -> dict[str, Any]:
    key: dict[str, Any] = _all()["test_key"]
    return key


def vectors(prefix: str) -> list[dict[str, Any]]:
    """Every vector whose id starts with `prefix`."""
    return [v for v in _all()["vectors"] if v["id"].startswith(prefix)]


def vector_ids(prefix: str) -> list[str]:
    return [v["id"] for v in vectors(prefix)]

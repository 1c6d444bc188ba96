"""Canonical JSON and unpadded base64, as the Matrix spec defines them for signing."""

from __future__ import annotations

import base64
import json
from typing import Any


def canonical_json(value: Any) -> bytes:
    """The spec's canonical JSON: sorted keys, no insignificant whitespace, UTF-8."""
    return json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
    ).encode("utf-8")


def b64encode(data: bytes) -> str:
    """Unpadded standard base64."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def b64decode(text: str) -> bytes:
    """Standard or URL-safe base64, padded or not (raises ValueError on garbage)."""
    if not isinstance(text, str):
        raise ValueError("base64 value is not a string")
    text = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def urlsafe_b64encode(data: bytes) -> str:
    """Unpadded URL-safe base64 (JWK `k`)."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")

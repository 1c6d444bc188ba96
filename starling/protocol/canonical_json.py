"""Canonical JSON (spec: Appendices > Canonical JSON), built on orjson.

orjson already writes what the spec asks: keys sorted by code point (orjson sorts UTF-8
bytes, which orders the same), no insignificant whitespace, UTF-8 rather than \\u escapes,
and the shortest escapes for control characters. What it does not do is refuse what has
no canonical form: floats, and integers outside [-(2^53)+1, 2^53-1].
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_SAFE_INT = 2**53 - 1
MIN_SAFE_INT = -(2**53) + 1


class CanonicalJsonError(ValueError):
    """The value has no canonical JSON form."""


def _check(value: Any) -> None:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, str):
                    raise CanonicalJsonError("object keys must be strings")
                stack.append(item)
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, bool) or v is None or isinstance(v, str):
            continue
        elif isinstance(v, int):
            if not MIN_SAFE_INT <= v <= MAX_SAFE_INT:
                raise CanonicalJsonError(f"integer {v} is outside the canonical JSON range")
        elif isinstance(v, float):
            raise CanonicalJsonError("floats are not allowed in canonical JSON")
        else:
            raise CanonicalJsonError(f"{type(v).__name__} is not a JSON type")


def encode_canonical_json(value: Any) -> bytes:
    """The canonical JSON bytes of `value`; CanonicalJsonError if it has none."""
    _check(value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)

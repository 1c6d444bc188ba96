"""Canonical JSON (spec: Appendices > Signing JSON > Canonical JSON), and parsing JSON text
into values that have a canonical form.

Owns: `encode_canonical_json` (the bytes that get hashed and signed), its lenient twin for
room versions 1-5 (whose events may carry floats and big integers), and the two parsers
`parse_json_strict` (room versions 6+ PDUs, client bodies) and `parse_json_lenient`.

orjson with OPT_SORT_KEYS already writes what the spec asks: keys sorted by code point
(orjson sorts by UTF-8 bytes, which is the same order), no insignificant whitespace, raw
UTF-8 instead of \\u escapes, the short escapes for \\b \\t \\n \\f \\r \\" \\\\ and lower-case
\\u00XX for the other C0 controls. OPT_STRICT_INTEGER refuses integers outside exactly
[-(2**53)+1, 2**53-1], the spec's range, and orjson itself refuses non-str keys, lone
surrogates and nesting deeper than 254. What orjson does not refuse is floats (it writes
NaN and infinity as null), so one type walk over the value remains, see `_check_types`.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import orjson

MAX_SAFE_INT = 2**53 - 1
MIN_SAFE_INT = -(2**53) + 1
# orjson parses containers nested up to 1024 deep but encodes at most 254; the strict
# parser refuses what could not be encoded again (and so never be hashed or signed).
MAX_NESTING = 254

_STRICT = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER


def nested_within(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value nests containers at most `limit` deep (a scalar or an
    empty container is depth 1); walked without recursion, so any input is safe."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            return False
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values() if isinstance(x, (dict, list)))
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v if isinstance(x, (dict, list)))
    return True


class CanonicalJsonError(ValueError):
    """The value has no canonical JSON form, or the JSON text does not parse to one."""


def _check_types(value: Any) -> None:
    """Refuse floats and anything that is not a JSON type, anywhere in `value`.

    Runs after orjson.dumps succeeded, so depth is at most 254 and recursion is safe.
    Measured on typical events (see the module tests' notes): a plain loop with `type(x)
    is str` checks beats both an explicit stack and testing whole containers with
    `frozenset.issuperset(map(type, ...))`, because event containers are small.
    """
    t = type(value)
    if t is dict:
        for item in value.values():
            ti = type(item)
            if ti is str or ti is int:
                continue
            _check_types(item)
    elif t is list:
        for item in value:
            ti = type(item)
            if ti is str or ti is int:
                continue
            _check_types(item)
    elif t is str or t is int or t is bool or value is None:
        return
    else:
        _check_other(value)


def _check_other(value: Any) -> None:
    """The slow path: floats, and subclasses of the JSON types (orjson encodes those as
    their base type, and so does the stdlib json module)."""
    if isinstance(value, float):
        raise CanonicalJsonError("floats are not allowed in canonical JSON")
    if isinstance(value, (str, int)):  # bool is an int subclass
        return
    if isinstance(value, dict):
        for item in value.values():
            _check_types(item)
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_types(item)
        return
    # orjson would happily encode dataclasses, datetimes, UUIDs...; those are not JSON.
    raise CanonicalJsonError(f"{type(value).__name__} is not a JSON type")


def encode_canonical_json(value: Any) -> bytes:
    """The canonical JSON bytes of `value`; CanonicalJsonError if it has none."""
    try:
        out = orjson.dumps(value, option=_STRICT)
    except orjson.JSONEncodeError as e:
        raise CanonicalJsonError(f"no canonical JSON form: {e}") from None
    _check_types(value)
    return out


def encode_canonical_json_lenient(value: Any) -> bytes:
    """Canonical-style JSON for room versions 1-5, whose events may hold floats and
    integers outside the safe range (spec: "Servers SHOULD be capable of handling JSON
    which is considered invalid by these restrictions").

    Gives the same bytes as the stdlib-based encoders other servers use (Synapse's
    `canonicaljson`), so their hashes and signatures verify. NaN and infinity have no JSON
    form and are refused.
    """
    with contextlib.suppress(CanonicalJsonError):
        return encode_canonical_json(value)
    # Slow path, only for the rare out-of-range value: the stdlib spells floats the way
    # Python's repr does (1e-07), which is what the sender hashed; orjson writes 1e-7.
    try:
        text = json.dumps(
            value,
            ensure_ascii=False,
            separators=(",", ":"),
            sort_keys=True,
            allow_nan=False,
        )
        return text.encode("utf-8")
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as e:
        raise CanonicalJsonError(f"no JSON form: {e}") from None


def _reject_constant(name: str) -> Any:
    raise CanonicalJsonError(f"{name} is not valid JSON")


def parse_json_strict(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON text that must have a canonical form: no fractions (1.5, 1e-3), no
    integers outside [-(2**53)+1, 2**53-1], no NaN/Infinity, valid UTF-8 without lone
    surrogates. Duplicate keys are allowed (the last one wins).

    Integral numbers written in exponent form (`1e10`, `2E+3`) are integers, and `-0` is
    0, as the spec's own canonical-JSON example has it (`{"a": -0, "b": 1e10}` encodes as
    `{"a":0,"b":10000000000}`); a decimal point without an exponent (`1.0`, `-0.0`) is
    still a float and refused. Exact: the text is read again with decimals when it holds
    such a number, so a fraction no float can tell from an integer is still refused.

    For room versions 6+ PDUs and for client request bodies. CanonicalJsonError otherwise.
    """
    value = _orjson_loads(data)
    try:
        if _has_float(value):
            text = data if isinstance(data, str) else bytes(data).decode("utf-8")
            value = json.loads(text, parse_float=_integral_number, parse_constant=_reject_constant)
        _check_parsed(value)
    except RecursionError:
        raise CanonicalJsonError("JSON nested too deeply") from None
    except ValueError as e:
        if isinstance(e, CanonicalJsonError):
            raise
        raise CanonicalJsonError(f"invalid JSON: {e}") from None
    return value


def _integral_number(text: str) -> int:
    """A JSON number written with an exponent, as an integer if it is one."""
    if "e" not in text and "E" not in text:
        raise CanonicalJsonError("floats are not allowed in canonical JSON")
    import decimal  # rare: not imported at start (idle memory)

    try:
        number = decimal.Decimal(text)
    except decimal.DecimalException:  # an exponent beyond what decimal can hold
        raise CanonicalJsonError(f"number {text[:40]} is outside any range") from None
    if number.is_zero():  # 0e5, -0e-999
        return 0
    # Beyond 17 digits it is out of range anyway; never build a huge int from "1e999999".
    if number.adjusted() > 16:
        raise CanonicalJsonError(f"number {text[:40]} is outside the canonical JSON range")
    # Below 1 in magnitude it is a fraction; and never round with an exponent beyond the
    # decimal context's range ("1e-04704992900719925470" raised InvalidOperation).
    if number.adjusted() < 0 or number != number.to_integral_value():
        raise CanonicalJsonError("fractions are not allowed in canonical JSON")
    return int(number)


def parse_json_lenient(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse any standard JSON text: floats and big integers are kept (big integers
    exactly), NaN/Infinity and invalid UTF-8 are refused. For room versions 1-5.
    CanonicalJsonError on text that is not JSON.
    """
    value = _orjson_loads(data)
    try:
        if not _has_float(value):
            return value
    except RecursionError:
        raise CanonicalJsonError("JSON nested too deeply") from None
    # orjson turns integers beyond 64 bits into floats; re-parse with the stdlib, which
    # keeps them exact. Only reached when the text held a float-looking number.
    text = data if isinstance(data, str) else bytes(data).decode("utf-8")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise CanonicalJsonError(f"invalid JSON: {e}") from None


def _orjson_loads(data: bytes | bytearray | memoryview | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise CanonicalJsonError(f"invalid JSON: {e}") from None
    except TypeError as e:  # not bytes/str at all
        raise CanonicalJsonError(f"JSON input must be bytes or str: {e}") from None


def _check_parsed(value: Any, depth: int = 1) -> None:
    """Refuse floats, out-of-range ints and nesting deeper than MAX_NESTING in a freshly
    parsed value (only dict, list, str, int, float, bool and None occur). Same plain-loop
    shape as `_check_types`."""
    t = type(value)
    items: Any
    if depth > MAX_NESTING and (t is dict or t is list):
        raise CanonicalJsonError(f"JSON nested deeper than {MAX_NESTING} levels")
    if t is dict:
        items = value.values()
    elif t is list:
        items = value
    elif t is int:
        if not MIN_SAFE_INT <= value <= MAX_SAFE_INT:
            raise CanonicalJsonError(f"integer {value} is outside the canonical JSON range")
        return
    elif t is float:
        raise CanonicalJsonError("floats are not allowed in canonical JSON")
    else:
        return
    for item in items:
        if type(item) is not str:
            _check_parsed(item, depth + 1)


def _has_float(value: Any) -> bool:
    """Whether a freshly parsed value holds a float anywhere."""
    t = type(value)
    items: Any
    if t is dict:
        items = value.values()
    elif t is list:
        items = value
    else:
        return t is float
    for item in items:
        ti = type(item)
        if ti is str or ti is int:
            continue
        if _has_float(item):
            return True
    return False

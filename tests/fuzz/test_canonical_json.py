"""Fuzz: canonical JSON parsing and encoding never fail with anything but
CanonicalJsonError, and whatever parses strictly round-trips exactly."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from starling.protocol.canonical_json import (
    CanonicalJsonError,
    encode_canonical_json,
    encode_canonical_json_lenient,
    parse_json_lenient,
    parse_json_strict,
)
from tests.fuzz.strategies import fuzz_settings, json_values

# JSON-ish text: real JSON documents with their numbers and strings spelled every way,
# then cut or spliced, so the parsers see near-misses as well as garbage.
NUMBERS = st.sampled_from(
    [
        "-0",
        "1e10",
        "1E400",
        "-1e-400",
        "1.0",
        "9007199254740992",
        "-9007199254740992",
        "1" * 400,
        "1" * 5000,
        "0.1",
        "NaN",
        "Infinity",
        "-Infinity",
        "01",
        "1.",
        ".5",
        "+1",
    ]
)
STRINGS = st.sampled_from(
    ['"\\ud800"', '"\\udfff\\ud800"', '"\\u0000"', '"\x01"', '"\\x"', '"\xff"', '"é"']
)


@st.composite
def json_texts(draw: st.DrawFn) -> bytes:
    parts = draw(
        st.lists(
            st.one_of(
                NUMBERS,
                STRINGS,
                st.sampled_from(["{", "}", "[", "]", ",", ":", '"a"', "true", "null", " "]),
            ),
            max_size=30,
        )
    )
    text = "".join(parts).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        depth = draw(st.integers(0, 2000))
        text = b"[" * depth + text + b"]" * depth
    return text


raw_inputs = st.one_of(st.binary(max_size=200), json_texts())


def _parse_both(raw: bytes) -> None:
    for parse in (parse_json_strict, parse_json_lenient):
        with contextlib.suppress(CanonicalJsonError):
            parse(raw)


@fuzz_settings(2)
@given(raw_inputs)
def test_parsers_raise_only_canonical_json_error(raw: bytes) -> None:
    _parse_both(raw)


@fuzz_settings()
@given(raw_inputs)
def test_strict_parse_round_trips(raw: bytes) -> None:
    try:
        value = parse_json_strict(raw)
    except CanonicalJsonError:
        return
    encoded = encode_canonical_json(value)  # whatever parses strictly has a canonical form
    assert parse_json_strict(encoded) == value
    assert encode_canonical_json(parse_json_strict(encoded)) == encoded


@fuzz_settings()
@given(raw_inputs)
def test_lenient_parse_encodes(raw: bytes) -> None:
    try:
        value = parse_json_lenient(raw)
    except CanonicalJsonError:
        return
    encoded = encode_canonical_json_lenient(value)
    assert parse_json_lenient(encoded) == value or _has_nan(value)


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return value != value
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return False


@fuzz_settings(2)
@given(json_values(max_leaves=30))
def test_encoders_raise_only_canonical_json_error(value: Any) -> None:
    for encode in (encode_canonical_json, encode_canonical_json_lenient):
        with contextlib.suppress(CanonicalJsonError):
            encode(value)

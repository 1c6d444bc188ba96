"""Canonical JSON: the spec's vectors, and canonicaljson (what Synapse uses) as an oracle."""

from __future__ import annotations

from typing import Any

import canonicaljson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from starling.protocol.canonical_json import (
    MAX_SAFE_INT,
    MIN_SAFE_INT,
    CanonicalJsonError,
    encode_canonical_json,
    encode_canonical_json_lenient,
    nested_within,
    parse_json_lenient,
    parse_json_strict,
)
from tests.protocol.vectors import vectors

ENCODING_VECTORS = [v for v in vectors("canonical_json.") if v["operation"] == "canonical_json"]


@pytest.mark.parametrize("vector", ENCODING_VECTORS, ids=[v["id"] for v in ENCODING_VECTORS])
def test_canonical_json_vectors(vector: dict[str, Any]) -> None:
    text = vector["input"]["json_text"]
    expected = vector["expected"]["utf8"].encode("utf-8")
    # canonical_json.10 is the spec's {"a": -0, "b": 1e10}: integral numbers in any
    # spelling are integers.
    value = parse_json_strict(text)
    assert encode_canonical_json(value) == expected
    assert canonicaljson.encode_canonical_json(value) == expected


def test_integer_range_vector() -> None:
    (vector,) = vectors("canonical_json.integer_range")
    for case, expected in zip(vector["input"], vector["expected"], strict=True):
        text = case["json_text"]
        if expected == "valid":
            value = parse_json_strict(text)
            encode_canonical_json(value)
        else:
            with pytest.raises(CanonicalJsonError):
                parse_json_strict(text)
            with pytest.raises(CanonicalJsonError):
                encode_canonical_json(parse_json_lenient(text))


def test_range_limits_match_the_spec() -> None:
    assert MAX_SAFE_INT == 2**53 - 1 and MIN_SAFE_INT == -(2**53) + 1
    assert encode_canonical_json([MAX_SAFE_INT, MIN_SAFE_INT]) == (
        b"[9007199254740991,-9007199254740991]"
    )
    for bad in (MAX_SAFE_INT + 1, MIN_SAFE_INT - 1, 2**64, -(2**70)):
        with pytest.raises(CanonicalJsonError):
            encode_canonical_json({"a": [bad]})


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        1.0,
        {"a": float("nan")},
        {"a": [float("inf")]},
        {"a": {"b": [-0.0]}},
        {1: "non-str key"},
        {"a": {2, 3}},
        {"a": b"bytes"},
        "\ud800",
        {"a": object()},
    ],
)
def test_refused(value: Any) -> None:
    with pytest.raises(CanonicalJsonError):
        encode_canonical_json(value)


def test_deep_nesting_refused_cleanly() -> None:
    value: Any = 1
    for _ in range(2000):
        value = [value]
    with pytest.raises(CanonicalJsonError):
        encode_canonical_json(value)
    with pytest.raises(CanonicalJsonError):
        parse_json_strict("[" * 2000 + "]" * 2000)


def test_strict_parse_refuses_nesting_it_could_not_encode() -> None:
    """orjson parses 1024 levels but encodes 254: found by tests/fuzz."""
    ok = "[" * 254 + "]" * 254
    assert encode_canonical_json(parse_json_strict(ok)) == ok.encode()
    for text in ("[" * 255 + "]" * 255, '{"a":' * 255 + "1" + "}" * 255):
        with pytest.raises(CanonicalJsonError):
            parse_json_strict(text)


def test_subclass_values_and_tuples_encode_like_the_stdlib() -> None:
    class S(str):
        pass

    value = {"a": (1, True, None), "b": S("x")}
    assert encode_canonical_json(value) == canonicaljson.encode_canonical_json(value)
    # orjson refuses str-subclass keys; so do we (callers pass plain parsed JSON).
    with pytest.raises(CanonicalJsonError):
        encode_canonical_json({S("b"): 1})


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("{}", True),
        ('{"a":-0}', True),
        ('{"a":1,"a":2}', True),  # duplicate keys: last one wins
        ('{"a":1.0}', False),  # a decimal point is a float; only the exponent form is read
        ('{"a":-0.0}', False),
        ('{"a":1e10}', True),
        ('{"a":1.5e1}', True),
        ('{"a":2E+3}', True),
        ('{"a":1.5}', False),
        ('{"a":1e-3}', False),
        ('{"a":4503599627370497.5}', False),  # a float would round it to an integer
        ('{"a":9007199254740992.0}', False),  # integral, out of range
        ('{"a":1e999999999}', False),
        ('{"a":1e400}', False),
        ('{"a":NaN}', False),
        ('{"a":Infinity}', False),
        ('{"a":-9007199254740992}', False),
        ("99999999999999999999999", False),
        ("{", False),
        ('"\\ud800"', False),  # lone surrogate escape
        ("", False),
    ],
)
def test_parse_json_strict(text: str, ok: bool) -> None:
    if ok:
        parse_json_strict(text)
        parse_json_strict(text.encode())
    else:
        with pytest.raises(CanonicalJsonError):
            parse_json_strict(text)


def test_parse_strict_refuses_invalid_utf8_and_non_text() -> None:
    with pytest.raises(CanonicalJsonError):
        parse_json_strict(b'{"a":"\xff"}')
    with pytest.raises(CanonicalJsonError):
        parse_json_strict(123)  # type: ignore[arg-type]


def test_parse_lenient_keeps_floats_and_big_integers_exactly() -> None:
    assert parse_json_lenient(b'{"a":1.5,"b":[1e10]}') == {"a": 1.5, "b": [1e10]}
    big = 2**80 + 1
    assert parse_json_lenient(f'{{"a":{big},"f":0.5}}') == {"a": big, "f": 0.5}
    assert parse_json_lenient(f"[{2**60}]") == [2**60]
    with pytest.raises(CanonicalJsonError):
        parse_json_lenient('{"a":NaN}')
    with pytest.raises(CanonicalJsonError):
        parse_json_lenient("{")


def test_lenient_encoding_matches_canonicaljson() -> None:
    value = {"f": [1.5, 1e-07, 1e20, -0.0, 10.0], "big": 2**80, "s": "é"}
    assert encode_canonical_json_lenient(value) == canonicaljson.encode_canonical_json(value)
    assert encode_canonical_json_lenient({"a": 1}) == b'{"a":1}'
    with pytest.raises(CanonicalJsonError):
        encode_canonical_json_lenient({"a": float("nan")})
    with pytest.raises(CanonicalJsonError):
        encode_canonical_json_lenient({"a": object()})


# --- the canonicaljson library as an oracle -----------------------------------------

safe_ints = st.integers(min_value=MIN_SAFE_INT, max_value=MAX_SAFE_INT)
# Any code point but lone surrogates (which have no UTF-8 form), control chars included.
texts = st.text(st.characters(exclude_categories=["Cs"]))
json_values = st.recursive(
    st.none() | st.booleans() | safe_ints | texts,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(texts, children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=500)
@given(json_values)
def test_matches_canonicaljson(value: Any) -> None:
    ours = encode_canonical_json(value)
    assert ours == canonicaljson.encode_canonical_json(value)
    assert encode_canonical_json_lenient(value) == ours
    assert parse_json_strict(ours) == value


@given(
    json_values,
    st.integers().filter(lambda i: not MIN_SAFE_INT <= i <= MAX_SAFE_INT)
    | st.floats(allow_nan=True, allow_infinity=True),
)
def test_out_of_range_and_floats_refused_anywhere(value: Any, bad: Any) -> None:
    for wrapped in ({"x": [value, bad]}, [bad], {"k": {"k": bad}}):
        with pytest.raises(CanonicalJsonError):
            encode_canonical_json(wrapped)


def test_integral_numbers_normalise_to_integers() -> None:
    assert parse_json_strict('{"a": -0, "b": 1e10, "c": [1E2, -2e0]}') == {
        "a": 0,
        "b": 10000000000,
        "c": [100, -2],
    }
    assert all(type(v) is int for v in parse_json_strict("[1e10, 150e-1, -0]"))


def test_extreme_exponents_refused_or_zero() -> None:
    """Found by fuzz/atheris_targets.py: a decimal exponent too small for the decimal
    context raised decimal.InvalidOperation out of the parser (a 500 for a client body, a
    failed transaction for a PDU)."""
    with pytest.raises(CanonicalJsonError):
        parse_json_strict('{"": [1e-04704992900719925470]}')
    with pytest.raises(CanonicalJsonError):
        parse_json_strict("[1.5e-99999999999999999999, 1]")
    with pytest.raises(CanonicalJsonError):
        parse_json_strict("[0e-99999999999999999999]")
    assert parse_json_strict("[0e-999, -0e-999999999999999999, 1e-0]") == [0, 0, 1]


def test_nested_within_counts_container_depth() -> None:
    assert nested_within("scalar", 1) and nested_within({}, 1)
    assert nested_within({"a": [1, {"b": 2}]}, 3)
    assert not nested_within({"a": [1, {"b": 2}]}, 2)
    deep: list[object] = []
    for _ in range(100_000):  # far past the recursion limit: walked with a stack
        deep = [deep]
    assert not nested_within(deep, 1000)

"""Unpadded base64: the spec's vectors, both alphabets, padding tolerance, garbage."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from starling.protocol.unpadded_base64 import decode_base64, encode_base64
from tests.protocol.vectors import vectors


def _bytes(spec: dict[str, str]) -> bytes:
    return spec["utf8"].encode() if "utf8" in spec else bytes.fromhex(spec["hex"])


ENCODE = vectors("base64.unpadded.")


@pytest.mark.parametrize("vector", ENCODE, ids=[v["id"] for v in ENCODE])
def test_unpadded_vectors(vector: dict[str, Any]) -> None:
    if vector["operation"] == "encode_unpadded_base64":
        data = _bytes(vector["input"])
        assert encode_base64(data) == vector["expected"]
        assert decode_base64(vector["expected"]) == data
    else:
        assert decode_base64(vector["input"]) == _bytes(vector["expected"])


def test_urlsafe_vector() -> None:
    (vector,) = vectors("base64.urlsafe.")
    data = _bytes(vector["input"])
    assert encode_base64(data) == vector["expected"]["standard"]
    assert encode_base64(data, urlsafe=True) == vector["expected"]["urlsafe"]
    assert decode_base64(vector["expected"]["standard"]) == data
    assert decode_base64(vector["expected"]["urlsafe"]) == data


@given(st.binary(max_size=100), st.booleans(), st.booleans())
def test_round_trip_any_alphabet_any_padding(data: bytes, urlsafe: bool, padded: bool) -> None:
    text = encode_base64(data, urlsafe=urlsafe)
    assert "=" not in text
    if padded:
        text += "=" * (-len(text) % 4)
    assert decode_base64(text) == data
    expected = base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)
    assert text.encode() == expected or not padded


@pytest.mark.parametrize(
    "garbage",
    ["A", "Zm9vY", "Zm 9v", "Zm9v\n", "Zm*v", "Zm=v", "+-__", "Zg\u00e9=", "é"],
)
def test_garbage_refused(garbage: str) -> None:
    with pytest.raises(ValueError):
        decode_base64(garbage)


def test_non_string_refused() -> None:
    with pytest.raises(ValueError):
        decode_base64(b"Zm9v")  # type: ignore[arg-type]

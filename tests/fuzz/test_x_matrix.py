"""Fuzz: X-Matrix Authorization headers from anyone on the internet parse, or fail with
XMatrixError; what parses verifies (or fails) with XMatrixError only."""

from __future__ import annotations

import contextlib

from hypothesis import example, given
from hypothesis import strategies as st

from starling.protocol.signing import SigningKey
from starling.protocol.x_matrix import XMatrixError, parse_header, sign_request, verify_request
from tests.fuzz.strategies import NASTY_CHARS, fuzz_settings, json_values, texts

KEY = SigningKey(b"\x03" * 32, "k1")
NAMES = st.sampled_from(["origin", "destination", "key", "sig", "ORIGIN", "Key", "x", ""])
VALUES = st.one_of(
    st.sampled_from(
        [
            "origin.example",
            "ed25519:k1",
            "ed25519:",
            "ed25519",
            "[::1]:8448",
            "a" * 300,
            "",
            "ed25519:k1:x",
            "example.org:99999999999999999999",
        ]
    ),
    texts,
)


@st.composite
def headers(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["X-Matrix ", "x-matrix  ", "X-Matrix", "Bearer ", ""]))
    params = []
    for _ in range(draw(st.integers(0, 5))):
        name, value = draw(NAMES), draw(VALUES)
        quote = draw(st.sampled_from(['"', "", '"\\']))
        params.append(f"{name}={quote}{value}{quote if quote != chr(34) + chr(92) else chr(34)}")
    sep = draw(st.sampled_from([",", ", ", ",,", ";"]))
    text = scheme + sep.join(params)
    if draw(st.integers(0, 3)) == 0:
        text += draw(NASTY_CHARS)
    return text


@fuzz_settings(2)
@given(headers() | texts)
@example('X-Matrix origin="a\\')
@example("X-Matrix origin=a,key=ed25519:k1,sig=\udcff")
def test_header_parses_or_raises_xmatrix_error(header: str) -> None:
    try:
        auth = parse_header(header)
    except XMatrixError:
        return
    with contextlib.suppress(XMatrixError):
        verify_request(
            auth,
            KEY.verify_key,
            method="PUT",
            uri="/_matrix/federation/v1/send/1",
            our_server_name="dest.example",
            content={"pdus": []},
        )


@fuzz_settings()
@given(st.sampled_from(["GET", "PUT", "\u00e9"]), texts, json_values())
def test_signed_requests_round_trip(method: str, uri: str, content: object) -> None:
    """Whatever we can sign, the receiving side parses and verifies."""
    try:
        header = sign_request(
            KEY,
            method=method,
            uri=uri,
            origin="origin.example",
            destination="dest.example",
            content=content,
        )
    except XMatrixError:
        return
    verify_request(
        parse_header(header),
        KEY.verify_key,
        method=method,
        uri=uri,
        our_server_name="dest.example",
        content=content,
    )

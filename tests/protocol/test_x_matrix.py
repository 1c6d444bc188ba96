"""X-Matrix request signatures: the spec's vectors, round trips, malformed headers."""

from __future__ import annotations

from typing import Any

import pytest

from starling.protocol.signing import SigningKey, split_key_id
from starling.protocol.x_matrix import (
    XMatrixAuth,
    XMatrixError,
    parse_header,
    parse_params,
    request_json,
    sign_request,
    verify_request,
)
from tests.protocol.vectors import test_key as spec_test_key
from tests.protocol.vectors import vectors


def _spec_key() -> SigningKey:
    tk = spec_test_key()
    return SigningKey.from_seed_base64(tk["seed_unpadded_base64"], split_key_id(tk["key_id"])[1])


SIGN = vectors("x_matrix.sign.")


@pytest.mark.parametrize("vector", SIGN, ids=[v["id"] for v in SIGN])
def test_sign_vectors(vector: dict[str, Any]) -> None:
    req = vector["input"]["request_json"]
    key = _spec_key()
    header = sign_request(
        key,
        method=req["method"],
        uri=req["uri"],
        origin=req["origin"],
        destination=req["destination"],
        content=req.get("content"),
    )
    assert header == vector["expected"]["authorization_header"]
    auth = parse_header(header)
    assert auth.sig == vector["expected"]["signature"]
    assert (
        request_json(
            req["method"], req["uri"], req["origin"], req["destination"], req.get("content")
        )
        == req
    )
    verify_request(
        auth,
        key.verify_key,
        method=req["method"],
        uri=req["uri"],
        our_server_name=req["destination"],
        content=req.get("content"),
    )


def test_parse_vector() -> None:
    (vector,) = vectors("x_matrix.parse")
    for header, expected in zip(vector["input"], vector["expected"], strict=True):
        assert parse_params(header) == expected
        auth = parse_header(header)
        assert auth == XMatrixAuth(
            origin=expected["origin"],
            key=expected["key"],
            sig=expected["sig"],
            destination=expected.get("destination"),
        )


def test_parse_escapes_and_scheme_case() -> None:
    params = parse_params('x-matrix   origin="a\\"b",key=ed25519:1,sig="c2ln"')
    assert params == {"origin": 'a"b', "key": "ed25519:1", "sig": "c2ln"}


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer abc",
        "X-Matrix",
        "X-Matrixorigin=a,key=ed25519:1,sig=x",
        'X-Matrix origin="a.example",key="ed25519:1"',  # no sig
        'X-Matrix origin="a.example",key="ed25519:1",sig=""',  # empty sig
        'X-Matrix origin="a.example" key="ed25519:1",sig="x"',  # missing comma
        'X-Matrix origin="a.example,key="ed25519:1",sig="x"',  # unbalanced quote
        'X-Matrix origin="a.example",key="ed25519:1",sig="x",',  # trailing comma
        'X-Matrix origin="a.example",origin="b.example",key="ed25519:1",sig="x"',
        'X-Matrix origin="a example",key="ed25519:1",sig="x"',  # not a server name
        'X-Matrix origin="a.example",key="nocolon",sig="x"',
        'X-Matrix origin="a.example",key="ed25519:1",sig="x",destination="b/c"',
        'X-Matrix origin=a.ex"ample,key="ed25519:1",sig="x"',
        'X-Matrix origin="a.example",key="ed25519:1",sig="x\x00"',
    ],
)
def test_malformed_headers(header: str) -> None:
    with pytest.raises(XMatrixError):
        parse_header(header)


def test_non_string_header() -> None:
    with pytest.raises(XMatrixError):
        parse_header(None)  # type: ignore[arg-type]


def _signed(content: Any = None) -> tuple[SigningKey, XMatrixAuth]:
    key = SigningKey.generate()
    header = sign_request(
        key,
        method="PUT",
        uri="/_matrix/federation/v1/send/1",
        origin="a.example",
        destination="b.example",
        content=content,
    )
    return key, parse_header(header)


def test_verify_rejects_tampering() -> None:
    key, auth = _signed({"pdus": []})
    good: dict[str, Any] = {
        "method": "PUT",
        "uri": "/_matrix/federation/v1/send/1",
        "our_server_name": "b.example",
        "content": {"pdus": []},
    }
    verify_request(auth, key.verify_key, **good)
    for change in (
        {"method": "POST"},
        {"uri": "/_matrix/federation/v1/send/2"},
        {"content": {"pdus": [1]}},
        {"content": None},
    ):
        with pytest.raises(XMatrixError, match="does not verify"):
            verify_request(auth, key.verify_key, **{**good, **change})
    with pytest.raises(XMatrixError, match="not this server"):
        verify_request(auth, key.verify_key, **{**good, "our_server_name": "c.example"})
    with pytest.raises(XMatrixError):
        verify_request(auth, SigningKey.generate().verify_key, **good)
    garbled = XMatrixAuth(auth.origin, auth.key, "!!!", auth.destination)
    with pytest.raises(XMatrixError):
        verify_request(garbled, key.verify_key, **good)


def test_verify_without_destination_uses_our_name() -> None:
    key, auth = _signed()
    old_style = XMatrixAuth(auth.origin, auth.key, auth.sig, None)
    kwargs: dict[str, Any] = {"method": "PUT", "uri": "/_matrix/federation/v1/send/1"}
    verify_request(old_style, key.verify_key, our_server_name="b.example", **kwargs)
    with pytest.raises(XMatrixError):
        verify_request(old_style, key.verify_key, our_server_name="c.example", **kwargs)


def test_floats_in_content_are_signed_leniently() -> None:
    # A transaction may carry room version 1-5 PDUs holding floats.
    key, auth = _signed({"pdus": [{"content": {"f": 1.5}}]})
    verify_request(
        auth,
        key.verify_key,
        method="PUT",
        uri="/_matrix/federation/v1/send/1",
        our_server_name="b.example",
        content={"pdus": [{"content": {"f": 1.5}}]},
    )


def test_sign_refuses_unencodable() -> None:
    key = SigningKey.generate()
    with pytest.raises(XMatrixError):
        sign_request(
            key, method="GET", uri="/x", origin="a", destination="b", content={"a": float("nan")}
        )
    with pytest.raises(XMatrixError):
        sign_request(key, method="GET", uri="/x", origin='a"', destination="b")

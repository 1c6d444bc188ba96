"""Signing keys and signed JSON: the spec's vectors, and signedjson as an oracle."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import signedjson.key
import signedjson.sign
from hypothesis import given, settings
from hypothesis import strategies as st

from starling.protocol.canonical_json import MAX_SAFE_INT, MIN_SAFE_INT
from starling.protocol.signing import (
    KeyFormatError,
    SignatureError,
    SigningKey,
    VerifyKey,
    build_server_keys,
    compute_signature,
    decode_verify_key_base64,
    decode_verify_key_bytes,
    read_signing_key,
    read_signing_keys,
    sign_json,
    signature_key_ids,
    split_key_id,
    verify_signed_json,
    write_signing_keys,
)
from tests.protocol.vectors import test_key as spec_test_key
from tests.protocol.vectors import vectors


def _spec_key() -> SigningKey:
    tk = spec_test_key()
    _alg, version = split_key_id(tk["key_id"])
    return SigningKey.from_seed_base64(tk["seed_unpadded_base64"], version)


def test_test_key_vector() -> None:
    (vector,) = vectors("signing.test_key.")
    key = SigningKey.from_seed_base64(vector["input"]["seed_unpadded_base64"], "1")
    assert key.public_key_base64 == vector["expected"]["public_key_unpadded_base64"]
    assert key.key_id == spec_test_key()["key_id"]
    # The spec's seed text has non-zero trailing bits (…XA1; canonical is …XA0): decoding
    # must tolerate that, and re-encoding gives the canonical spelling of the same seed.
    assert SigningKey.from_seed_base64(key.seed_base64, "1").seed == key.seed


SIGN_VECTORS = vectors("signing.json.") + vectors("server_keys.")


@pytest.mark.parametrize("vector", SIGN_VECTORS, ids=[v["id"] for v in SIGN_VECTORS])
def test_sign_json_vectors(vector: dict[str, Any]) -> None:
    assert vector["input"]["key"] == "test_key"
    key = _spec_key()
    server = spec_test_key()["server_name"]
    obj = vector["input"]["object"]
    before = copy.deepcopy(obj)
    signed = sign_json(obj, server, key)
    assert signed == vector["expected"]
    assert obj == before, "sign_json must not modify its input"
    verify_signed_json(signed, server, key.key_id, key.verify_key)
    assert compute_signature(obj, key) == signed["signatures"][server][key.key_id]


def test_server_keys_builder_matches_vector() -> None:
    (vector,) = vectors("server_keys.self_signed")
    key = _spec_key()
    obj = vector["input"]["object"]
    doc = build_server_keys(obj["server_name"], [key], obj["valid_until_ts"])
    assert doc == vector["expected"]


def test_server_keys_with_old_keys() -> None:
    key, old = SigningKey.generate(), SigningKey.generate("old")
    doc = build_server_keys("example.org", [key], 5, {old.key_id: (old.verify_key, 3)})
    assert doc["old_verify_keys"] == {
        "ed25519:old": {"key": old.public_key_base64, "expired_ts": 3}
    }
    verify_signed_json(doc, "example.org", key.key_id, key.verify_key)
    with pytest.raises(KeyFormatError):
        build_server_keys("example.org", [], 5)


def test_verify_failures() -> None:
    key = _spec_key()
    signed = sign_json({"a": 1}, "domain", key)
    vk = key.verify_key
    with pytest.raises(SignatureError, match="not signed by"):
        verify_signed_json(signed, "other", key.key_id, vk)
    with pytest.raises(SignatureError, match="no signature"):
        verify_signed_json(signed, "domain", "ed25519:2", vk)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_signed_json({**signed, "a": 2}, "domain", key.key_id, vk)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_signed_json(signed, "domain", key.key_id, SigningKey.generate().verify_key)
    # unsigned is not covered
    verify_signed_json({**signed, "unsigned": {"x": 1}}, "domain", key.key_id, vk)
    bad_sig = {**signed, "signatures": {"domain": {key.key_id: "!!"}}}
    with pytest.raises(SignatureError):
        verify_signed_json(bad_sig, "domain", key.key_id, vk)
    short_sig = {**signed, "signatures": {"domain": {key.key_id: "AAAA"}}}
    with pytest.raises(SignatureError, match="64 bytes"):
        verify_signed_json(short_sig, "domain", key.key_id, vk)
    junks: list[Any] = [{"a": 1}, {"signatures": []}, {"signatures": {"domain": "x"}}, []]
    for junk in junks:
        with pytest.raises(SignatureError):
            verify_signed_json(junk, "domain", key.key_id, vk)
    with pytest.raises(SignatureError):
        verify_signed_json({**signed, "f": 1.5}, "domain", key.key_id, vk)


def test_lenient_signing_for_old_room_versions() -> None:
    key = _spec_key()
    obj = {"f": 1.5, "big": 2**60}
    with pytest.raises(SignatureError):
        sign_json(obj, "domain", key)
    signed = sign_json(obj, "domain", key, strict=False)
    verify_signed_json(signed, "domain", key.key_id, key.verify_key, strict=False)
    sj_key = signedjson.key.decode_verify_key_bytes(key.key_id, key.verify_key.key_bytes)
    signedjson.sign.verify_signed_json(signed, "domain", sj_key)


def test_sign_json_rejects_malformed_signatures_member() -> None:
    key = _spec_key()
    with pytest.raises(SignatureError):
        sign_json({"signatures": "x"}, "domain", key)
    with pytest.raises(SignatureError):
        sign_json({"signatures": {"domain": []}}, "domain", key)
    with pytest.raises(SignatureError):
        sign_json([], "domain", key)  # type: ignore[arg-type]


def test_signature_key_ids() -> None:
    obj = {"signatures": {"d": {"ed25519:1": "x", "curve25519:2": "y", "ed25519:b": "z"}}}
    assert signature_key_ids(obj, "d") == ["ed25519:1", "ed25519:b"]
    assert signature_key_ids(obj, "e") == []
    assert signature_key_ids({"signatures": 1}, "d") == []


# --- keys and key files ----------------------------------------------------------------


def test_generate_and_key_file_round_trip() -> None:
    key = SigningKey.generate()
    assert key.version.startswith("a_") and len(key.version) == 6
    assert key.key_id == f"ed25519:{key.version}"
    line = key.to_key_file_line()
    assert line == f"ed25519 {key.version} {key.seed_base64}"
    again = SigningKey.from_key_file(line + "\n")
    assert again.seed == key.seed and again.version == key.version
    other = SigningKey.generate("x")
    keys = read_signing_keys(write_signing_keys([key, other]) + "\n\n")
    assert [k.key_id for k in keys] == [key.key_id, "ed25519:x"]
    assert key.seed_base64 not in repr(key)


def test_key_file_is_readable_by_signedjson() -> None:
    import io

    key = SigningKey.generate("abc")
    (theirs,) = signedjson.key.read_signing_keys(io.StringIO(write_signing_keys([key])))
    assert theirs.version == "abc"
    assert bytes(theirs.verify_key) == key.verify_key.key_bytes
    out = io.StringIO()
    signedjson.key.write_signing_keys(out, [theirs])
    assert read_signing_key(out.getvalue()).seed == key.seed


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no key"),
        ("ed25519 1\n", "line 1"),
        ("\ncurve25519 1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1", "line 2.*algorithm"),
        ("ed25519 1 not*base64", "line 1"),
        ("ed25519 1 YWJj", "32 bytes"),
        ("ed25519 bad-version YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1", "version"),
        ("ed25519 1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1 extra", "line 1"),
    ],
)
def test_bad_key_files(text: str, reason: str) -> None:
    with pytest.raises(KeyFormatError, match=reason):
        read_signing_key(text)


def test_verify_key_decoding() -> None:
    key = _spec_key()
    vk = decode_verify_key_base64("ed25519:1", key.public_key_base64)
    assert vk == key.verify_key and hash(vk) == hash(key.verify_key)
    assert decode_verify_key_bytes("ed25519:x", vk.key_bytes) == vk
    assert VerifyKey.from_base64(vk.base64) == vk
    for key_id, raw in [
        ("curve25519:1", vk.key_bytes),
        ("ed25519:1", b"short"),
        ("nocolon", vk.key_bytes),
    ]:
        with pytest.raises(KeyFormatError):
            decode_verify_key_bytes(key_id, raw)
    with pytest.raises(KeyFormatError):
        decode_verify_key_base64("ed25519:1", "***")
    with pytest.raises(KeyFormatError):
        SigningKey(b"short", "1")


# --- signedjson as an oracle, both directions ---------------------------------------------

texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(MIN_SAFE_INT, MAX_SAFE_INT) | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=20,
)
objects = st.dictionaries(texts, json_values, max_size=6)
server_names = st.sampled_from(["domain", "example.org", "[::1]:8448"])


@settings(max_examples=200)
@given(objects, server_names, st.binary(min_size=32, max_size=32))
def test_signedjson_oracle(obj: dict[str, Any], server: str, seed: bytes) -> None:
    ours = SigningKey(seed, "k1")
    theirs = signedjson.key.decode_signing_key_base64("ed25519", "k1", ours.seed_base64)
    their_vk = signedjson.key.get_verify_key(theirs)

    signed_by_us = sign_json(obj, server, ours)
    signedjson.sign.verify_signed_json(signed_by_us, server, their_vk)

    signed_by_them = signedjson.sign.sign_json(copy.deepcopy(obj), server, theirs)
    verify_signed_json(signed_by_them, server, "ed25519:k1", ours.verify_key)
    # ed25519 is deterministic: the same bytes either way.
    assert signed_by_us["signatures"][server] == signed_by_them["signatures"][server]

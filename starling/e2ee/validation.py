"""Checking uploaded key objects: shape, key encodings and signatures.

Every check raises a MatrixError with the spec's 400 error code, so a bad upload is refused
before anything is stored: M_BAD_JSON for a wrong shape, M_INVALID_PARAM for a key or ID
that cannot be right (unknown algorithm, another user's or device's keys, bad encoding),
M_INVALID_SIGNATURE for a missing or wrong signature. Device and one-time keys are checked
for shape only (see check_device_keys for why); cross-signing keys fully.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starling.errors import MatrixError, bad_json, invalid_param
from starling.protocol.canonical_json import CanonicalJsonError, encode_canonical_json
from starling.protocol.signing import (
    SignatureError,
    SigningError,
    VerifyKey,
    decode_verify_key_base64,
    verify_signed_json,
)
from starling.protocol.unpadded_base64 import decode_base64

CROSS_SIGNING_USAGES = ("master", "self_signing", "user_signing")

MAX_ID_BYTES = 255
MAX_ALGORITHMS = 32
KEY_BYTES = 32


def invalid_signature(msg: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_SIGNATURE", msg)


def canonical(obj: Any) -> str:
    """The canonical JSON stored for a key object; M_BAD_JSON if it has none."""
    try:
        return encode_canonical_json(obj).decode("utf-8")
    except CanonicalJsonError as e:
        raise bad_json(f"Key object is not valid canonical JSON: {e}") from None


def unsigned_part(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object without ``signatures`` and ``unsigned``: what a signature covers."""
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


def split_key_id(key_id: Any, what: str) -> tuple[str, str]:
    if not isinstance(key_id, str) or len(key_id.encode()) > MAX_ID_BYTES:
        raise invalid_param(f"{what} key ID must be a string of at most {MAX_ID_BYTES} bytes")
    algorithm, sep, rest = key_id.partition(":")
    if not sep or not algorithm or not rest:
        raise invalid_param(f"{what} key ID {key_id!r} is not of the form <algorithm>:<id>")
    return algorithm, rest


def decode_public_key(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise bad_json(f"{what} must be a string")
    try:
        raw = decode_base64(value)
    except ValueError:
        raise invalid_param(f"{what} is not unpadded base64") from None
    if len(raw) != KEY_BYTES:
        raise invalid_param(f"{what} must be a {KEY_BYTES}-byte key")
    return raw


def verify_key_for(key_id: str, public_key: str) -> VerifyKey:
    try:
        return decode_verify_key_base64(key_id, public_key)
    except SigningError as e:
        raise invalid_param(f"Bad ed25519 key {key_id}: {e}") from None


def check_signature(obj: Mapping[str, Any], user_id: str, key_id: str, key: VerifyKey) -> None:
    try:
        verify_signed_json(obj, user_id, key_id, key)
    except SignatureError as e:
        raise invalid_signature(f"Invalid signature: {e}") from None


def _signatures_shape(obj: Mapping[str, Any]) -> None:
    signatures = obj.get("signatures")
    if not isinstance(signatures, dict) or not all(
        isinstance(v, dict) and all(isinstance(s, str) for s in v.values())
        for v in signatures.values()
    ):
        raise bad_json("'signatures' must be an object of objects of strings")


# What /keys/upload checks, and what it leaves to clients. The spec gives the shape of
# DeviceKeys and of one-time/fallback keys (a string, or a KeyObject with `key` and
# `signatures`) but asks nothing of the server about their contents: the clients that
# download keys verify each device's self-signature and each signed one-time key
# themselves (E2EE module, "Downloading keys"/"Claiming one-time keys"), and a device can
# only upload its own keys. Synapse checks only the shape, and SyTest uploads placeholder
# keys ("curve25519+key"), empty or placeholder signatures, unsigned string one-time keys
# of made-up algorithms, key IDs not named after the device and changed identity keys for
# the same device. So this does as Synapse: shape, sizes, and that the object is the
# authenticated user's and device's; the key bytes and signatures are stored as given. Signatures that the *server* relies on —
# cross-signing keys and /keys/signatures/upload — are still verified (cross_signing.py).
MAX_KEY_VALUE_BYTES = 1024


def _key_value(value: Any, what: str) -> None:
    if not isinstance(value, str) or len(value.encode()) > MAX_KEY_VALUE_BYTES:
        raise bad_json(f"{what} must be a string of at most {MAX_KEY_VALUE_BYTES} bytes")


def check_device_keys(obj: Any, user_id: str, device_id: str) -> str:
    """A device's identity keys, uploaded by that device: their canonical JSON."""
    if not isinstance(obj, dict):
        raise bad_json("'device_keys' must be an object")
    if obj.get("user_id") != user_id:
        raise invalid_param("'device_keys.user_id' does not match the authenticated user")
    if obj.get("device_id") != device_id:
        raise invalid_param("'device_keys.device_id' does not match the authenticated device")
    algorithms = obj.get("algorithms")
    if (
        not isinstance(algorithms, list)
        or len(algorithms) > MAX_ALGORITHMS
        or not all(isinstance(a, str) and 0 < len(a) <= MAX_ID_BYTES for a in algorithms)
    ):
        raise bad_json(f"'algorithms' must be a list of at most {MAX_ALGORITHMS} algorithm names")
    keys = obj.get("keys")
    if not isinstance(keys, dict) or len(keys) > MAX_ALGORITHMS:
        raise bad_json(f"'keys' must be an object of at most {MAX_ALGORITHMS} keys")
    for key_id, value in keys.items():
        # The spec's "should be <algorithm>:<device_id>" is not enforced (nor by Synapse).
        split_key_id(key_id, "Device")
        _key_value(value, f"Device key {key_id}")
    _signatures_shape(obj)
    return canonical(obj)


def device_verify_key(key_json: Mapping[str, Any], device_id: str) -> VerifyKey | None:
    """The ed25519 key in stored device keys (None if it is unusable)."""
    keys = key_json.get("keys")
    value = keys.get(f"ed25519:{device_id}") if isinstance(keys, dict) else None
    if not isinstance(value, str):
        return None
    try:
        return decode_verify_key_base64(f"ed25519:{device_id}", value)
    except SigningError:
        return None


def check_one_time_keys(obj: Any, *, fallback: bool, max_keys: int) -> list[tuple[str, str, str]]:
    """One-time or fallback keys as ``(algorithm, key_id, canonical JSON)``; each is a
    string or a KeyObject (`key`, `signatures`, for fallback keys `fallback`)."""
    what = "fallback_keys" if fallback else "one_time_keys"
    if not isinstance(obj, dict):
        raise bad_json(f"'{what}' must be an object")
    if len(obj) > max_keys:
        raise invalid_param(f"At most {max_keys} {what} may be uploaded at once")
    out: list[tuple[str, str, str]] = []
    seen_algorithms: set[str] = set()
    for full_id, key in obj.items():
        algorithm, key_id = split_key_id(full_id, "One-time")
        if fallback:
            if algorithm in seen_algorithms:
                raise invalid_param(f"Only one fallback key per algorithm ({algorithm})")
            seen_algorithms.add(algorithm)
        if isinstance(key, dict):
            _key_value(key.get("key"), f"'key' of {full_id}")
            extra = key.get("fallback")
            if extra is not None and not isinstance(extra, bool):
                raise bad_json(f"'fallback' of key {full_id} must be a boolean")
            _signatures_shape(key)
        else:
            _key_value(key, f"Key {full_id}")
        out.append((algorithm, key_id, canonical(key)))
    return out


def check_cross_signing_key(obj: Any, user_id: str, usage: str) -> tuple[str, str, VerifyKey]:
    """A cross-signing key object: ``(key_id, public_key, VerifyKey)``. Its signatures are
    the caller's to check."""
    if not isinstance(obj, dict):
        raise bad_json(f"The {usage} key must be an object")
    if obj.get("user_id") != user_id:
        raise invalid_param(f"The {usage} key's user_id must be {user_id}")
    usages = obj.get("usage")
    if not isinstance(usages, list) or usage not in usages:
        raise invalid_param(f"The {usage} key's 'usage' must include {usage!r}")
    if not all(u in CROSS_SIGNING_USAGES for u in usages):
        raise invalid_param(f"Unknown usage in {usages!r}")
    keys = obj.get("keys")
    if not isinstance(keys, dict) or len(keys) != 1:
        raise invalid_param(f"The {usage} key must hold exactly one key")
    ((key_id, public_key),) = keys.items()
    algorithm, name = split_key_id(key_id, "Cross-signing")
    if algorithm != "ed25519":
        raise invalid_param(f"Unknown cross-signing key algorithm {algorithm!r}")
    decode_public_key(public_key, f"The {usage} key")
    if name != public_key:
        raise invalid_param(f"The {usage} key's ID must be ed25519:<its public key>")
    if "signatures" in obj:
        _signatures_shape(obj)
    return key_id, public_key, verify_key_for(key_id, public_key)

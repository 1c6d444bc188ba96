"""Ed25519 signing keys and signed JSON (spec: Appendices > Signing JSON, Server-Server
API > Retrieving server keys > Publishing Keys).

Owns: `SigningKey` / `VerifyKey`, the Synapse signing-key file format
(`ed25519 <version> <unpadded base64 seed>` per line), signing and verifying JSON objects,
and the self-signed `/_matrix/key/v2/server` document.

Signing calls libsodium through `nacl.bindings` rather than `nacl.signing`: the wrapper
classes allocate a SignedMessage per call, and signing and verifying every event is the
hot path of federation.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Iterable, Mapping
from typing import Any

import nacl.bindings
import nacl.exceptions

from starling.protocol.canonical_json import (
    CanonicalJsonError,
    encode_canonical_json,
    encode_canonical_json_lenient,
)
from starling.protocol.unpadded_base64 import decode_base64, encode_base64

ED25519 = "ed25519"

_SEED_BYTES = nacl.bindings.crypto_sign_SEEDBYTES
_PUBLIC_KEY_BYTES = nacl.bindings.crypto_sign_PUBLICKEYBYTES
_SIGNATURE_BYTES = nacl.bindings.crypto_sign_BYTES

# The spec (definitions/keys.yaml): "The version must have characters matching the
# regular expression [a-zA-Z0-9_]".
_KEY_VERSION = re.compile(r"[a-zA-Z0-9_]+")

# Not covered by signatures: intermediaries add to them after signing.
_UNSIGNED_KEYS = ("signatures", "unsigned")


class SigningError(ValueError):
    """Base class of this module's errors."""


class KeyFormatError(SigningError):
    """A key, key ID or signing-key file is malformed."""


class SignatureError(SigningError):
    """A signature is missing, malformed, or does not verify."""


def _check_version(version: str) -> None:
    if not isinstance(version, str) or not _KEY_VERSION.fullmatch(version):
        raise KeyFormatError(f"key version {version!r} must match [a-zA-Z0-9_]+")


def split_key_id(key_id: str) -> tuple[str, str]:
    """`"ed25519:abc"` -> `("ed25519", "abc")`. KeyFormatError if there is no ':'."""
    if not isinstance(key_id, str):
        raise KeyFormatError("key ID must be a string")
    algorithm, sep, version = key_id.partition(":")
    if not sep or not algorithm or not version:
        raise KeyFormatError(f"key ID {key_id!r} is not of the form algorithm:version")
    return algorithm, version


class VerifyKey:
    """An ed25519 public key. Hashable and comparable by its bytes."""

    __slots__ = ("key_bytes",)

    algorithm = ED25519
    key_bytes: bytes

    def __init__(self, key_bytes: bytes) -> None:
        if not isinstance(key_bytes, bytes) or len(key_bytes) != _PUBLIC_KEY_BYTES:
            raise KeyFormatError(f"an ed25519 public key is {_PUBLIC_KEY_BYTES} bytes")
        self.key_bytes = key_bytes

    @classmethod
    def from_base64(cls, key_base64: str) -> VerifyKey:
        try:
            return cls(decode_base64(key_base64))
        except ValueError as e:
            raise KeyFormatError(f"bad verify key: {e}") from None

    @property
    def base64(self) -> str:
        return encode_base64(self.key_bytes)

    def verify(self, message: bytes, signature: bytes) -> None:
        """SignatureError unless `signature` is this key's signature of `message`."""
        if len(signature) != _SIGNATURE_BYTES:
            raise SignatureError(f"an ed25519 signature is {_SIGNATURE_BYTES} bytes")
        try:
            nacl.bindings.crypto_sign_open(signature + message, self.key_bytes)
        except nacl.exceptions.BadSignatureError:
            raise SignatureError("signature does not verify") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other.key_bytes == self.key_bytes

    def __hash__(self) -> int:
        return hash(self.key_bytes)

    def __repr__(self) -> str:
        return f"VerifyKey({self.base64!r})"


class SigningKey:
    """An ed25519 signing key with its version (the part of the key ID after ':')."""

    __slots__ = ("_secret", "seed", "verify_key", "version")

    algorithm = ED25519
    seed: bytes
    version: str
    verify_key: VerifyKey
    _secret: bytes

    def __init__(self, seed: bytes, version: str) -> None:
        if not isinstance(seed, bytes) or len(seed) != _SEED_BYTES:
            raise KeyFormatError(f"an ed25519 seed is {_SEED_BYTES} bytes")
        _check_version(version)
        public, secret = nacl.bindings.crypto_sign_seed_keypair(seed)
        self.seed = seed
        self.version = version
        self.verify_key = VerifyKey(public)
        self._secret = secret

    @classmethod
    def generate(cls, version: str | None = None) -> SigningKey:
        """A fresh key; the default version looks like Synapse's ("a_" + 4 letters)."""
        if version is None:
            version = "a_" + "".join(secrets.choice(string.ascii_letters) for _ in range(4))
        return cls(secrets.token_bytes(_SEED_BYTES), version)

    @classmethod
    def from_seed_base64(cls, seed_base64: str, version: str) -> SigningKey:
        try:
            seed = decode_base64(seed_base64)
        except ValueError as e:
            raise KeyFormatError(f"bad signing key seed: {e}") from None
        return cls(seed, version)

    @property
    def key_id(self) -> str:
        return f"{self.algorithm}:{self.version}"

    @property
    def seed_base64(self) -> str:
        return encode_base64(self.seed)

    @property
    def public_key_base64(self) -> str:
        return self.verify_key.base64

    @classmethod
    def from_key_file(cls, text: str) -> SigningKey:
        """The first key of a signing-key file (see `read_signing_keys`)."""
        return read_signing_key(text)

    def to_key_file_line(self) -> str:
        """This key as one signing-key file line, without the newline."""
        return f"{self.algorithm} {self.version} {self.seed_base64}"

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached signature of `message`."""
        signed: bytes = nacl.bindings.crypto_sign(message, self._secret)
        return signed[:_SIGNATURE_BYTES]

    def __repr__(self) -> str:  # never show the seed
        return f"SigningKey({self.key_id!r}, public={self.public_key_base64!r})"


# --- the signing-key file ------------------------------------------------------------


def read_signing_keys(text: str) -> list[SigningKey]:
    """Parse a Synapse-format signing-key file: one `ed25519 <version> <seed>` per line,
    blank lines ignored. KeyFormatError (with the line number) on anything else."""
    keys: list[SigningKey] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3:
            raise KeyFormatError(
                f"signing key file line {number}: expected 'ed25519 <version> <seed>'"
            )
        algorithm, version, seed_base64 = parts
        if algorithm != ED25519:
            raise KeyFormatError(
                f"signing key file line {number}: unsupported algorithm {algorithm!r}"
            )
        try:
            keys.append(SigningKey.from_seed_base64(seed_base64, version))
        except KeyFormatError as e:
            raise KeyFormatError(f"signing key file line {number}: {e}") from None
    return keys


def read_signing_key(text: str) -> SigningKey:
    """The first key of a signing-key file; KeyFormatError if it holds none."""
    keys = read_signing_keys(text)
    if not keys:
        raise KeyFormatError("signing key file holds no key")
    return keys[0]


def write_signing_keys(keys: Iterable[SigningKey]) -> str:
    """The signing-key file text for `keys`, one line each."""
    return "".join(k.to_key_file_line() + "\n" for k in keys)


def decode_verify_key_bytes(key_id: str, key_bytes: bytes) -> VerifyKey:
    """A VerifyKey for `key_id` ("ed25519:<version>"); KeyFormatError for another
    algorithm or a key of the wrong length."""
    algorithm, _version = split_key_id(key_id)
    if algorithm != ED25519:
        raise KeyFormatError(f"unsupported key algorithm {algorithm!r}")
    return VerifyKey(key_bytes)


def decode_verify_key_base64(key_id: str, key_base64: str) -> VerifyKey:
    try:
        key_bytes = decode_base64(key_base64)
    except ValueError as e:
        raise KeyFormatError(f"bad verify key for {key_id!r}: {e}") from None
    return decode_verify_key_bytes(key_id, key_bytes)


# --- signed JSON -----------------------------------------------------------------------


def _signable_bytes(obj: Mapping[str, Any], *, strict: bool) -> bytes:
    if not isinstance(obj, Mapping):
        raise SignatureError("only JSON objects can be signed")
    body = {k: v for k, v in obj.items() if k not in _UNSIGNED_KEYS}
    try:
        return encode_canonical_json(body) if strict else encode_canonical_json_lenient(body)
    except CanonicalJsonError as e:
        raise SignatureError(f"object has no canonical JSON form: {e}") from None


def compute_signature(obj: Mapping[str, Any], key: SigningKey, *, strict: bool = True) -> str:
    """The unpadded base64 signature of `obj` (without `signatures`/`unsigned`)."""
    return encode_base64(key.sign(_signable_bytes(obj, strict=strict)))


def sign_json(
    obj: Mapping[str, Any], server_name: str, key: SigningKey, *, strict: bool = True
) -> dict[str, Any]:
    """A copy of `obj` with `signatures[server_name][key.key_id]` added; existing
    signatures are kept (and are not covered, nor is `unsigned`).

    strict=False signs room version 1-5 content that may hold floats or big integers.
    """
    signature = compute_signature(obj, key, strict=strict)
    existing = obj.get("signatures", {})
    if not isinstance(existing, Mapping):
        raise SignatureError("'signatures' must be an object")
    ours = existing.get(server_name, {})
    if not isinstance(ours, Mapping):
        raise SignatureError(f"'signatures.{server_name}' must be an object")
    signed = dict(obj)
    signed["signatures"] = {**existing, server_name: {**ours, key.key_id: signature}}
    return signed


def signature_key_ids(obj: Mapping[str, Any], server_name: str) -> list[str]:
    """The key IDs of `server_name`'s signatures on `obj` whose algorithm we understand
    (spec: Checking for a Signature, steps 1-2). Empty if it has none."""
    signatures = obj.get("signatures") if isinstance(obj, Mapping) else None
    ours = signatures.get(server_name) if isinstance(signatures, Mapping) else None
    if not isinstance(ours, Mapping):
        return []
    return [k for k in ours if isinstance(k, str) and k.startswith(ED25519 + ":")]


def find_signature(obj: Mapping[str, Any], server_name: str, key_id: str) -> bytes:
    """The signature `obj` carries by `server_name` under `key_id`; SignatureError if
    there is none or it is not base64."""
    if not isinstance(obj, Mapping):
        raise SignatureError("only JSON objects carry signatures")
    signatures = obj.get("signatures")
    ours = signatures.get(server_name) if isinstance(signatures, Mapping) else None
    if not isinstance(ours, Mapping):
        raise SignatureError(f"object is not signed by {server_name}")
    signature_base64 = ours.get(key_id)
    if not isinstance(signature_base64, str):
        raise SignatureError(f"object has no signature by {server_name} with {key_id}")
    try:
        return decode_base64(signature_base64)
    except ValueError as e:
        raise SignatureError(f"signature by {server_name} with {key_id}: {e}") from None


def check_signature(
    message: bytes, signature: bytes, verify_key: VerifyKey, server_name: str, key_id: str
) -> None:
    """SignatureError unless `signature` over `message` verifies with `verify_key`."""
    if not isinstance(verify_key, VerifyKey):
        raise SignatureError("verify_key must be a VerifyKey")
    try:
        verify_key.verify(message, signature)
    except SignatureError as e:
        raise SignatureError(f"signature by {server_name} with {key_id}: {e}") from None


def verify_signed_json(
    obj: Mapping[str, Any],
    server_name: str,
    key_id: str,
    verify_key: VerifyKey,
    *,
    strict: bool = True,
) -> None:
    """SignatureError unless `obj` carries a valid signature by `server_name` under
    `key_id`, made with `verify_key` (spec: Checking for a Signature, steps 4-7).

    strict=False accepts room version 1-5 content with floats or big integers.
    """
    signature = find_signature(obj, server_name, key_id)
    check_signature(_signable_bytes(obj, strict=strict), signature, verify_key, server_name, key_id)


# --- /_matrix/key/v2/server -----------------------------------------------------------


def build_server_keys(
    server_name: str,
    signing_keys: Iterable[SigningKey],
    valid_until_ts: int,
    old_verify_keys: Mapping[str, tuple[VerifyKey, int]] | None = None,
) -> dict[str, Any]:
    """The `GET /_matrix/key/v2/server` response body, signed by every current key.

    old_verify_keys maps key ID -> (key, expired_ts) for keys no longer in use (still
    valid for checking old events).
    """
    keys = list(signing_keys)
    if not keys:
        raise KeyFormatError("a server needs at least one signing key")
    body: dict[str, Any] = {
        "server_name": server_name,
        "valid_until_ts": valid_until_ts,
        "verify_keys": {k.key_id: {"key": k.public_key_base64} for k in keys},
        "old_verify_keys": {
            key_id: {"key": key.base64, "expired_ts": expired_ts}
            for key_id, (key, expired_ts) in (old_verify_keys or {}).items()
        },
    }
    for key in keys:
        body = sign_json(body, server_name, key)
    return body

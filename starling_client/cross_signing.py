"""Cross-signing keys (spec: "Cross-signing" in the end-to-end encryption module), without
I/O.

A user has three Ed25519 keys besides their devices' keys:
- the **master** key, their identity: it signs the other two;
- the **self-signing** key signs the user's own devices;
- the **user-signing** key signs other users' master keys — "I verified this person".

A device is trusted through cross-signing when its keys carry its owner's self-signing
signature, that key carries the owner's master signature, and the owner's master key is
trusted: our own (we hold it, or verified it), or another user's that we verified by SAS
(our user-signing key then signs it, and the signature is uploaded for our other devices).

The private keys (32-byte Ed25519 seeds) are kept sealed in the local store and, in secret
storage, as the secrets `m.cross_signing.master`, `m.cross_signing.self_signing` and
`m.cross_signing.user_signing` (unpadded base64 of the seed), as Element keeps them.
"""

from __future__ import annotations

import os
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from starling_client.encoding import b64decode, b64encode, canonical_json

MASTER = "master"
SELF_SIGNING = "self_signing"
USER_SIGNING = "user_signing"
USAGES = (MASTER, SELF_SIGNING, USER_SIGNING)
SECRET_NAMES = {
    MASTER: "m.cross_signing.master",
    SELF_SIGNING: "m.cross_signing.self_signing",
    USER_SIGNING: "m.cross_signing.user_signing",
}


class CrossSigningError(ValueError):
    pass


class SigningKey:
    """One cross-signing private key."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise CrossSigningError("a cross-signing key is a 32-byte Ed25519 seed")
        self.seed = seed
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public = b64encode(raw)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(os.urandom(32))

    @classmethod
    def from_secret(cls, secret: str) -> SigningKey:
        """From the secret-storage form (base64 of the seed)."""
        try:
            return cls(b64decode(secret))
        except ValueError as e:
            raise CrossSigningError(f"not a cross-signing key: {e}") from e

    def secret(self) -> str:
        return b64encode(self.seed)

    @property
    def key_id(self) -> str:
        return f"ed25519:{self.public}"

    def sign(self, obj: dict[str, Any], user_id: str) -> dict[str, Any]:
        """`obj` with this key's signature added under `user_id` (other signatures kept;
        `signatures` and `unsigned` are not signed, as the spec's signing JSON says)."""
        unsigned = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
        signature = b64encode(self._key.sign(canonical_json(unsigned)))
        signed = dict(obj)
        signatures = {u: dict(s) for u, s in (obj.get("signatures") or {}).items()}
        signatures.setdefault(user_id, {})[self.key_id] = signature
        signed["signatures"] = signatures
        return signed


def key_object(user_id: str, usage: str, public: str) -> dict[str, Any]:
    """The `CrossSigningKey` object for a public key (unsigned)."""
    return {"user_id": user_id, "usage": [usage], "keys": {f"ed25519:{public}": public}}


def public_key_of(obj: Any, user_id: str, usage: str) -> str | None:
    """The Ed25519 public key of a `CrossSigningKey` object if it is well-formed for this
    user and usage (exactly one key, whose ID names it), else None."""
    if not isinstance(obj, dict) or obj.get("user_id") != user_id:
        return None
    usages = obj.get("usage")
    if not isinstance(usages, list) or usage not in usages:
        return None
    keys = obj.get("keys")
    if not isinstance(keys, dict) or len(keys) != 1:
        return None
    ((key_id, public),) = keys.items()
    if not isinstance(public, str) or key_id != f"ed25519:{public}":
        return None
    return public

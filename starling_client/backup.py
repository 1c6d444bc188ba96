"""Secret storage and server-side key backup, without I/O.

- The **recovery key** is the secret-storage (SSSS) key, shown in the spec's common
  cryptographic key representation (0x8B 0x01 + key + parity byte, base58, spaced by 4).
- **Secret storage** (`m.secret_storage.v1.aes-hmac-sha2`): a key description with the
  check MAC over 32 zero bytes, and secrets sealed with AES-CTR-256 + HMAC-SHA-256 under keys
  derived by HKDF-SHA-256 (zero salt, the secret's name as info).
- **Key backup** (`m.megolm_backup.v1.curve25519-aes-sha2`): each Megolm session is
  exported, wrapped in `BackedUpSessionData` and encrypted to the backup's Curve25519 public
  key (vodozemac's libolm-compatible PK encryption: ECDH, HKDF, AES-CBC, 8-byte MAC).

Element and matrix-js-sdk use the same formats, so a backup is portable between them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

import vodozemac
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from starling_client.encoding import b64decode, b64encode

SSSS = "m.secret_storage.v1.aes-hmac-sha2"
BACKUP_ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"
BACKUP_SECRET = "m.megolm_backup.v1"
MEGOLM = "m.megolm.v1.aes-sha2"
BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


class BackupError(ValueError):
    """A wrong recovery key, or secret-storage or backup data that does not check out."""


# ---- recovery key ----------------------------------------------------------------------------


def _b58encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    out = ""
    while number:
        number, rem = divmod(number, 58)
        out = BASE58[rem] + out
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + out


def _b58decode(text: str) -> bytes:
    number = 0
    for char in text:
        index = BASE58.find(char)
        if index < 0:
            raise BackupError(f"{char!r} is not a base58 character")
        number = number * 58 + index
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * zeros + body


def encode_recovery_key(key: bytes) -> str:
    data = b"\x8b\x01" + key
    parity = 0
    for byte in data:
        parity ^= byte
    text = _b58encode(data + bytes([parity]))
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def decode_recovery_key(text: str) -> bytes:
    data = _b58decode("".join(text.split()))
    if len(data) != 35 or data[:2] != b"\x8b\x01":
        raise BackupError("this is not a recovery key")
    parity = 0
    for byte in data:
        parity ^= byte
    if parity != 0:
        raise BackupError("the recovery key has a typo (parity check failed)")
    return data[2:34]


# ---- secret storage --------------------------------------------------------------------------


def _derive(key: bytes, name: str) -> tuple[bytes, bytes]:
    okm = HKDF(hashes.SHA256(), 64, b"\0" * 32, name.encode("utf-8")).derive(key)
    return okm[:32], okm[32:]


def _ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def _iv() -> bytes:
    iv = bytearray(os.urandom(16))
    iv[8] &= 0x7F  # bit 63 cleared, as the spec asks
    return bytes(iv)


def encrypt_secret(key: bytes, name: str, secret: str) -> dict[str, str]:
    aes, mac_key = _derive(key, name)
    iv = _iv()
    ciphertext = _ctr(aes, iv, secret.encode("utf-8"))
    mac = hmac.new(mac_key, ciphertext, hashlib.sha256).digest()
    return {"iv": b64encode(iv), "ciphertext": b64encode(ciphertext), "mac": b64encode(mac)}


def decrypt_secret(key: bytes, name: str, encrypted: Any) -> str:
    if not isinstance(encrypted, dict):
        raise BackupError(f"{name} is not encrypted with this key")
    try:
        iv = b64decode(str(encrypted.get("iv")))
        ciphertext = b64decode(str(encrypted.get("ciphertext")))
        mac = b64decode(str(encrypted.get("mac")))
    except ValueError as e:
        raise BackupError(f"bad base64 in {name}") from e
    aes, mac_key = _derive(key, name)
    if not hmac.compare_digest(hmac.new(mac_key, ciphertext, hashlib.sha256).digest(), mac):
        raise BackupError(f"wrong key for {name} (MAC mismatch)")
    return _ctr(aes, iv, ciphertext).decode("utf-8")


def key_description(
    key: bytes, name: str = "", passphrase: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The `m.secret_storage.key.<id>` account data for a new key, with its check MAC (and
    the `passphrase` parameters when the key was derived from a passphrase)."""
    check = encrypt_secret(key, "", "\0" * 32)
    description: dict[str, Any] = {
        "name": name,
        "algorithm": SSSS,
        "iv": check["iv"],
        "mac": check["mac"],
    }
    if passphrase is not None:
        description["passphrase"] = passphrase
    return description


# ---- a secret-storage key from a passphrase ------------------------------------------------

PBKDF2 = "m.pbkdf2"
# Element's count; the spec leaves it to the client. Work: ~0.5 s of SHA-512 on a laptop.
PBKDF2_ITERATIONS = 500_000
# A description may ask for more; more than this is refused (an attacker-chosen count must
# not stall the client for minutes).
MAX_PBKDF2_ITERATIONS = 10_000_000


def passphrase_parameters() -> dict[str, Any]:
    """Fresh `passphrase` parameters for a new key: a random salt, our iteration count."""
    salt = b64encode(os.urandom(24))
    return {"algorithm": PBKDF2, "salt": salt, "iterations": PBKDF2_ITERATIONS, "bits": 256}


def key_from_passphrase(passphrase: str, parameters: Any) -> bytes:
    """The secret-storage key a passphrase gives under a key description's `passphrase`
    parameters (`m.pbkdf2`: PBKDF2 with HMAC-SHA-512, the salt as its UTF-8 bytes, `bits`
    long, 256 by default)."""
    if not isinstance(parameters, dict) or parameters.get("algorithm") != PBKDF2:
        raise BackupError("this secret-storage key cannot be opened with a passphrase")
    salt, iterations = parameters.get("salt"), parameters.get("iterations")
    bits = parameters.get("bits", 256)
    if not isinstance(salt, str) or not isinstance(iterations, int) or isinstance(iterations, bool):
        raise BackupError("bad passphrase parameters in the secret-storage key")
    if not 1 <= iterations <= MAX_PBKDF2_ITERATIONS:
        raise BackupError(f"refusing {iterations} PBKDF2 iterations")
    if bits != 256:
        raise BackupError(f"a {bits}-bit secret-storage key is not supported (256 only)")
    return hashlib.pbkdf2_hmac(
        "sha512", passphrase.encode("utf-8"), salt.encode("utf-8"), iterations, 32
    )


def check_key(key: bytes, description: Any) -> bool:
    """Whether `key` is the key `description` describes (True when it has no check data)."""
    if not isinstance(description, dict) or description.get("algorithm") != SSSS:
        return False
    if "iv" not in description or "mac" not in description:
        return True
    try:
        iv = b64decode(str(description["iv"]))
        mac = b64decode(str(description["mac"]))
    except ValueError:
        return False
    aes, mac_key = _derive(key, "")
    ciphertext = _ctr(aes, iv, b"\0" * 32)
    return hmac.compare_digest(hmac.new(mac_key, ciphertext, hashlib.sha256).digest(), mac)


# ---- key backup ------------------------------------------------------------------------------


def backup_session_data(
    public_key: str,
    room_id: str,
    session: vodozemac.InboundGroupSession,
    sender_key: str,
    signing_key: str,
) -> dict[str, Any]:
    """The `KeyBackupData` for one inbound Megolm session."""
    index = int(session.first_known_index)
    exported = session.export_at(index)
    if exported is None:
        raise BackupError("the session cannot be exported")
    payload = {
        "algorithm": MEGOLM,
        "forwarding_curve25519_key_chain": [],
        "sender_key": sender_key,
        "sender_claimed_keys": {"ed25519": signing_key} if signing_key else {},
        "session_key": exported.to_base64(),
    }
    message = vodozemac.PkEncryption.from_key(
        vodozemac.Curve25519PublicKey.from_base64(public_key)
    ).encrypt(json.dumps(payload).encode("utf-8"))
    return {
        "first_message_index": index,
        "forwarded_count": 0,
        "is_verified": False,
        "session_data": {
            "ephemeral": b64encode(message.ephemeral_key),
            "ciphertext": b64encode(message.ciphertext),
            "mac": b64encode(message.mac),
        },
    }


def decrypt_session_data(private_key: bytes, session_data: Any) -> dict[str, Any]:
    """The `BackedUpSessionData` of one backed-up session."""
    if not isinstance(session_data, dict):
        raise BackupError("session_data is not an object")
    try:
        message = vodozemac.Message(
            b64decode(str(session_data.get("ciphertext"))),
            b64decode(str(session_data.get("mac"))),
            b64decode(str(session_data.get("ephemeral"))),
        )
        decryption = vodozemac.PkDecryption.from_key(
            vodozemac.Curve25519SecretKey.from_bytes(private_key)
        )
        plaintext = decryption.decrypt(message)
        data = json.loads(plaintext)
    except (ValueError, vodozemac.PkDecodeException, vodozemac.KeyException) as e:
        raise BackupError(f"a backed-up session does not decrypt: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("session_key"), str):
        raise BackupError("a backed-up session has no session_key")
    return data


def backup_public_key(private_key: bytes) -> str:
    return str(vodozemac.Curve25519SecretKey.from_bytes(private_key).public_key().to_base64())

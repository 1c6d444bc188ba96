"""Secret storage and key backup formats without a server: the recovery key against
mautrix's implementation, the SSSS check MAC and secrets, backed-up Megolm sessions, and a
restored session decrypting on a fresh machine (never as verified)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

from starling_client.backup import (
    BACKUP_SECRET,
    BackupError,
    backup_public_key,
    backup_session_data,
    check_key,
    decode_recovery_key,
    decrypt_secret,
    decrypt_session_data,
    encode_recovery_key,
    encrypt_secret,
    key_description,
)
from starling_client.crypto import MEGOLM, CryptoMachine, DecryptionError
from starling_client.encoding import b64encode
from tests.client.test_crypto import ROOM, Clock, KeyServer, send


def mautrix_ssss_util() -> ModuleType:
    """mautrix's SSSS helpers, loaded by path (its package __init__ needs python-olm)."""
    spec = importlib.util.find_spec("mautrix")
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).parent / "crypto" / "ssss" / "util.py"
    module_spec = importlib.util.spec_from_file_location("mautrix_ssss_util", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_recovery_key_matches_mautrix_and_catches_typos() -> None:
    oracle = mautrix_ssss_util()
    for _ in range(20):
        key = os.urandom(32)
        ours = encode_recovery_key(key)
        assert ours == oracle.encode_base58_recovery_key(key)
        assert decode_recovery_key(ours) == key
        assert oracle.decode_base58_recovery_key(ours) == key
    # A fixed key, so that the typo below is one the parity byte catches (a random typo
    # slips through with a chance of about 1 in 256).
    key = bytes(range(32))
    text = encode_recovery_key(key)
    assert len(text.replace(" ", "")) == 48 and text[4] == " "
    typo = text[:10] + ("2" if text[10] != "2" else "3") + text[11:]
    with pytest.raises(BackupError):
        decode_recovery_key(typo)
    with pytest.raises(BackupError):
        decode_recovery_key("0OIl")  # not base58
    with pytest.raises(BackupError):
        decode_recovery_key(encode_recovery_key(os.urandom(31)))


def test_secret_storage_key_check_and_secrets() -> None:
    oracle = mautrix_ssss_util()
    key = os.urandom(32)
    description = key_description(key)
    assert description["algorithm"] == "m.secret_storage.v1.aes-hmac-sha2"
    # mautrix computes the same check MAC from the key and IV.
    assert oracle.calculate_hash(key, description["iv"]) == description["mac"]
    assert check_key(key, description)
    assert not check_key(os.urandom(32), description)
    secret = b64encode(os.urandom(32))
    sealed = encrypt_secret(key, BACKUP_SECRET, secret)
    assert decrypt_secret(key, BACKUP_SECRET, sealed) == secret
    # mautrix's key derivation decrypts it too (AES-CTR with the same HKDF keys).
    aes, _ = oracle.derive_keys(key, BACKUP_SECRET)
    from starling_client.encoding import b64decode

    plain = oracle.prepare_aes(aes, sealed["iv"]).decrypt(b64decode(sealed["ciphertext"]))
    assert plain.decode() == secret
    with pytest.raises(BackupError):
        decrypt_secret(os.urandom(32), BACKUP_SECRET, sealed)
    with pytest.raises(BackupError):
        decrypt_secret(key, "another.secret", sealed)


def test_backed_up_session_restores_on_a_new_machine() -> None:
    clock = Clock()
    server = KeyServer()
    members = ["@alice:example.org", "@bob:example.org"]
    alice = CryptoMachine("@alice:example.org", "A1", clock=clock)
    bob = CryptoMachine("@bob:example.org", "B1", clock=clock)
    for m in (alice, bob):
        server.upload(m)
        m.track_users(members)
        m.set_room_encryption(ROOM, {"algorithm": MEGOLM})
    for m in (alice, bob):
        server.query(m)
    event = send(server, alice, members, [bob], "history", "$1")
    private = os.urandom(32)
    public = backup_public_key(private)
    (entry,) = bob.inbound.values()
    data = backup_session_data(public, ROOM, entry.session, entry.sender_key, entry.signing_key)
    assert data["first_message_index"] == 0 and not data["is_verified"]
    assert set(data["session_data"]) == {"ephemeral", "ciphertext", "mac"}
    with pytest.raises(BackupError):
        decrypt_session_data(os.urandom(32), data["session_data"])
    session = decrypt_session_data(private, data["session_data"])
    assert session["algorithm"] == MEGOLM and session["sender_key"] == alice.curve25519

    bob2 = CryptoMachine("@bob:example.org", "B2", clock=clock)
    assert bob2.import_inbound(
        ROOM,
        session["session_key"],
        session["sender_key"],
        session["sender_claimed_keys"]["ed25519"],
    )
    got = bob2.decrypt_room_event(ROOM, event)
    assert got.content["body"] == "history" and got.verified is False
    # A session imported twice is not replaced by one that knows fewer messages.
    assert not bob2.import_inbound(ROOM, session["session_key"], "", "")
    # An exported key that is garbage is refused.
    with pytest.raises(DecryptionError):
        bob2.import_inbound(ROOM, "not a key", "", "")


# A secret storage made by another client with a passphrase (the vector of mautrix-python's
# crypto/ssss/key_test.py): the passphrase and the recovery key open the same key, which
# decrypts the cross-signing master key stored in it.
VECTOR_DESCRIPTION = {
    "algorithm": "m.secret_storage.v1.aes-hmac-sha2",
    "passphrase": {
        "algorithm": "m.pbkdf2",
        "iterations": 500000,
        "salt": "y863BOoqOadgDp8S3FtHXikDJEalsQ7d",
    },
    "iv": "xxkTK0L4UzxgAFkQ6XPwsw",
    "mac": "MEhooO0ZhFJNxUhvRMSxBnJfL20wkLgle3ocY0ee/eA",
}
VECTOR_RECOVERY_KEY = "EsTE s92N EtaX s2h6 VQYF 9Kao tHYL mkyL GKMh isZb KJ4E tvoC"
VECTOR_PASSPHRASE = "correct horse battery staple"
VECTOR_MASTER_SECRET = {
    "iv": "BpKP9nQJTE9jrsAssoxPqQ==",
    "ciphertext": "fNRiiiidezjerTgV+G6pUtmeF3izzj5re/mVvY0hO2kM6kYGrxLuIu2ej80=",
    "mac": "/gWGDGMyOLmbJp+aoSLh5JxCs0AdS6nAhjzpe+9G2Q0=",
}
VECTOR_MASTER_KEY = bytes.fromhex(
    "68f97fd1922eecf6b82bb890d24d0652984e7a1d703b9e867b7ebaf7feb95b6f"
)


def test_secret_storage_passphrase_matches_another_clients_vector() -> None:
    from starling_client.backup import (
        MAX_PBKDF2_ITERATIONS,
        key_from_passphrase,
        passphrase_parameters,
    )
    from starling_client.encoding import b64decode

    key = key_from_passphrase(VECTOR_PASSPHRASE, VECTOR_DESCRIPTION["passphrase"])
    assert key == decode_recovery_key(VECTOR_RECOVERY_KEY)
    assert check_key(key, VECTOR_DESCRIPTION)
    wrong = key_from_passphrase("Correct horse battery staple", VECTOR_DESCRIPTION["passphrase"])
    assert not check_key(wrong, VECTOR_DESCRIPTION)
    secret = decrypt_secret(key, "m.cross_signing.master", VECTOR_MASTER_SECRET)
    assert b64decode(secret) == VECTOR_MASTER_KEY

    # Our own parameters: m.pbkdf2, a fresh salt, Element's iteration count, 256 bits.
    params = passphrase_parameters()
    assert params["algorithm"] == "m.pbkdf2" and params["bits"] == 256
    assert params["iterations"] >= 100_000 and params != passphrase_parameters()
    # Hostile parameters are refused before any work is done.
    for bad in (
        {"algorithm": "m.scrypt", "salt": "s", "iterations": 1},
        {"algorithm": "m.pbkdf2", "salt": "s", "iterations": MAX_PBKDF2_ITERATIONS + 1},
        {"algorithm": "m.pbkdf2", "salt": "s", "iterations": 0},
        {"algorithm": "m.pbkdf2", "salt": 5, "iterations": 10},
        {"algorithm": "m.pbkdf2", "salt": "s", "iterations": True},
        {"algorithm": "m.pbkdf2", "salt": "s", "iterations": 10, "bits": 128},
        None,
    ):
        with pytest.raises(BackupError):
            key_from_passphrase("x", bad)

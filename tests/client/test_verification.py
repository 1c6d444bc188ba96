"""SAS verification between two state machines, no server: both sides see the same emoji
and decimals, the MACs verify, and a man in the middle (a swapped key, a wrong device key,
a changed commitment) or an unsupported method ends in a cancellation."""

from __future__ import annotations

from typing import Any

import vodozemac

from starling_client.verification import SAS_EMOJI, Sas

ALICE_ED = vodozemac.Account().ed25519_key.to_base64()
BOB_ED = vodozemac.Account().ed25519_key.to_base64()


def pair(bob_sees_alice_as: str = ALICE_ED) -> tuple[Sas, Sas, list[Any]]:
    alice, start = Sas.start("@a:x", "ADEV", ALICE_ED, "@b:x", "BDEV", BOB_ED)
    bob = Sas.from_start("@b:x", "BDEV", BOB_ED, "@a:x", bob_sees_alice_as, start[1])
    return alice, bob, [start]


def exchange(alice: Sas, bob: Sas) -> None:
    accept = bob.accept()
    (key_a,) = alice.receive(*accept)
    (key_b,) = bob.receive(*key_a)
    assert alice.receive(*key_b) == []
    assert alice.state == bob.state == "keys"


def test_both_sides_agree_and_verify() -> None:
    alice, bob, _ = pair()
    exchange(alice, bob)
    assert alice.emoji() == bob.emoji()
    assert len(alice.emoji()) == 7 and all(e in SAS_EMOJI for e in alice.emoji())
    assert alice.decimals() == bob.decimals()
    assert all(1000 <= d <= 9191 for d in alice.decimals())
    (mac_a,) = alice.confirm()
    assert bob.receive(*mac_a) == []  # Bob has not confirmed yet
    mac_b, done_b = bob.confirm()
    assert bob.verified and done_b[0] == "m.key.verification.done"
    (done_a,) = alice.receive(*mac_b)
    assert alice.verified and done_a[0] == "m.key.verification.done"
    assert alice.mac_method == "hkdf-hmac-sha256.v2"


def test_wrong_device_key_is_a_key_mismatch() -> None:
    # Bob's idea of Alice's device key is not the key Alice's device really has.
    alice, bob, _ = pair(bob_sees_alice_as=BOB_ED)
    exchange(alice, bob)
    (mac_a,) = alice.confirm()
    bob.receive(*mac_a)
    out = bob.confirm()
    assert out[-1][0] == "m.key.verification.cancel"
    assert out[-1][1]["code"] == "m.key_mismatch"
    assert not bob.verified and bob.state == "cancelled"


def test_a_key_swapped_in_transit_breaks_the_commitment() -> None:
    alice, bob, _ = pair()
    accept = bob.accept()
    alice.receive(*accept)
    mallory = vodozemac.Sas().public_key.to_base64()
    (cancel,) = alice.receive(
        "m.key.verification.key", {"transaction_id": alice.transaction_id, "key": mallory}
    )
    assert cancel[1]["code"] == "m.mismatched_commitment"
    assert alice.state == "cancelled"


def test_hex_commitment_as_matrix_nio_sends_it_is_accepted() -> None:
    import hashlib

    from starling_client.encoding import canonical_json

    alice, start = Sas.start("@a:x", "ADEV", ALICE_ED, "@b:x", "BDEV", BOB_ED)
    theirs = vodozemac.Sas()
    key = theirs.public_key.to_base64()
    commitment = hashlib.sha256(key.encode() + canonical_json(start[1])).hexdigest()
    alice.receive(
        "m.key.verification.accept",
        {
            "transaction_id": alice.transaction_id,
            "key_agreement_protocol": "curve25519-hkdf-sha256",
            "hash": "sha256",
            "message_authentication_code": "hkdf-hmac-sha256",
            "short_authentication_string": ["emoji", "decimal"],
            "commitment": commitment,
        },
    )
    assert (
        alice.receive(
            "m.key.verification.key", {"transaction_id": alice.transaction_id, "key": key}
        )
        == []
    )
    assert alice.state == "keys"


def test_unsupported_methods_and_out_of_order_events_cancel() -> None:
    _, start = Sas.start("@a:x", "ADEV", ALICE_ED, "@b:x", "BDEV", BOB_ED)
    legacy = {**start[1], "key_agreement_protocols": ["curve25519"]}
    bob = Sas.from_start("@b:x", "BDEV", BOB_ED, "@a:x", ALICE_ED, legacy)
    assert bob.state == "cancelled" and bob.cancellation()[1]["code"] == "m.unknown_method"
    alice, bob, _ = pair()
    # A MAC before any key exchange.
    (cancel,) = bob.receive(
        "m.key.verification.mac", {"transaction_id": bob.transaction_id, "mac": {}, "keys": ""}
    )
    assert cancel[1]["code"] == "m.unexpected_message"
    # The other side cancels: nothing more is sent.
    alice.receive("m.key.verification.cancel", {"code": "m.user", "reason": "no"})
    assert (
        alice.state == "cancelled" and alice.receive("m.key.verification.key", {"key": "x"}) == []
    )


def test_mismatch_cancels() -> None:
    alice, bob, _ = pair()
    exchange(alice, bob)
    kind, content = alice.mismatch()
    assert kind == "m.key.verification.cancel" and content["code"] == "m.mismatched_sas"
    bob.receive(kind, content)
    assert bob.state == "cancelled" and not bob.verified


def test_master_keys_travel_in_the_mac_and_a_wrong_one_is_refused() -> None:
    from starling_client.cross_signing import SigningKey

    alice_master, bob_master = SigningKey.generate().public, SigningKey.generate().public
    alice, bob, _ = pair()
    alice.own_master, alice.their_master = alice_master, bob_master
    bob.own_master, bob.their_master = bob_master, alice_master
    exchange(alice, bob)
    (mac_a,) = alice.confirm()
    assert set(mac_a[1]["mac"]) == {"ed25519:ADEV", f"ed25519:{alice_master}"}
    bob.receive(*mac_a)
    mac_b, _ = bob.confirm()
    alice.receive(*mac_b)
    assert alice.verified and alice.master_verified and bob.verified and bob.master_verified

    # Bob expects another master key for Alice than the one her MAC vouches for.
    alice, bob, _ = pair()
    alice.own_master = alice_master
    bob.their_master = SigningKey.generate().public
    exchange(alice, bob)
    (mac_a,) = alice.confirm()
    bob.receive(*mac_a)
    out = bob.confirm()
    assert not bob.master_verified  # her master key is not the one Bob knows: not trusted
    assert bob.verified  # the device itself checked out
    # A MAC whose master-key entry was tampered with is a key mismatch.
    alice, bob, _ = pair()
    alice.own_master, bob.their_master = alice_master, alice_master
    exchange(alice, bob)
    (mac_a,) = alice.confirm()
    forged = dict(mac_a[1])
    forged["mac"] = {**forged["mac"], f"ed25519:{alice_master}": forged["mac"]["ed25519:ADEV"]}
    bob.receive("m.key.verification.mac", forged)
    out = bob.confirm()
    assert out[-1][1]["code"] == "m.key_mismatch" and not bob.master_verified

"""The client's crypto state machine without a server: a tiny in-memory "key server" stands
in for /keys/upload, /keys/query and /keys/claim, and to-device messages are handed over by
hand. Olm session set-up both ways, Megolm sharing and decryption, the rotation rules, replay
and forgery refusals, one-time and fallback key replenishing."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from starling_client.crypto import (
    MEGOLM,
    OLM,
    CryptoMachine,
    DecryptionError,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


class KeyServer:
    """Just enough of a homeserver's key endpoints."""

    def __init__(self) -> None:
        self.device_keys: dict[str, dict[str, Any]] = {}
        self.otks: dict[tuple[str, str], dict[str, Any]] = {}
        self.fallbacks: dict[tuple[str, str], dict[str, Any]] = {}

    def upload(self, machine: CryptoMachine) -> dict[str, Any] | None:
        body = machine.keys_to_upload()
        if body is None:
            return None
        me = (machine.user_id, machine.device_id)
        if "device_keys" in body:
            self.device_keys.setdefault(machine.user_id, {})[machine.device_id] = body[
                "device_keys"
            ]
        self.otks.setdefault(me, {}).update(body.get("one_time_keys", {}))
        if "fallback_keys" in body:
            self.fallbacks[me] = body["fallback_keys"]
        machine.keys_uploaded({"one_time_key_counts": {"signed_curve25519": len(self.otks[me])}})
        return body

    def query(self, machine: CryptoMachine) -> None:
        users = machine.users_to_query()
        machine.receive_keys_query(
            users, {"device_keys": {u: copy.deepcopy(self.device_keys.get(u, {})) for u in users}}
        )

    def claim(self, machine: CryptoMachine, users: list[str]) -> None:
        wanted = machine.missing_olm_sessions(users)
        answer: dict[str, dict[str, Any]] = {}
        for user, devices in wanted.items():
            for device in devices:
                pool = self.otks.get((user, device), {})
                if pool:
                    key_id = sorted(pool)[0]
                    answer.setdefault(user, {})[device] = {key_id: pool.pop(key_id)}
                elif (user, device) in self.fallbacks:
                    answer.setdefault(user, {})[device] = dict(self.fallbacks[(user, device)])
        machine.receive_keys_claim(wanted, {"one_time_keys": answer})


def deliver(
    to_device: dict[str, dict[str, Any]], sender: str, machines: list[CryptoMachine]
) -> list[Any]:
    """Hand each machine its to-device messages; return what they decrypted."""
    out = []
    for machine in machines:
        content = to_device.get(machine.user_id, {}).get(machine.device_id)
        if content is not None:
            event = {"type": "m.room.encrypted", "sender": sender, "content": content}
            out.append(machine.receive_to_device(event))
    return out


ROOM = "!room:example.org"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def world(clock: Clock) -> tuple[KeyServer, CryptoMachine, CryptoMachine]:
    server = KeyServer()
    alice = CryptoMachine("@alice:example.org", "ALICE1", clock=clock)
    bob = CryptoMachine("@bob:example.org", "BOB1", clock=clock)
    for m in (alice, bob):
        assert server.upload(m) is not None
        m.track_users(["@alice:example.org", "@bob:example.org"])
        m.set_room_encryption(ROOM, {"algorithm": MEGOLM})
    for m in (alice, bob):
        server.query(m)
    return server, alice, bob


def send(
    server: KeyServer,
    sender: CryptoMachine,
    members: list[str],
    receivers: list[CryptoMachine],
    body: str,
    event_id: str,
) -> dict[str, Any]:
    server.claim(sender, members)
    deliver(sender.share_room_key(ROOM, members), sender.user_id, receivers)
    content = sender.encrypt_room_event(ROOM, "m.room.message", {"msgtype": "m.text", "body": body})
    return {
        "type": "m.room.encrypted",
        "sender": sender.user_id,
        "event_id": event_id,
        "room_id": ROOM,
        "content": content,
    }


MEMBERS = ["@alice:example.org", "@bob:example.org"]


def test_first_upload_has_signed_device_otk_and_fallback_keys(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine],
) -> None:
    server, alice, _ = world
    keys = server.device_keys["@alice:example.org"]["ALICE1"]
    assert keys["algorithms"] == [OLM, MEGOLM]
    assert keys["keys"]["ed25519:ALICE1"] == alice.ed25519
    otks = server.otks[("@alice:example.org", "ALICE1")]
    assert len(otks) == alice.otk_target()
    assert all(k.startswith("signed_curve25519:") for k in otks)
    assert all("ed25519:ALICE1" in v["signatures"]["@alice:example.org"] for v in otks.values())
    (fallback,) = server.fallbacks[("@alice:example.org", "ALICE1")].values()
    assert fallback["fallback"] is True
    assert alice.keys_to_upload() is None and not alice.needs_upload()


def test_megolm_message_decrypts_and_olm_works_both_ways(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine],
) -> None:
    server, alice, bob = world
    event = send(server, alice, MEMBERS, [bob], "hello bob", "$1")
    assert event["content"]["algorithm"] == MEGOLM
    assert "hello bob" not in str(event["content"])
    got = bob.decrypt_room_event(ROOM, event)
    assert (got.type, got.content["body"], got.sender, got.sender_device) == (
        "m.room.message",
        "hello bob",
        "@alice:example.org",
        "ALICE1",
    )
    assert got.verified is False
    # Alice decrypts her own message too.
    assert alice.decrypt_room_event(ROOM, event).content["body"] == "hello bob"
    # Bob answers over the Olm session Alice started (no claim needed any more).
    assert bob.missing_olm_sessions(MEMBERS) == {}
    reply = send(server, bob, MEMBERS, [alice], "hi alice", "$2")
    assert alice.decrypt_room_event(ROOM, reply).content["body"] == "hi alice"


def test_verified_flag_follows_the_users_choice(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine],
) -> None:
    server, alice, bob = world
    bob.set_verified("@alice:example.org", "ALICE1")
    event = send(server, alice, MEMBERS, [bob], "x", "$1")
    assert bob.decrypt_room_event(ROOM, event).verified is True


def test_replay_with_another_event_id_is_refused(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine],
) -> None:
    server, alice, bob = world
    event = send(server, alice, MEMBERS, [bob], "once", "$1")
    bob.decrypt_room_event(ROOM, event)
    bob.decrypt_room_event(ROOM, event)  # the same event again is fine
    with pytest.raises(DecryptionError) as e:
        bob.decrypt_room_event(ROOM, {**event, "event_id": "$other"})
    assert e.value.code == "replay"


def test_event_moved_to_another_room_or_sender_is_refused(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine],
) -> None:
    server, alice, bob = world
    event = send(server, alice, MEMBERS, [bob], "x", "$1")
    with pytest.raises(DecryptionError) as e:
        bob.decrypt_room_event("!other:example.org", event)
    assert e.value.code == "unknown_session"
    with pytest.raises(DecryptionError) as e:
        bob.decrypt_room_event(ROOM, {**event, "sender": "@mallory:example.org"})
    assert e.value.code == "wrong_sender"


def test_unknown_session_until_the_key_arrives(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine],
) -> None:
    server, alice, bob = world
    server.claim(alice, MEMBERS)
    to_device = alice.share_room_key(ROOM, MEMBERS)
    content = alice.encrypt_room_event(ROOM, "m.room.message", {"body": "late"})
    event = {
        "type": "m.room.encrypted",
        "sender": alice.user_id,
        "event_id": "$1",
        "content": content,
    }
    with pytest.raises(DecryptionError) as e:
        bob.decrypt_room_event(ROOM, event)
    assert e.value.code == "unknown_session"
    deliver(to_device, alice.user_id, [bob])
    assert bob.decrypt_room_event(ROOM, event).content["body"] == "late"


def test_rotation_after_n_messages(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine],
) -> None:
    server, alice, bob = world
    alice.rooms.clear()
    alice.set_room_encryption(ROOM, {"algorithm": MEGOLM, "rotation_period_msgs": 3})
    sessions = []
    for i in range(7):
        event = send(server, alice, MEMBERS, [bob], f"m{i}", f"${i}")
        sessions.append(event["content"]["session_id"])
        assert bob.decrypt_room_event(ROOM, event).content["body"] == f"m{i}"
    assert len(set(sessions[:3])) == 1
    assert sessions[3] != sessions[2]
    assert len(set(sessions[3:6])) == 1
    assert sessions[6] != sessions[5]


def test_rotation_after_period(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine], clock: Clock
) -> None:
    server, alice, bob = world
    alice.rooms.clear()
    alice.set_room_encryption(ROOM, {"algorithm": MEGOLM, "rotation_period_ms": 60_000})
    first = send(server, alice, MEMBERS, [bob], "a", "$1")["content"]["session_id"]
    clock.now += 59_999
    assert send(server, alice, MEMBERS, [bob], "b", "$2")["content"]["session_id"] == first
    clock.now += 1
    assert send(server, alice, MEMBERS, [bob], "c", "$3")["content"]["session_id"] != first


def test_settings_cannot_be_weakened_by_a_later_event(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine],
) -> None:
    _, alice, _ = world
    alice.set_room_encryption(ROOM, {"algorithm": MEGOLM, "rotation_period_msgs": 5})
    alice.set_room_encryption(ROOM, {"algorithm": MEGOLM, "rotation_period_msgs": 1000})
    assert alice.rooms[ROOM].rotation_period_msgs == 5


def test_rotation_when_a_member_leaves_and_leaver_cannot_read_on(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine], clock: Clock
) -> None:
    server, alice, bob = world
    carol = CryptoMachine("@carol:example.org", "CAROL1", clock=clock)
    server.upload(carol)
    carol.set_room_encryption(ROOM, {"algorithm": MEGOLM})
    three = [*MEMBERS, "@carol:example.org"]
    alice.track_users(three)
    server.query(alice)
    first = send(server, alice, three, [bob, carol], "all", "$1")
    assert carol.decrypt_room_event(ROOM, first).content["body"] == "all"
    alice.member_left(ROOM, "@carol:example.org")
    second = send(server, alice, MEMBERS, [bob, carol], "not carol", "$2")
    assert second["content"]["session_id"] != first["content"]["session_id"]
    assert bob.decrypt_room_event(ROOM, second).content["body"] == "not carol"
    with pytest.raises(DecryptionError):
        carol.decrypt_room_event(ROOM, second)


def test_rotation_when_a_device_disappears_from_the_device_list(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine], clock: Clock
) -> None:
    server, alice, bob = world
    bob2 = CryptoMachine("@bob:example.org", "BOB2", clock=clock)
    server.upload(bob2)
    bob2.set_room_encryption(ROOM, {"algorithm": MEGOLM})
    alice.receive_device_list_changes(["@bob:example.org"], [])
    server.query(alice)
    first = send(server, alice, MEMBERS, [bob, bob2], "both", "$1")
    assert bob2.decrypt_room_event(ROOM, first).content["body"] == "both"
    del server.device_keys["@bob:example.org"]["BOB2"]
    alice.receive_device_list_changes(["@bob:example.org"], [])
    assert alice.users_to_query() == ["@bob:example.org"]
    server.query(alice)
    second = send(server, alice, MEMBERS, [bob, bob2], "only bob1", "$2")
    assert second["content"]["session_id"] != first["content"]["session_id"]
    with pytest.raises(DecryptionError):
        bob2.decrypt_room_event(ROOM, second)


def test_new_device_of_a_member_gets_the_current_key_without_rotation(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine], clock: Clock
) -> None:
    server, alice, bob = world
    first = send(server, alice, MEMBERS, [bob], "one", "$1")
    bob2 = CryptoMachine("@bob:example.org", "BOB2", clock=clock)
    server.upload(bob2)
    alice.receive_device_list_changes(["@bob:example.org"], [])
    server.query(alice)
    second = send(server, alice, MEMBERS, [bob, bob2], "two", "$2")
    assert second["content"]["session_id"] == first["content"]["session_id"]
    assert bob2.decrypt_room_event(ROOM, second).content["body"] == "two"


def test_device_keys_with_bad_signature_or_changed_identity_are_refused(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine], clock: Clock
) -> None:
    server, alice, bob = world
    carol = CryptoMachine("@carol:example.org", "CAROL1", clock=clock)
    server.upload(carol)
    keys = server.device_keys["@carol:example.org"]["CAROL1"]
    keys["keys"]["curve25519:CAROL1"] = bob.curve25519  # tampered after signing
    alice.track_users(["@carol:example.org"])
    server.query(alice)
    assert alice.devices["@carol:example.org"] == {}
    # Bob's device ID answered with another device's keys (a server swapping identities).
    impostor = CryptoMachine("@bob:example.org", "BOB1", clock=clock)
    server.device_keys["@bob:example.org"]["BOB1"] = impostor.device_keys()
    alice.receive_device_list_changes(["@bob:example.org"], [])
    server.query(alice)
    assert "BOB1" not in alice.devices["@bob:example.org"]
    # Keys naming another user or device are refused too.
    server.device_keys["@bob:example.org"]["BOB9"] = bob.device_keys()
    alice.receive_device_list_changes(["@bob:example.org"], [])
    server.query(alice)
    assert "BOB9" not in alice.devices["@bob:example.org"]


def test_claimed_key_without_the_devices_signature_starts_no_session(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine],
) -> None:
    server, alice, _ = world
    pool = server.otks[("@bob:example.org", "BOB1")]
    for key_obj in pool.values():
        key_obj["signatures"]["@bob:example.org"]["ed25519:BOB1"] = "A" * 86
    server.fallbacks.clear()
    server.claim(alice, MEMBERS)
    assert alice.olm_sessions == {}
    assert alice.share_room_key(ROOM, MEMBERS) == {}
    assert [d.device_id for d in alice.withheld_devices(ROOM, MEMBERS)] == ["BOB1"]
    # The failed device is not claimed again at once.
    assert alice.missing_olm_sessions(MEMBERS) == {}


def test_olm_payload_checks(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine],
) -> None:
    server, alice, bob = world
    server.claim(alice, MEMBERS)
    device = alice.devices["@bob:example.org"]["BOB1"]
    content = alice.encrypt_olm(device, "m.dummy", {})
    forged = {"type": "m.room.encrypted", "sender": "@mallory:example.org", "content": content}
    with pytest.raises(DecryptionError) as e:
        bob.receive_to_device(forged)
    assert e.value.code == "bad_payload"
    with pytest.raises(DecryptionError) as e:
        bob.receive_to_device(
            {"type": "m.room.encrypted", "sender": alice.user_id, "content": {"algorithm": OLM}}
        )
    assert e.value.code == "bad_event"
    garbage = copy.deepcopy(content)
    garbage["ciphertext"][bob.curve25519]["body"] = "!!!"
    with pytest.raises(DecryptionError):
        bob.receive_to_device(
            {"type": "m.room.encrypted", "sender": alice.user_id, "content": garbage}
        )


def test_one_time_keys_are_replenished_and_fallback_replaced(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine],
) -> None:
    server, alice, bob = world
    server.claim(alice, MEMBERS)
    deliver(alice.share_room_key(ROOM, MEMBERS), alice.user_id, [bob])
    left = len(server.otks[("@bob:example.org", "BOB1")])
    assert left == bob.otk_target() - 1
    bob.receive_sync_counts({"signed_curve25519": left}, ["signed_curve25519"])
    assert bob.needs_upload()
    body = server.upload(bob)
    assert body is not None and len(body["one_time_keys"]) == 1
    assert "fallback_keys" not in body and "device_keys" not in body
    old_fallback = server.fallbacks[("@bob:example.org", "BOB1")]
    bob.receive_sync_counts({"signed_curve25519": bob.otk_target()}, [])
    body = server.upload(bob)
    assert body is not None and set(body) == {"fallback_keys"}
    assert server.fallbacks[("@bob:example.org", "BOB1")] != old_fallback


def test_olm_session_from_the_fallback_key(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine],
) -> None:
    server, alice, bob = world
    server.otks[("@bob:example.org", "BOB1")].clear()
    event = send(server, alice, MEMBERS, [bob], "via fallback", "$1")
    assert bob.decrypt_room_event(ROOM, event).content["body"] == "via fallback"


def test_left_users_are_no_longer_tracked(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine],
) -> None:
    _, alice, _ = world
    alice.receive_device_list_changes([], ["@bob:example.org"])
    assert "@bob:example.org" not in alice.tracked
    assert "@bob:example.org" not in alice.devices
    alice.receive_device_list_changes(["@bob:example.org"], [])
    assert alice.users_to_query() == []


def test_meta_round_trips(world: tuple[KeyServer, CryptoMachine, CryptoMachine]) -> None:
    _, alice, _ = world
    again = CryptoMachine(alice.user_id, alice.device_id, alice.account)
    again.load_meta(alice.meta())
    assert again.meta() == alice.meta()


def test_keys_are_forwarded_only_to_our_own_verified_devices(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine], clock: Clock
) -> None:
    server, alice, bob = world
    event = send(server, alice, MEMBERS, [bob], "before the new device", "$1")
    alice2 = CryptoMachine("@alice:example.org", "ALICE2", clock=clock)
    server.upload(alice2)
    alice2.track_users(MEMBERS)
    server.query(alice2)
    alice.receive_device_list_changes(["@alice:example.org"], [])
    server.query(alice)
    session_id = event["content"]["session_id"]
    request = alice2.key_request(ROOM, session_id, "req1")
    # Not verified yet: nothing is forwarded. Another user asking gets nothing either.
    assert alice.answer_key_request("@alice:example.org", request) is None
    alice.set_verified("@alice:example.org", "ALICE2")
    assert alice.answer_key_request("@bob:example.org", request) is None
    assert (
        alice.answer_key_request(
            "@alice:example.org", {**request, "requesting_device_id": "ALICE1"}
        )
        is None
    )
    unknown = alice2.key_request(ROOM, "no-such-session", "req2")
    assert alice.answer_key_request("@alice:example.org", unknown) is None
    answer = alice.answer_key_request("@alice:example.org", request)
    assert answer is not None
    device, forwarded = answer
    assert device.device_id == "ALICE2" and forwarded["session_id"] == session_id
    server.claim(alice, ["@alice:example.org"])
    encrypted = alice.encrypt_olm(device, "m.forwarded_room_key", forwarded)
    to_device = {"type": "m.room.encrypted", "sender": alice.user_id, "content": encrypted}
    # ALICE2 has not verified ALICE1: the forwarded key is ignored.
    alice2.receive_to_device(to_device)
    with pytest.raises(DecryptionError):
        alice2.decrypt_room_event(ROOM, event)
    alice2.set_verified("@alice:example.org", "ALICE1")
    content = alice.encrypt_olm(device, "m.forwarded_room_key", forwarded)
    alice2.receive_to_device({**to_device, "content": content})
    got = alice2.decrypt_room_event(ROOM, event)
    assert got.content["body"] == "before the new device" and got.verified is False
    # Another user is never answered, whatever they ask.
    assert bob.answer_key_request("@alice:example.org", request) is None


def test_withheld_keys_are_reported(world: tuple[KeyServer, CryptoMachine, CryptoMachine]) -> None:
    _, alice, bob = world
    notice = alice.withheld_notice(ROOM, "SESSION", "m.unverified", "not verified")
    bob.receive_withheld(alice.user_id, notice)
    event = {
        "type": "m.room.encrypted",
        "sender": alice.user_id,
        "event_id": "$w",
        "content": {"algorithm": MEGOLM, "session_id": "SESSION", "ciphertext": "AAAA"},
    }
    with pytest.raises(DecryptionError) as e:
        bob.decrypt_room_event(ROOM, event)
    assert e.value.code == "withheld" and "m.unverified" in str(e.value)
    no_olm = alice.withheld_notice(ROOM, "OTHER", "m.no_olm", "no channel")
    assert "room_id" not in no_olm and "session_id" not in no_olm
    bob.receive_withheld(alice.user_id, no_olm)
    with pytest.raises(DecryptionError) as e:
        bob.decrypt_room_event(ROOM, {**event, "content": {**event["content"], "session_id": "X"}})
    assert e.value.code == "withheld" and "m.no_olm" in str(e.value)


def test_a_sync_without_counts_uploads_nothing_more(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine],
) -> None:
    server, alice, _ = world
    before = len(server.otks[("@alice:example.org", "ALICE1")])
    for _ in range(50):
        alice.receive_sync_counts(None, None)
        assert not alice.needs_upload()
        assert server.upload(alice) is None
    assert len(server.otks[("@alice:example.org", "ALICE1")]) == before


def test_share_fast_path_holds_only_while_nothing_changed(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine], clock: Clock
) -> None:
    """Sending skips the per-device checks only while no device, Olm session, member or
    rotation rule could change who needs the key; every such change sends it the long way."""
    server, alice, bob = world
    assert not alice.share_up_to_date(ROOM, MEMBERS)  # no session yet
    send(server, alice, MEMBERS, [bob], "one", "$1")
    alice.note_shared(ROOM, MEMBERS)
    assert alice.share_up_to_date(ROOM, MEMBERS)
    assert not alice.share_up_to_date(ROOM, [*MEMBERS, "@carol:example.org"])  # members
    # A device-list change, a new device, a verification, time: each ends the fast path.
    alice.receive_device_list_changes(["@bob:example.org"], [])
    assert not alice.share_up_to_date(ROOM, MEMBERS)
    bob2 = CryptoMachine("@bob:example.org", "BOB2", clock=clock)
    server.upload(bob2)
    server.query(alice)
    assert not alice.share_up_to_date(ROOM, MEMBERS)
    second = send(server, alice, MEMBERS, [bob, bob2], "two", "$2")  # the long way: bob2 gets it
    assert bob2.decrypt_room_event(ROOM, second).content["body"] == "two"
    alice.note_shared(ROOM, MEMBERS)
    assert alice.share_up_to_date(ROOM, MEMBERS)
    alice.set_verified("@bob:example.org", "BOB2")
    assert not alice.share_up_to_date(ROOM, MEMBERS)
    alice.note_shared(ROOM, MEMBERS)
    clock.now += 61_000
    assert not alice.share_up_to_date(ROOM, MEMBERS)
    alice.note_shared(ROOM, MEMBERS)
    # A rotation due by count is never skipped.
    alice.set_room_encryption(ROOM, {"algorithm": MEGOLM, "rotation_period_msgs": 3})
    assert alice.outbound[ROOM].messages == 2
    alice.encrypt_room_event(ROOM, "m.room.message", {"body": "three"})
    assert not alice.share_up_to_date(ROOM, MEMBERS)
    # A member leaving drops the session.
    alice.note_shared(ROOM, MEMBERS)
    alice.member_left(ROOM, "@bob:example.org")
    assert not alice.share_up_to_date(ROOM, MEMBERS)


def test_cross_signing_trust_from_keys_query(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine],
) -> None:
    """A device is trusted through cross-signing only along valid signatures from a trusted
    master key; a self-signing key the master did not sign counts for nothing; a master key
    signed by our user-signing key is verified; a new master key is a changed identity."""
    from starling_client.cross_signing import SigningKey, key_object

    server, alice, _ = world
    bob_id, alice_id = "@bob:example.org", "@alice:example.org"

    def identity(user: str) -> dict[str, SigningKey]:
        return {u: SigningKey.generate() for u in ("master", "self_signing", "user_signing")}

    def section(user: str, keys: dict[str, SigningKey], *, sign_ssk: bool = True) -> dict[str, Any]:
        master = keys["master"]
        ssk = key_object(user, "self_signing", keys["self_signing"].public)
        usk = key_object(user, "user_signing", keys["user_signing"].public)
        return {
            "master_keys": {user: key_object(user, "master", master.public)},
            "self_signing_keys": {user: master.sign(ssk, user) if sign_ssk else ssk},
            "user_signing_keys": {user: master.sign(usk, user)},
        }

    def query(user: str, extra: dict[str, Any], device_sig: SigningKey | None) -> None:
        devices = copy.deepcopy(server.device_keys[user])
        if device_sig is not None:
            devices = {d: device_sig.sign(k, user) for d, k in devices.items()}
        alice.outdated.add(user)
        alice.receive_keys_query([user], {"device_keys": {user: devices}, **extra})

    mine, bobs = identity(alice_id), identity(bob_id)
    alice.own_master = mine["master"].public
    query(alice_id, section(alice_id, mine), mine["self_signing"])
    assert alice.user_trust(alice_id) == "verified"

    # Bob's devices signed by a self-signing key his master did not sign: not cross-signed.
    query(bob_id, section(bob_id, bobs, sign_ssk=False), bobs["self_signing"])
    device = alice.devices[bob_id]["BOB1"]
    assert not device.cross_signed and not alice.device_trusted(device)
    # Properly signed: cross-signed, but Bob is not verified yet, so not trusted.
    query(bob_id, section(bob_id, bobs), bobs["self_signing"])
    device = alice.devices[bob_id]["BOB1"]
    assert device.cross_signed and alice.user_trust(bob_id) == "unverified"
    assert not alice.device_trusted(device)
    # The server shows our user-signing key's signature on Bob's master: verified.
    signed = section(bob_id, bobs)
    signed["master_keys"][bob_id] = mine["user_signing"].sign(
        signed["master_keys"][bob_id], alice_id
    )
    query(bob_id, signed, bobs["self_signing"])
    assert alice.user_trust(bob_id) == "verified"
    assert alice.device_trusted(alice.devices[bob_id]["BOB1"])
    # A signature by some other key claiming to be ours does not count.
    other = identity(alice_id)
    forged = section(bob_id, bobs)
    forged["master_keys"][bob_id] = other["user_signing"].sign(
        forged["master_keys"][bob_id], alice_id
    )
    alice.verified_masters.clear()
    query(bob_id, forged, bobs["self_signing"])
    assert alice.user_trust(bob_id) == "unverified"
    assert alice.verify_master(bob_id, bobs["master"].public)
    # Bob's identity is replaced: changed, and his devices signed by it are not trusted.
    new = identity(bob_id)
    query(bob_id, section(bob_id, new), new["self_signing"])
    assert alice.user_trust(bob_id) == "changed"
    assert not alice.device_trusted(alice.devices[bob_id]["BOB1"])
    assert not alice.verify_master(bob_id, bobs["master"].public)  # not his current key
    assert alice.verify_master(bob_id, new["master"].public)  # verified again: accepted
    assert alice.user_trust(bob_id) == "verified"
    # The state survives the store's metadata round trip.
    again = CryptoMachine(alice_id, "ALICE1", alice.account)
    again.load_meta(json.loads(json.dumps(alice.meta())))
    assert again.user_trust(bob_id) == "verified" and again.user_trust(alice_id) == "verified"


def test_a_server_that_failed_to_answer_leaves_its_users_outdated(
    world: tuple[KeyServer, CryptoMachine, CryptoMachine],
) -> None:
    # /keys/query's `failures` is keyed by server name: those users were not answered.
    _, alice, _ = world
    alice.track_users(["@carol:elsewhere.example"])
    alice.outdated.update({"@carol:elsewhere.example", "@bob:example.org"})
    alice.receive_keys_query(
        ["@carol:elsewhere.example", "@bob:example.org"],
        {"device_keys": {"@bob:example.org": {}}, "failures": {"elsewhere.example": {}}},
    )
    assert alice.outdated == {"@carol:elsewhere.example"}

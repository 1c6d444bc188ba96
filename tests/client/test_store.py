"""The client's local store: crypto state survives a reopen (and still decrypts), secrets
are sealed with the passphrase-derived key, and a wrong passphrase is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from starling_client.crypto import MEGOLM, CryptoMachine
from starling_client.store import Session, Store, StoreError
from tests.client.test_crypto import ROOM, Clock, KeyServer, send

MEMBERS = ["@alice:example.org", "@bob:example.org"]


def test_crypto_state_survives_reopening(tmp_path: Path) -> None:
    clock = Clock()
    server = KeyServer()
    store = Store(tmp_path / "bob.db", "pw")
    bob = store.load_machine("@bob:example.org", "BOB1")
    bob.clock = clock
    alice = CryptoMachine("@alice:example.org", "ALICE1", clock=clock)
    for m in (alice, bob):
        server.upload(m)
        m.track_users(MEMBERS)
        m.set_room_encryption(ROOM, {"algorithm": MEGOLM})
    for m in (alice, bob):
        server.query(m)
    first = send(server, alice, MEMBERS, [bob], "before", "$1")
    assert bob.decrypt_room_event(ROOM, first).content["body"] == "before"
    # Bob sends too, so he has an outbound session to keep.
    reply = send(server, bob, MEMBERS, [alice], "reply", "$2")
    store.save_machine(bob)
    store.clean_shutdown()
    store.close()

    store = Store(tmp_path / "bob.db", "pw")
    again = store.load_machine("@bob:example.org", "BOB1")
    again.clock = clock
    assert again.ed25519 == bob.ed25519 and again.curve25519 == bob.curve25519
    assert again.meta() == bob.meta()
    assert set(again.inbound) == set(bob.inbound)
    assert again.outbound[ROOM].session_id == bob.outbound[ROOM].session_id
    assert again.outbound[ROOM].shared_with == bob.outbound[ROOM].shared_with
    # The reopened machine decrypts Alice's next message over the restored Olm session and
    # Megolm sessions, and refuses the replay of the old one under another ID.
    second = send(server, alice, MEMBERS, [again], "after", "$3")
    assert again.decrypt_room_event(ROOM, second).content["body"] == "after"
    assert again.decrypt_room_event(ROOM, first).content["body"] == "before"
    with pytest.raises(Exception, match="replay"):
        again.decrypt_room_event(ROOM, {**first, "event_id": "$forged"})
    # Its outbound session continues (no rotation needed) and Alice still decrypts.
    more = send(server, again, MEMBERS, [alice], "more", "$4")
    assert more["content"]["session_id"] == reply["content"]["session_id"]
    assert alice.decrypt_room_event(ROOM, more).content["body"] == "more"
    store.save_machine(again)
    store.close()  # no clean shutdown: as if the program had crashed after sending

    # After a crash the outbound session is not trusted to be current (sends are not
    # fsynced one by one): it is dropped, and the next message uses a new, shared session.
    store = Store(tmp_path / "bob.db", "pw")
    crashed = store.load_machine("@bob:example.org", "BOB1")
    crashed.clock = clock
    assert ROOM not in crashed.outbound and set(crashed.inbound) == set(again.inbound)
    fresh = send(server, crashed, MEMBERS, [alice], "after the crash", "$5")
    assert fresh["content"]["session_id"] != more["content"]["session_id"]
    assert alice.decrypt_room_event(ROOM, fresh).content["body"] == "after the crash"
    store.save_machine(crashed)
    store.clean_shutdown()
    store.close()


def test_secrets_are_sealed_and_the_passphrase_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = Store(path, "right")
    store.save_session(Session("http://hs", "@a:hs", "DEV", "syt_secret_token_value"))
    machine = store.load_machine("@a:hs", "DEV")
    store.add_message("!r:hs", "$e", {"body": "a very private message"}, seen=False)
    store.save_machine(machine)
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"syt_secret_token_value" not in raw
    assert b"a very private message" not in raw
    with pytest.raises(StoreError):
        Store(path, "wrong")
    store = Store(path, "right")
    session = store.session()
    assert session is not None and session.access_token == "syt_secret_token_value"
    assert store.messages("!r:hs") == [{"body": "a very private message"}]
    assert store.messages("!r:hs", unseen_only=True) != []
    store.mark_seen("!r:hs", ["$e"])
    assert store.messages("!r:hs", unseen_only=True) == []
    store.close()

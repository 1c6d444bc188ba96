"""The client's local store: one SQLite file per account and device.

It holds the session (homeserver, user, device, access token), the sync token, rooms, the
decrypted timeline, and the crypto state: the Olm account and the Olm and Megolm sessions
are vodozemac pickles; the access token, the crypto machine's metadata (device lists, room
settings) and every stored message are sealed with AES-256-GCM. Both use a 32-byte key
derived from the user's passphrase with scrypt (the salt is in the file). Without the
passphrase the file gives away room IDs and session IDs, never a key or a message.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import vodozemac
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from starling_client.crypto import (
    CryptoMachine,
    InboundGroupSession,
    OlmSession,
    OutboundGroupSession,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS olm_sessions (
    sender_key TEXT NOT NULL, session_id TEXT NOT NULL, pickle TEXT NOT NULL,
    last_used_ms INTEGER NOT NULL, PRIMARY KEY (sender_key, session_id));
CREATE TABLE IF NOT EXISTS inbound_sessions (
    room_id TEXT NOT NULL, session_id TEXT NOT NULL, pickle TEXT NOT NULL, meta TEXT NOT NULL,
    PRIMARY KEY (room_id, session_id));
CREATE TABLE IF NOT EXISTS outbound_sessions (
    room_id TEXT PRIMARY KEY, pickle TEXT NOT NULL, meta TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rooms (room_id TEXT PRIMARY KEY, sealed TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS backed_up (
    room_id TEXT NOT NULL, session_id TEXT NOT NULL, version TEXT NOT NULL,
    PRIMARY KEY (room_id, session_id, version));
CREATE TABLE IF NOT EXISTS pending (
    room_id TEXT NOT NULL, event_id TEXT NOT NULL, sealed TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id));
CREATE TABLE IF NOT EXISTS messages (
    pos INTEGER PRIMARY KEY AUTOINCREMENT, room_id TEXT NOT NULL, event_id TEXT NOT NULL,
    sealed TEXT NOT NULL, seen INTEGER NOT NULL DEFAULT 0, UNIQUE (room_id, event_id));
"""

SCRYPT_N = 2**15
# kv flag: outbound Megolm sessions were used since the last clean shutdown.
OUTBOUND_IN_USE = "outbound_in_use"


class StoreError(Exception):
    """The store cannot be opened (wrong passphrase, no session, damaged file)."""


@dataclass
class Session:
    homeserver: str
    user_id: str
    device_id: str
    access_token: str


def derive_key(passphrase: str, salt: bytes) -> bytes:
    return hashlib.scrypt(
        passphrase.encode("utf-8"),
        salt=salt,
        n=SCRYPT_N,
        r=8,
        p=1,
        maxmem=64 * 1024 * 1024,
        dklen=32,
    )


class Store:
    """A SQLite file opened with a passphrase. Calls are synchronous and short (local disk)."""

    def __init__(self, path: Path, passphrase: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # Commits are atomic and survive a crash of the program without an fsync each (WAL,
        # synchronous=NORMAL); an OS crash or power cut may lose the last ones. What must
        # not be lost that way is committed durably (`_tx(durable=True)`): keys, Olm
        # sessions, device trust — and a mark before an outbound Megolm session is used, so
        # a session whose ratchet may have rolled back is never used again (load_machine).
        # One fsync per message sent made sending several times slower.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._outbound_marked = False
        self.db.executescript(SCHEMA)
        os.chmod(path, 0o600)
        salt_hex = self._get("salt")
        if salt_hex is None:
            salt = os.urandom(16)
            self._put("salt", salt.hex())
        else:
            salt = bytes.fromhex(salt_hex)
        self.key = derive_key(passphrase, salt)
        self._aead = AESGCM(self.key)
        check = self._get("check")
        if check is None:
            self._put("check", self.seal("starling-client"))
        elif self.unseal(check) != "starling-client":
            raise StoreError("the store's check value is damaged")

    def close(self) -> None:
        self.db.close()

    # ---- sealing ----------------------------------------------------------------------

    def seal(self, text: str) -> str:
        nonce = os.urandom(12)
        return (nonce + self._aead.encrypt(nonce, text.encode("utf-8"), None)).hex()

    def unseal(self, sealed: str) -> str:
        raw = bytes.fromhex(sealed)
        try:
            return self._aead.decrypt(raw[:12], raw[12:], None).decode("utf-8")
        except InvalidTag:
            raise StoreError("wrong passphrase for this store") from None

    # ---- key-value --------------------------------------------------------------------

    def _get(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _put(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def save_session(self, session: Session) -> None:
        with self._tx(durable=True):
            self._put("homeserver", session.homeserver)
            self._put("user_id", session.user_id)
            self._put("device_id", session.device_id)
            self._put("access_token", self.seal(session.access_token))

    def session(self) -> Session | None:
        values = [self._get(k) for k in ("homeserver", "user_id", "device_id", "access_token")]
        if any(v is None for v in values):
            return None
        homeserver, user_id, device_id, token = (str(v) for v in values)
        return Session(homeserver, user_id, device_id, self.unseal(token))

    def put_secret(self, name: str, value: str | None) -> None:
        """A sealed value (the backup key...); None deletes it."""
        with self._tx(durable=True):
            if value is None:
                self.db.execute("DELETE FROM kv WHERE key = ?", (f"secret:{name}",))
            else:
                self._put(f"secret:{name}", self.seal(value))

    def get_secret(self, name: str) -> str | None:
        sealed = self._get(f"secret:{name}")
        return None if sealed is None else self.unseal(sealed)

    def backed_up(self, version: str) -> set[tuple[str, str]]:
        rows = self.db.execute(
            "SELECT room_id, session_id FROM backed_up WHERE version = ?", (version,)
        )
        return {(r, s) for r, s in rows}

    def mark_backed_up(self, version: str, keys: list[tuple[str, str]]) -> None:
        with self._tx():
            self.db.executemany(
                "INSERT OR IGNORE INTO backed_up VALUES (?, ?, ?)",
                [(r, s, version) for r, s in keys],
            )

    @property
    def next_batch(self) -> str | None:
        return self._get("next_batch")

    def set_next_batch(self, token: str) -> None:
        self._put("next_batch", token)

    # ---- crypto -----------------------------------------------------------------------

    def load_machine(self, user_id: str, device_id: str) -> CryptoMachine:
        pickle = self._get("account")
        if pickle is None:
            machine = CryptoMachine(user_id, device_id)
            self.save_machine(machine)
            return machine
        try:
            account = vodozemac.Account.from_pickle(pickle, self.key)
        except vodozemac.PickleException as e:
            raise StoreError(f"cannot read the Olm account: {e}") from e
        machine = CryptoMachine(user_id, device_id, account)
        meta = self._get("crypto_meta")
        if meta is not None:
            machine.load_meta(json.loads(self.unseal(meta)))
        for sender_key, pickled, last_used in self.db.execute(
            "SELECT sender_key, pickle, last_used_ms FROM olm_sessions ORDER BY last_used_ms DESC"
        ):
            session = vodozemac.Session.from_pickle(pickled, self.key)
            machine.olm_sessions.setdefault(sender_key, []).append(
                OlmSession(session, sender_key, last_used)
            )
        for room_id, pickled, meta_json in self.db.execute(
            "SELECT room_id, pickle, meta FROM inbound_sessions"
        ):
            m = json.loads(meta_json)
            inbound = InboundGroupSession(
                room_id,
                vodozemac.InboundGroupSession.from_pickle(pickled, self.key),
                m["sender"],
                m["sender_key"],
                m["signing_key"],
                {int(k): v for k, v in m.get("seen", {}).items()},
            )
            machine.inbound[(room_id, inbound.session_id)] = inbound
        for room_id, pickled, meta_json in self.db.execute(
            "SELECT room_id, pickle, meta FROM outbound_sessions"
        ):
            m = json.loads(meta_json)
            machine.outbound[room_id] = OutboundGroupSession(
                room_id,
                vodozemac.GroupSession.from_pickle(pickled, self.key),
                m["created_ms"],
                m["messages"],
                {(u, d, c) for u, d, c in m["shared_with"]},
            )
        if self._get(OUTBOUND_IN_USE) == "1":
            # The last process used outbound sessions and did not close cleanly: their saved
            # ratchet may be behind what was sent, and reusing a Megolm index would encrypt
            # two messages with one key. New sessions will be made (and shared) instead.
            for room_id in list(machine.outbound):
                machine.discard_outbound(room_id)
            with self._tx(durable=True):
                self.db.execute("DELETE FROM outbound_sessions")
                self._put(OUTBOUND_IN_USE, "0")
        machine.drain_changes()
        return machine

    def clean_shutdown(self) -> None:
        """Everything was saved: the outbound sessions in the store are current."""
        if self._outbound_marked:
            with self._tx(durable=True):
                self._put(OUTBOUND_IN_USE, "0")
            self._outbound_marked = False

    def save_machine(self, machine: CryptoMachine) -> None:
        """Persist what changed in the machine since the last save, in one transaction."""
        changes = machine.drain_changes()
        if changes.empty():
            return
        # Advancing an outbound session's ratchet (a message sent) and remembering decrypted
        # indices may be lost to an OS crash; anything else is written durably.
        durable = bool(
            changes.account
            or changes.meta
            or changes.olm_sessions
            or any(not e.seen for e in changes.inbound)  # a new room key, not a seen index
        )
        mark = bool(changes.outbound) and not self._outbound_marked
        with self._tx(durable=durable or mark):
            if mark:
                self._put(OUTBOUND_IN_USE, "1")
                self._outbound_marked = True
            if changes.account:
                self._put("account", machine.account.pickle(self.key))
            if changes.meta or changes.account:
                self._put("crypto_meta", self.seal(json.dumps(machine.meta())))
            touched_keys = {s.sender_key for s in changes.olm_sessions}
            for entry in changes.olm_sessions:
                self.db.execute(
                    "INSERT OR REPLACE INTO olm_sessions VALUES (?, ?, ?, ?)",
                    (
                        entry.sender_key,
                        entry.session_id,
                        entry.session.pickle(self.key),
                        entry.last_used_ms,
                    ),
                )
            for sender_key in touched_keys:
                keep = [s.session_id for s in machine.olm_sessions.get(sender_key, [])]
                marks = ",".join("?" * len(keep)) or "''"
                self.db.execute(
                    f"DELETE FROM olm_sessions WHERE sender_key = ? AND session_id NOT IN ({marks})",
                    (sender_key, *keep),
                )
            for inbound in changes.inbound:
                self.db.execute(
                    "INSERT OR REPLACE INTO inbound_sessions VALUES (?, ?, ?, ?)",
                    (
                        inbound.room_id,
                        inbound.session_id,
                        inbound.session.pickle(self.key),
                        json.dumps(inbound.meta()),
                    ),
                )
            for room_id, outbound in changes.outbound.items():
                if outbound is None:
                    self.db.execute("DELETE FROM outbound_sessions WHERE room_id = ?", (room_id,))
                else:
                    self.db.execute(
                        "INSERT OR REPLACE INTO outbound_sessions VALUES (?, ?, ?)",
                        (room_id, outbound.session.pickle(self.key), json.dumps(outbound.meta())),
                    )

    # ---- rooms and messages -----------------------------------------------------------

    def save_room(self, room_id: str, data: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO rooms VALUES (?, ?)", (room_id, self.seal(json.dumps(data)))
        )

    def delete_room(self, room_id: str) -> None:
        self.db.execute("DELETE FROM rooms WHERE room_id = ?", (room_id,))

    def rooms(self) -> dict[str, dict[str, Any]]:
        return {
            room_id: json.loads(self.unseal(sealed))
            for room_id, sealed in self.db.execute("SELECT room_id, sealed FROM rooms")
        }

    def add_message(self, room_id: str, event_id: str, data: dict[str, Any], seen: bool) -> bool:
        """Keep a decrypted message; False when it was already stored."""
        cursor = self.db.execute(
            "INSERT OR IGNORE INTO messages (room_id, event_id, sealed, seen) VALUES (?, ?, ?, ?)",
            (room_id, event_id, self.seal(json.dumps(data)), int(seen)),
        )
        return cursor.rowcount > 0

    def has_message(self, room_id: str, event_id: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM messages WHERE room_id = ? AND event_id = ?", (room_id, event_id)
        ).fetchone()
        return row is not None

    def messages(
        self, room_id: str, *, unseen_only: bool = False, limit: int = 1000
    ) -> list[dict[str, Any]]:
        query = "SELECT sealed FROM messages WHERE room_id = ?"
        if unseen_only:
            query += " AND seen = 0"
        query += " ORDER BY pos DESC LIMIT ?"
        rows = self.db.execute(query, (room_id, limit)).fetchall()
        return [json.loads(self.unseal(r[0])) for r in reversed(rows)]

    def add_pending(self, room_id: str, event_id: str, event: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO pending VALUES (?, ?, ?)",
            (room_id, event_id, self.seal(json.dumps(event))),
        )

    def delete_pending(self, room_id: str, event_id: str) -> None:
        self.db.execute(
            "DELETE FROM pending WHERE room_id = ? AND event_id = ?", (room_id, event_id)
        )

    def pending_events(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {
            (room_id, event_id): json.loads(self.unseal(sealed))
            for room_id, event_id, sealed in self.db.execute("SELECT * FROM pending")
        }

    def mark_seen(self, room_id: str, event_ids: list[str]) -> None:
        with self._tx():
            for event_id in event_ids:
                self.db.execute(
                    "UPDATE messages SET seen = 1 WHERE room_id = ? AND event_id = ?",
                    (room_id, event_id),
                )

    @contextlib.contextmanager
    def _tx(self, *, durable: bool = False) -> Iterator[None]:
        """A transaction; `durable` ones are on disk (fsync) when it returns."""
        if durable:
            self.db.execute("PRAGMA synchronous=FULL")
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        finally:
            if durable:
                self.db.execute("PRAGMA synchronous=NORMAL")

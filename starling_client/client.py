"""The async SDK: log in, sync, follow rooms and their timelines, send — encrypting with
the crypto machine wherever a room has `m.room.encryption`, and creating rooms encrypted
unless asked otherwise.

    client = await Client.login(store_dir, "https://example.org", "@me:example.org", pw, passphrase)
    room_id = await client.create_room(name="plans", invite=["@you:example.org"])
    await client.send_text(room_id, "hello")
    async for message in client.tail(room_id): ...
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starling_client.api import Api, MatrixError
from starling_client.attachments import (
    decrypt_attachment,
    encrypt_attachment,
    image_info,
    ogg_opus_duration_ms,
)
from starling_client.backup import (
    BACKUP_ALGORITHM,
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
    key_from_passphrase,
    passphrase_parameters,
)
from starling_client.cross_signing import (
    MASTER,
    SECRET_NAMES,
    SELF_SIGNING,
    USAGES,
    USER_SIGNING,
    CrossSigningError,
    SigningKey,
    key_object,
)
from starling_client.crypto import MEGOLM, CryptoMachine, DecryptionError, Device
from starling_client.encoding import b64decode, b64encode
from starling_client.store import Session, Store, StoreError
from starling_client.verification import SAS_V1, Outgoing, Sas

log = logging.getLogger("starling_client")

STORE_FILE = "client.db"
ENCRYPTION_STATE = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}
# Events waiting for a room key are retried on later syncs; this many at most per client.
MAX_PENDING = 5000
# Events fetched to fill the gap of a `limited` sync timeline, at most, per room and sync.
MAX_GAP_EVENTS = 1000


@dataclass
class RoomInfo:
    room_id: str
    membership: str = "join"  # join, invite, leave
    name: str | None = None
    encrypted: bool = False
    members: dict[str, str] = field(default_factory=dict)  # user → membership
    members_loaded: bool = False
    unread: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "room_id": self.room_id,
            "membership": self.membership,
            "name": self.name,
            "encrypted": self.encrypted,
            "members": self.members,
            "members_loaded": self.members_loaded,
            "unread": self.unread,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoomInfo:
        return cls(**data)

    def recipients(self) -> list[str]:
        """The users a room key goes to: joined and invited members."""
        return sorted(u for u, m in self.members.items() if m in ("join", "invite"))


@dataclass
class Message:
    """A room message as the user sees it (decrypted when it was encrypted)."""

    room_id: str
    event_id: str
    sender: str
    type: str
    content: dict[str, Any]
    origin_server_ts: int
    encrypted: bool
    sender_device: str | None = None
    verified: bool = False
    error: str | None = None  # why an encrypted event could not be decrypted

    @property
    def msgtype(self) -> str | None:
        value = self.content.get("msgtype")
        return value if isinstance(value, str) else None

    @property
    def body(self) -> str | None:
        value = self.content.get("body")
        return value if isinstance(value, str) else None

    def to_json(self) -> dict[str, Any]:
        return {
            "room_id": self.room_id,
            "event_id": self.event_id,
            "sender": self.sender,
            "type": self.type,
            "content": self.content,
            "origin_server_ts": self.origin_server_ts,
            "encrypted": self.encrypted,
            "sender_device": self.sender_device,
            "verified": self.verified,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Message:
        return cls(**data)


class Client:
    """One logged-in device. Not thread-safe; one sync loop per client."""

    def __init__(self, store: Store, session: Session, *, transport: str = "auto") -> None:
        self.store = store
        self.session = session
        # The WebSocket when the server offers it, else HTTP. Its pushed /sync stream
        # deletes no to-device message (room key) until this client acknowledges the
        # response that carried it (Api.sync from that next_batch), so a dropped socket
        # or a restart gets them again. transport="coap": low-bandwidth CoAP when offered
        # (docs/transports.md), "http": plain HTTP.
        self.api = Api(session.homeserver, session.access_token, transport=transport)
        self.crypto: CryptoMachine = store.load_machine(session.user_id, session.device_id)
        self.rooms: dict[str, RoomInfo] = {
            r: RoomInfo.from_json(d) for r, d in store.rooms().items()
        }
        self._lock = asyncio.Lock()
        # Encrypted events waiting for their room key, kept in the store across restarts.
        self._pending: dict[tuple[str, str], dict[str, Any]] = store.pending_events()
        self.verifications: dict[str, Sas] = {}  # transaction ID → SAS in progress
        self.verification_requests: dict[str, tuple[str, str]] = {}  # txn → (user, device)
        self._readied: set[str] = set()  # incoming verifications the user accepted
        self._no_olm_told: set[tuple[str, str]] = set()  # devices sent m.no_olm
        self._our_requests: dict[str, tuple[str, str]] = {}  # txn → (user, device) asked
        self._requested: set[tuple[str, str]] = set()  # (room, session) keys asked for
        self._noted: dict[str, set[str]] = {}  # verifications whose result was acted on
        self.cross_signing_error: str | None = None  # why login could not set it up
        self._secret_requests: dict[str, str] = {}  # our m.secret.request IDs → secret name
        self._secrets_received: dict[str, str] = {}  # name → secret, not yet taken

    # ---- opening ------------------------------------------------------------------------

    @classmethod
    async def login(
        cls,
        store_dir: Path,
        homeserver: str,
        user: str,
        password: str,
        passphrase: str,
        device_name: str = "starling-chat",
        *,
        cross_signing: bool = True,
        transport: str = "auto",
    ) -> Client:
        """Log in with a password and start a fresh store in `store_dir` for the new device
        (its keys are uploaded and a first sync is made). If the account has no
        cross-signing keys yet, they are created and this device signed with them."""
        path = store_dir / STORE_FILE
        if path.exists():
            existing = Store(path, passphrase)
            try:
                if existing.session() is not None:
                    raise StoreError(f"{store_dir} already holds a session; use another --store")
            finally:
                existing.close()
            path.unlink()
        api = Api(homeserver)
        try:
            answer = await api.login(user, password, device_name)
        finally:
            await api.close()
        session = Session(
            homeserver.rstrip("/"),
            str(answer["user_id"]),
            str(answer["device_id"]),
            str(answer["access_token"]),
        )
        store = Store(path, passphrase)
        store.save_session(session)
        client = cls(store, session, transport=transport)
        await client.upload_keys()
        await client.sync_once(timeout_ms=0)
        if cross_signing:
            # The password is at hand only now: a first device sets up the account's
            # cross-signing identity (a later one gets the keys from secret storage). A
            # server that refuses (another auth flow, no cross-signing) does not undo the
            # login: the device works, its identity just stays unset.
            try:
                await client.bootstrap_cross_signing(password)
            except MatrixError as e:
                log.warning("cross-signing not set up: %s", e)
                client.cross_signing_error = str(e)
        return client

    @classmethod
    def open(cls, store_dir: Path, passphrase: str, *, transport: str = "auto") -> Client:
        path = store_dir / STORE_FILE
        if not path.exists():
            raise StoreError(f"no session in {store_dir}: log in first")
        store = Store(path, passphrase)
        session = store.session()
        if session is None:
            store.close()
            raise StoreError(f"no session in {store_dir}: log in first")
        return cls(store, session, transport=transport)

    async def close(self) -> None:
        await self.api.close()
        self.store.save_machine(self.crypto)
        self.store.clean_shutdown()
        self.store.close()

    @property
    def user_id(self) -> str:
        return self.session.user_id

    @property
    def device_id(self) -> str:
        return self.session.device_id

    # ---- keys ---------------------------------------------------------------------------

    async def upload_keys(self) -> None:
        for _ in range(3):
            body = self.crypto.keys_to_upload()
            if body is None:
                break
            self.store.save_machine(self.crypto)  # the keys exist before the server sees them
            answer = await self.api.keys_upload(body)
            self.crypto.keys_uploaded(answer)
            self.store.save_machine(self.crypto)
            if not self.crypto.needs_upload():
                break

    async def _query_keys(self) -> None:
        users = self.crypto.users_to_query()
        if users:
            answer = await self.api.keys_query(users)
            self.crypto.receive_keys_query(users, answer)
            self.store.save_machine(self.crypto)

    # ---- sync ---------------------------------------------------------------------------

    async def sync_once(self, timeout_ms: int = 30_000) -> list[Message]:
        """One /sync. Room state and device-list changes first, then a key query for the
        users whose devices we must know, then to-device events (room keys), then the
        timelines; returns the new messages."""
        since = self.store.next_batch
        answer = await self.api.sync(since, timeout_ms)
        async with self._lock:
            self._apply_sync_state(answer)
            await self._query_keys()
            verification = self._apply_to_device(answer)
            requests = [e for e in verification if e[1] == "m.room_key_request"]
            secret_requests = [e for e in verification if e[1] == "m.secret.request"]
            await self._on_verification_events(
                [e for e in verification if e not in requests and e not in secret_requests]
            )
            await self._answer_key_requests(requests)
            await self._answer_secret_requests(secret_requests)
            await self._take_shared_secrets()
            gaps = await self._fill_gaps(answer) if since is not None else {}
            messages = self._apply_timelines(answer, initial=since is None, gaps=gaps)
            await self._request_missing_keys()
            self.store.save_machine(self.crypto)
            if isinstance(answer.get("next_batch"), str):
                self.store.set_next_batch(answer["next_batch"])
            if self.crypto.needs_upload():
                await self.upload_keys()
            await self.upload_room_keys()
        return messages

    def _apply_sync_state(self, answer: dict[str, Any]) -> None:
        crypto = self.crypto
        lists = answer.get("device_lists") or {}
        crypto.receive_device_list_changes(
            [u for u in lists.get("changed", []) if isinstance(u, str)],
            [u for u in lists.get("left", []) if isinstance(u, str)],
        )
        unused = answer.get("device_unused_fallback_key_types")
        crypto.receive_sync_counts(
            answer.get("device_one_time_keys_count"),
            [t for t in unused if isinstance(t, str)] if isinstance(unused, list) else None,
        )
        rooms = answer.get("rooms") or {}
        for room_id, room in (rooms.get("join") or {}).items():
            if not isinstance(room, dict):
                continue
            info = self.rooms.setdefault(room_id, RoomInfo(room_id))
            info.membership = "join"
            state = (room.get("state") or {}).get("events", [])
            timeline = (room.get("timeline") or {}).get("events", [])
            for event in [*state, *timeline]:
                if isinstance(event, dict) and "state_key" in event:
                    self._apply_state(info, event)
            if info.encrypted:
                crypto.track_users(info.recipients())
            self.store.save_room(room_id, info.to_json())
        for room_id, room in (rooms.get("invite") or {}).items():
            info = self.rooms.setdefault(room_id, RoomInfo(room_id))
            info.membership = "invite"
            for event in (room.get("invite_state") or {}).get("events", []):
                if isinstance(event, dict):
                    self._apply_state(info, event)
            self.store.save_room(room_id, info.to_json())
        for room_id in rooms.get("leave") or {}:
            left = self.rooms.get(room_id)
            if left is not None:
                left.membership = "leave"
                self.store.save_room(room_id, left.to_json())

    def _apply_to_device(self, answer: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
        """Decrypt to-device events (installing room keys); the verification events among
        them, plain or decrypted, as (sender, type, content)."""
        verification: list[tuple[str, str, dict[str, Any]]] = []
        to_device = (answer.get("to_device") or {}).get("events", [])
        for event in to_device if isinstance(to_device, list) else []:
            if not isinstance(event, dict):
                continue
            sender, kind, content = event.get("sender"), event.get("type"), event.get("content")
            try:
                decrypted = self.crypto.receive_to_device(event)
            except DecryptionError as e:
                log.warning("to-device event from %s not decrypted: %s", sender, e)
                continue
            if decrypted is not None:
                sender, kind, content = decrypted.sender, decrypted.type, decrypted.content
            if not isinstance(sender, str) or not isinstance(kind, str):
                continue
            if not isinstance(content, dict):
                continue
            if kind.startswith("m.key.verification.") or kind in (
                "m.room_key_request",
                "m.secret.request",
            ):
                verification.append((sender, kind, content))
            elif kind == "m.secret.send":
                # Only over Olm, from a trusted device of ours, answering our own request.
                request_id, secret = content.get("request_id"), content.get("secret")
                name = self._secret_requests.get(str(request_id))
                if (
                    decrypted is not None
                    and decrypted.sender == self.user_id
                    and decrypted.verified
                    and name is not None
                    and isinstance(secret, str)
                ):
                    self._secrets_received[name] = secret
                    self._secret_requests = {
                        r: n for r, n in self._secret_requests.items() if n != name
                    }
            elif kind == "m.room_key.withheld":
                self.crypto.receive_withheld(sender, content)
        return verification

    async def _fill_gaps(self, answer: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        """The events a `limited` timeline left out (more arrived since the last sync than
        the server sends at once), paged back with /messages from `prev_batch` until an
        event we already hold, at most MAX_GAP_EVENTS a room; oldest first."""
        gaps: dict[str, list[dict[str, Any]]] = {}
        for room_id, room in ((answer.get("rooms") or {}).get("join") or {}).items():
            timeline = room.get("timeline") if isinstance(room, dict) else None
            if not isinstance(timeline, dict) or timeline.get("limited") is not True:
                continue
            token = timeline.get("prev_batch")
            found: list[dict[str, Any]] = []
            while isinstance(token, str) and len(found) < MAX_GAP_EVENTS:
                page = await self.api.messages(
                    room_id, limit=min(100, MAX_GAP_EVENTS - len(found)), from_token=token
                )
                chunk = [e for e in page.get("chunk") or [] if isinstance(e, dict)]
                known = next(
                    (
                        i
                        for i, e in enumerate(chunk)
                        if self.store.has_message(room_id, str(e.get("event_id", "")))
                    ),
                    None,
                )
                found.extend(chunk if known is None else chunk[:known])
                next_token = page.get("end")
                if known is not None or not chunk or next_token == token:
                    break
                token = next_token
            gaps[room_id] = found[::-1]
        return gaps

    def _apply_timelines(
        self,
        answer: dict[str, Any],
        *,
        initial: bool,
        gaps: dict[str, list[dict[str, Any]]] | None = None,
    ) -> list[Message]:
        # Events that waited for their room key may decrypt now.
        messages = self._retry_pending()
        rooms = answer.get("rooms") or {}
        for room_id, room in (rooms.get("join") or {}).items():
            if not isinstance(room, dict):
                continue
            info = self.rooms[room_id]
            events = (room.get("timeline") or {}).get("events", [])
            if gaps and gaps.get(room_id):
                events = [*gaps[room_id], *(events if isinstance(events, list) else [])]
            for event in events:
                if not isinstance(event, dict) or "state_key" in event:
                    continue
                if event.get("type") not in ("m.room.message", "m.room.encrypted", "m.sticker"):
                    continue
                message = self._decrypt(room_id, event, keep_pending=True)
                if message.type not in ("m.room.message", "m.sticker"):
                    continue  # undecryptable yet, or decrypted to something else
                if self.store.add_message(
                    room_id, message.event_id, message.to_json(), seen=initial
                ):
                    if not initial:
                        if message.sender != self.user_id:
                            info.unread += 1
                        messages.append(message)
            self.store.save_room(room_id, info.to_json())
        return messages

    def _apply_state(self, info: RoomInfo, event: dict[str, Any]) -> None:
        kind, content = event.get("type"), event.get("content")
        state_key = event.get("state_key")
        if not isinstance(content, dict) or not isinstance(state_key, str):
            return
        if kind == "m.room.encryption" and state_key == "":
            if content.get("algorithm") == MEGOLM:
                info.encrypted = True
                self.crypto.set_room_encryption(info.room_id, content)
        elif kind == "m.room.name" and state_key == "":
            name = content.get("name")
            info.name = name if isinstance(name, str) else None
        elif kind == "m.room.member":
            membership = content.get("membership")
            if not isinstance(membership, str):
                return
            before = info.members.get(state_key)
            info.members[state_key] = membership
            if before in ("join", "invite") and membership not in ("join", "invite"):
                self.crypto.member_left(info.room_id, state_key)

    def _decrypt(self, room_id: str, event: dict[str, Any], *, keep_pending: bool) -> Message:
        event_id = str(event.get("event_id", ""))
        sender = str(event.get("sender", ""))
        ts = event.get("origin_server_ts")
        ts = ts if isinstance(ts, int) else 0
        content = event.get("content")
        content = content if isinstance(content, dict) else {}
        if event.get("type") != "m.room.encrypted":
            return Message(room_id, event_id, sender, str(event.get("type")), content, ts, False)
        try:
            got = self.crypto.decrypt_room_event(room_id, event)
        except DecryptionError as e:
            waiting = e.code in ("unknown_session", "withheld")
            if keep_pending and waiting and len(self._pending) < MAX_PENDING:
                self._pending[(room_id, event_id)] = event
                self.store.add_pending(room_id, event_id, event)
            return Message(
                room_id, event_id, sender, "m.room.encrypted", content, ts, True, error=str(e)
            )
        return Message(
            room_id,
            event_id,
            sender,
            got.type,
            got.content,
            ts,
            True,
            got.sender_device,
            got.verified,
        )

    async def load_history(self, room_id: str, limit: int = 1000) -> list[Message]:
        """Page back through the room's history (`/messages`) for up to `limit` events,
        decrypt what our keys open and keep it in the store (seen). Newest first."""
        messages: list[Message] = []
        token: str | None = None
        fetched = 0
        while fetched < limit:
            page = await self.api.messages(
                room_id, limit=min(100, limit - fetched), from_token=token
            )
            chunk = [e for e in page.get("chunk") or [] if isinstance(e, dict)]
            fetched += len(chunk)
            for event in chunk:
                if event.get("type") not in ("m.room.message", "m.room.encrypted"):
                    continue
                message = self.decrypt_event(room_id, event)
                if message.error is None and message.type == "m.room.message":
                    self.store.add_message(room_id, message.event_id, message.to_json(), seen=True)
                messages.append(message)
            token = page.get("end")
            if not chunk or not isinstance(token, str):
                break
        return messages

    def decrypt_event(self, room_id: str, event: dict[str, Any]) -> Message:
        """Decrypt an event read outside /sync (e.g. from /messages); `error` says why not."""
        return self._decrypt(room_id, event, keep_pending=False)

    async def sync_forever(self, timeout_ms: int = 30_000) -> None:
        backoff = 1.0
        while True:
            try:
                await self.sync_once(timeout_ms)
                backoff = 1.0
            except MatrixError as e:
                if e.status in (401, 403):
                    raise
                log.warning("sync failed, retrying in %.0fs: %s", backoff, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)

    async def tail(
        self, room_id: str | None = None, *, timeout_ms: int = 30_000
    ) -> AsyncIterator[Message]:
        """Messages not shown before (stored ones first), then new ones as syncs bring them,
        each marked seen once yielded. Endless: the caller stops iterating."""
        while True:
            for rid in [room_id] if room_id else sorted(self.rooms):
                for data in self.store.messages(rid, unseen_only=True):
                    message = Message.from_json(data)
                    self.store.mark_seen(rid, [message.event_id])
                    yield message
            await self.sync_once(timeout_ms)

    def timeline(self, room_id: str, limit: int = 50) -> list[Message]:
        """The stored (decrypted) messages of a room, oldest first."""
        return [Message.from_json(d) for d in self.store.messages(room_id, limit=limit)]

    # ---- rooms --------------------------------------------------------------------------

    async def create_room(
        self,
        *,
        name: str | None = None,
        invite: Iterable[str] = (),
        encrypted: bool = True,
        direct: bool = False,
        public: bool = False,
    ) -> str:
        """Create a room, encrypted unless `encrypted=False` (a public room is never made
        encrypted implicitly)."""
        invitees = list(invite)
        body: dict[str, Any] = {
            "preset": "public_chat"
            if public
            else ("trusted_private_chat" if direct else "private_chat"),
            "invite": invitees,
        }
        if name:
            body["name"] = name
        if direct:
            body["is_direct"] = True
        if encrypted:
            body["initial_state"] = [ENCRYPTION_STATE]
        room_id = await self.api.create_room(body)
        async with self._lock:
            info = self.rooms.setdefault(room_id, RoomInfo(room_id))
            info.name = name
            info.members = {self.user_id: "join", **dict.fromkeys(invitees, "invite")}
            info.members_loaded = True
            if encrypted:
                info.encrypted = True
                self.crypto.set_room_encryption(room_id, ENCRYPTION_STATE["content"])  # type: ignore[arg-type]
                self.crypto.track_users(info.recipients())
            self.store.save_room(room_id, info.to_json())
            self.store.save_machine(self.crypto)
        return room_id

    async def join(self, room: str) -> str:
        room_id = await self.api.join(room)
        async with self._lock:
            info = self.rooms.setdefault(room_id, RoomInfo(room_id))
            info.membership = "join"
            await self._load_room_state(info)
        return room_id

    async def invite(self, room_id: str, user_id: str) -> None:
        await self.api.invite(room_id, user_id)
        async with self._lock:
            info = self.rooms.setdefault(room_id, RoomInfo(room_id))
            info.members[user_id] = "invite"
            if info.encrypted:
                self.crypto.track_users([user_id])
            self.store.save_room(room_id, info.to_json())

    async def _load_room_state(self, info: RoomInfo) -> None:
        """Read the room's full state (members, encryption) from the server."""
        for event in await self.api.state(info.room_id):
            self._apply_state(info, event)
        info.members_loaded = True
        if info.encrypted:
            self.crypto.track_users(info.recipients())
        self.store.save_room(info.room_id, info.to_json())
        self.store.save_machine(self.crypto)

    # ---- sending ------------------------------------------------------------------------

    async def send_text(self, room_id: str, body: str) -> str:
        return await self.send_message(room_id, {"msgtype": "m.text", "body": body})

    async def send_message(
        self, room_id: str, content: dict[str, Any], event_type: str = "m.room.message"
    ) -> str:
        """Send an event, encrypted if the room is: the room key goes first to every device
        of every joined or invited member that lacks it."""
        async with self._lock:
            info = self.rooms.get(room_id)
            if info is None or not info.members_loaded:
                info = info or RoomInfo(room_id)
                self.rooms[room_id] = info
                await self._load_room_state(info)
            if info.encrypted:
                encrypted = await self._encrypt(info, event_type, content)
                self.store.save_machine(self.crypto)
        if info.encrypted:
            event_id = await self.api.send(room_id, "m.room.encrypted", encrypted)
        else:
            event_id = await self.api.send(room_id, event_type, content)
        # Our own message, stored as already seen: its echo in /sync is not news to tail.
        if event_type in ("m.room.message", "m.sticker"):
            now = int(time.time() * 1000)
            echo = Message(
                room_id,
                event_id,
                self.user_id,
                event_type,
                content,
                now,
                info.encrypted,
                self.device_id,
                True,
            )
            self.store.add_message(room_id, event_id, echo.to_json(), seen=True)
        return event_id

    async def _encrypt(
        self, info: RoomInfo, event_type: str, content: dict[str, Any]
    ) -> dict[str, Any]:
        crypto = self.crypto
        members = info.recipients()
        if crypto.share_up_to_date(info.room_id, members):
            # Nothing changed since the key went to every member device: no device, Olm or
            # withheld checks per message (they made sending O(devices) a message).
            return crypto.encrypt_room_event(info.room_id, event_type, content)
        crypto.track_users(members)
        await self._query_keys()
        claims = crypto.missing_olm_sessions(members)
        if claims:
            answer = await self.api.keys_claim(claims)
            crypto.receive_keys_claim(claims, answer)
        to_device = crypto.share_room_key(info.room_id, members)
        if to_device:
            try:
                await self.api.send_to_device("m.room.encrypted", to_device)
            except MatrixError:
                crypto.discard_outbound(info.room_id)
                raise
        # Devices we could not open an Olm channel to are told once (m.no_olm).
        outbound = crypto.outbound[info.room_id]
        notices: dict[str, dict[str, Any]] = {}
        for device in crypto.withheld_devices(info.room_id, members):
            if (device.user_id, device.device_id) not in self._no_olm_told:
                notices.setdefault(device.user_id, {})[device.device_id] = crypto.withheld_notice(
                    info.room_id,
                    outbound.session_id,
                    "m.no_olm",
                    "Unable to establish a secure channel.",
                )
        if notices:
            await self.api.send_to_device("m.room_key.withheld", notices)
            self._no_olm_told.update((u, d) for u, ds in notices.items() for d in ds)
        crypto.note_shared(info.room_id, members)
        self.store.save_machine(crypto)
        return crypto.encrypt_room_event(info.room_id, event_type, content)

    # ---- attachments --------------------------------------------------------------------

    async def _upload(self, room_id: str, data: bytes, mimetype: str, name: str) -> dict[str, Any]:
        """Upload a file: encrypted (an `EncryptedFile` with `url`) in encrypted rooms, else
        as is (`{"url": ...}`)."""
        if self._room_encrypted(room_id):
            ciphertext, info = encrypt_attachment(data)
            info["url"] = await self.api.upload(ciphertext, "application/octet-stream")
            return {"file": info}
        return {"url": await self.api.upload(data, mimetype, name)}

    def _room_encrypted(self, room_id: str) -> bool:
        info = self.rooms.get(room_id)
        return bool(info and info.encrypted) or self.crypto.is_encrypted(room_id)

    async def send_file(self, room_id: str, path: Path, mimetype: str | None = None) -> str:
        """Send a file: an image as `m.image` with a thumbnail, anything else as `m.file`;
        both encrypted (file and thumbnail, each with its own key) in encrypted rooms."""
        if room_id not in self.rooms or not self.rooms[room_id].members_loaded:
            async with self._lock:
                info = self.rooms.setdefault(room_id, RoomInfo(room_id))
                await self._load_room_state(info)
        data = await asyncio.to_thread(path.read_bytes)
        mimetype = mimetype or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        encrypted = self._room_encrypted(room_id)
        image = await asyncio.to_thread(image_info, data) if mimetype.startswith("image/") else None
        meta: dict[str, Any] = {"mimetype": mimetype, "size": len(data)}
        content: dict[str, Any] = {"body": path.name, "msgtype": "m.image" if image else "m.file"}
        content.update(await self._upload(room_id, data, mimetype, path.name))
        if image is not None:
            meta.update({"w": image.width, "h": image.height})
            thumb = await self._upload(
                room_id, image.thumbnail, image.thumbnail_mimetype, "thumbnail"
            )
            if encrypted:
                meta["thumbnail_file"] = thumb["file"]
            else:
                meta["thumbnail_url"] = thumb["url"]
            meta["thumbnail_info"] = {
                "mimetype": image.thumbnail_mimetype,
                "size": len(image.thumbnail),
                "w": image.thumbnail_width,
                "h": image.thumbnail_height,
            }
        content["info"] = meta
        return await self.send_message(room_id, content)

    async def send_voice(self, room_id: str, path: Path) -> str:
        """Send an Ogg/Opus file as a voice message (`m.audio` with MSC3245's voice flag and
        the duration)."""
        data = await asyncio.to_thread(path.read_bytes)
        duration = ogg_opus_duration_ms(data)
        if duration is None:
            raise ValueError(f"{path} is not an Ogg/Opus file")
        if room_id not in self.rooms or not self.rooms[room_id].members_loaded:
            async with self._lock:
                info = self.rooms.setdefault(room_id, RoomInfo(room_id))
                await self._load_room_state(info)
        content: dict[str, Any] = {
            "body": path.name,
            "msgtype": "m.audio",
            "info": {"mimetype": "audio/ogg", "size": len(data), "duration": duration},
            "org.matrix.msc1767.audio": {"duration": duration},
            "org.matrix.msc3245.voice": {},
        }
        content.update(await self._upload(room_id, data, "audio/ogg", path.name))
        return await self.send_message(room_id, content)

    async def download(self, message: Message, *, thumbnail: bool = False) -> bytes | None:
        """The (decrypted, hash-checked) file of an attachment message, or None if it has
        none."""
        content = message.content
        info = content.get("info") if isinstance(content.get("info"), dict) else {}
        encrypted_file = (info or {}).get("thumbnail_file") if thumbnail else content.get("file")
        url = (info or {}).get("thumbnail_url") if thumbnail else content.get("url")
        if isinstance(encrypted_file, dict) and isinstance(encrypted_file.get("url"), str):
            ciphertext = await self.api.download(encrypted_file["url"])
            return await asyncio.to_thread(decrypt_attachment, ciphertext, encrypted_file)
        if isinstance(url, str):
            return await self.api.download(url)
        return None

    # ---- key requests -------------------------------------------------------------------

    async def _request_missing_keys(self) -> None:
        """Ask our own other devices for the keys of events still waiting (once each)."""
        others = [d for d in self.crypto.devices.get(self.user_id, {}) if d != self.device_id]
        if not others:
            return
        wanted = []
        for (room_id, _), event in self._pending.items():
            content = event.get("content")
            session_id = content.get("session_id") if isinstance(content, dict) else None
            if isinstance(session_id, str) and (room_id, session_id) not in self._requested:
                self._requested.add((room_id, session_id))
                wanted.append((room_id, session_id))
        for room_id, session_id in wanted[:50]:
            request = self.crypto.key_request(room_id, session_id, self.api.txn_id())
            await self.api.send_to_device("m.room_key_request", {self.user_id: {"*": request}})

    async def _answer_key_requests(self, requests: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Forward keys to our own verified devices that ask for them (over Olm)."""
        for sender, _, content in requests:
            answer = self.crypto.answer_key_request(sender, content)
            if answer is None:
                continue
            device, forwarded = answer
            if device.curve25519 not in self.crypto.olm_sessions:
                claims = {device.user_id: {device.device_id: "signed_curve25519"}}
                self.crypto.receive_keys_claim(claims, await self.api.keys_claim(claims))
            if device.curve25519 not in self.crypto.olm_sessions:
                continue
            encrypted = self.crypto.encrypt_olm(device, "m.forwarded_room_key", forwarded)
            await self.api.send_to_device(
                "m.room.encrypted", {device.user_id: {device.device_id: encrypted}}
            )

    # ---- verification -------------------------------------------------------------------

    async def _send_verification(self, user: str, device: str, outgoing: Outgoing) -> None:
        kind, content = outgoing
        await self.api.send_to_device(kind, {user: {device: content}})

    async def _device(self, user: str, device_id: str) -> Device | None:
        """A device's keys, querying them if we do not know the device yet."""
        device = self.crypto.devices.get(user, {}).get(device_id)
        if device is None:
            self.crypto.track_users([user])
            self.crypto.outdated.add(user)
            await self._query_keys()
            device = self.crypto.devices.get(user, {}).get(device_id)
        return device

    async def _on_verification_events(self, events: list[tuple[str, str, dict[str, Any]]]) -> None:
        for sender, kind, content in events:
            txn = content.get("transaction_id")
            if not isinstance(txn, str) or not txn:
                continue
            if kind == "m.key.verification.request":
                methods = content.get("methods")
                from_device = content.get("from_device")
                if isinstance(from_device, str) and isinstance(methods, list) and SAS_V1 in methods:
                    self.verification_requests[txn] = (sender, from_device)
                continue
            if kind == "m.key.verification.ready" and txn in self._our_requests:
                user, device_id = self._our_requests.pop(txn)
                from_device = content.get("from_device")
                methods = content.get("methods")
                if sender != user or (device_id != "*" and from_device != device_id):
                    continue
                if not isinstance(from_device, str) or not isinstance(methods, list):
                    continue
                if SAS_V1 not in methods:
                    cancel = (
                        "m.key.verification.cancel",
                        {"transaction_id": txn, "code": "m.unknown_method", "reason": "SAS only"},
                    )
                    await self._send_verification(sender, from_device, cancel)
                    continue
                device = await self._device(sender, from_device)
                if device is None:
                    continue
                sas, start = Sas.start(
                    self.user_id,
                    self.device_id,
                    self.crypto.ed25519,
                    sender,
                    from_device,
                    device.ed25519,
                    transaction_id=txn,
                )
                self.verifications[txn] = self._with_masters(sas)
                await self._send_verification(sender, from_device, start)
                continue
            if kind == "m.key.verification.start":
                from_device = content.get("from_device")
                if not isinstance(from_device, str) or txn in self.verifications:
                    continue
                device = await self._device(sender, from_device)
                if device is None:
                    cancel = (
                        "m.key.verification.cancel",
                        {"transaction_id": txn, "code": "m.user", "reason": "unknown device"},
                    )
                    await self._send_verification(sender, from_device, cancel)
                    continue
                sas = Sas.from_start(
                    self.user_id,
                    self.device_id,
                    self.crypto.ed25519,
                    sender,
                    device.ed25519,
                    content,
                )
                self.verifications[txn] = self._with_masters(sas)
                if sas.state == "cancelled":
                    await self._send_verification(sender, from_device, sas.cancellation())
                elif txn in self._readied:
                    await self._send_verification(sender, from_device, sas.accept())
                continue
            ongoing = self.verifications.get(txn)
            if ongoing is None or ongoing.their_user != sender:
                continue
            for outgoing in ongoing.receive(kind, content):
                await self._send_verification(ongoing.their_user, ongoing.their_device, outgoing)
            await self._note_verified(ongoing)

    def _with_masters(self, sas: Sas) -> Sas:
        """Send our master key in the MAC when this device trusts it, and check theirs."""
        ours = self.crypto.cross_signing.get(self.user_id, {}).get(MASTER)
        sas.own_master = ours if ours is not None and ours == self.crypto.own_master else None
        sas.their_master = self.crypto.cross_signing.get(sas.their_user, {}).get(MASTER)
        return sas

    async def _note_verified(self, sas: Sas) -> None:
        if not sas.verified or sas.their_user in self._noted.get(sas.transaction_id, ()):
            return
        self._noted[sas.transaction_id] = {sas.their_user}
        device = self.crypto.devices.get(sas.their_user, {}).get(sas.their_device)
        if device is not None and device.ed25519 == sas.their_ed25519 and not device.verified:
            self.crypto.set_verified(sas.their_user, sas.their_device)
            self.store.save_machine(self.crypto)
            if sas.their_user == self.user_id:
                # A newly trusted device of ours may answer the key requests it ignored.
                self._requested.clear()
        if sas.master_verified and sas.their_master is not None:
            self.crypto.verify_master(sas.their_user, sas.their_master)
            self.store.save_machine(self.crypto)
        try:
            if sas.their_user == self.user_id and device is not None:
                await self._cross_sign_own_device(device)
                await self._request_secrets(device)
            elif sas.master_verified:
                await self._cross_sign_user(sas.their_user)
        except (MatrixError, CrossSigningError) as e:
            log.warning("verified, but the cross-signing signature was not uploaded: %s", e)

    async def start_verification(self, user_id: str, device_id: str) -> Sas:
        """Begin a SAS verification with one device (`m.key.verification.start`); syncs
        carry it on. Compare `sas.emoji()` once `sas.state == "keys"`, then
        `confirm_verification` or `cancel_verification`."""
        async with self._lock:
            device = await self._device(user_id, device_id)
            if device is None:
                raise ValueError(f"{user_id} has no device {device_id}")
            sas, start = Sas.start(
                self.user_id,
                self.device_id,
                self.crypto.ed25519,
                user_id,
                device_id,
                device.ed25519,
            )
            self.verifications[sas.transaction_id] = self._with_masters(sas)
            await self._send_verification(user_id, device_id, start)
        return sas

    async def request_verification(self, user_id: str, device_id: str) -> str:
        """Ask a device to verify (`m.key.verification.request`, the flow Element and
        matrix-js-sdk use); when it answers `ready`, we send the SAS `start`, and
        `client.verifications[txn]` carries on. Returns the transaction ID."""
        txn = secrets.token_urlsafe(16)
        request = {
            "from_device": self.device_id,
            "methods": [SAS_V1],
            "timestamp": int(time.time() * 1000),
            "transaction_id": txn,
        }
        self._our_requests[txn] = (user_id, device_id)
        await self._send_verification(user_id, device_id, ("m.key.verification.request", request))
        return txn

    def incoming_verifications(self, user_id: str | None = None) -> list[str]:
        """Transaction IDs of verifications other devices asked for that we have not
        answered yet (requests, and starts we have not accepted)."""
        found = [
            txn
            for txn, (user, _) in self.verification_requests.items()
            if txn not in self._readied and (user_id is None or user == user_id)
        ]
        found += [
            txn
            for txn, sas in self.verifications.items()
            if not sas.we_started
            and sas.state == "started"
            and txn not in self._readied
            and (user_id is None or sas.their_user == user_id)
        ]
        return found

    async def accept_verification(self, transaction_id: str) -> Sas | None:
        """Answer an incoming verification: `accept` a start, or `ready` a request (the
        start that follows is accepted when it comes). The Sas, once there is one."""
        async with self._lock:
            self._readied.add(transaction_id)
            sas = self.verifications.get(transaction_id)
            if sas is not None:
                if sas.state == "started" and not sas.we_started:
                    await self._send_verification(sas.their_user, sas.their_device, sas.accept())
                return sas
            request = self.verification_requests.get(transaction_id)
            if request is None:
                raise ValueError(f"no verification {transaction_id}")
            ready = {
                "transaction_id": transaction_id,
                "from_device": self.device_id,
                "methods": [SAS_V1],
            }
            await self._send_verification(*request, ("m.key.verification.ready", ready))
            return None

    async def confirm_verification(self, sas: Sas) -> None:
        """The emoji match: send our MAC (the device is verified once theirs checks)."""
        async with self._lock:
            for outgoing in sas.confirm():
                await self._send_verification(sas.their_user, sas.their_device, outgoing)
            await self._note_verified(sas)

    async def cancel_verification(self, sas: Sas, *, mismatch: bool = False) -> None:
        outgoing = sas.mismatch() if mismatch else sas.cancel()
        await self._send_verification(sas.their_user, sas.their_device, outgoing)

    # ---- cross-signing ------------------------------------------------------------------

    def _signing_key(self, usage: str) -> SigningKey | None:
        secret = self.store.get_secret(f"cross_signing:{usage}")
        return SigningKey.from_secret(secret) if secret else None

    def _keep_signing_keys(self, keys: dict[str, SigningKey]) -> None:
        for usage, key in keys.items():
            self.store.put_secret(f"cross_signing:{usage}", key.secret())

    async def _refresh_keys(self, user: str) -> None:
        self.crypto.track_users([user])
        self.crypto.outdated.add(user)
        await self._query_keys()

    async def bootstrap_cross_signing(self, password: str, *, reset: bool = False) -> bool:
        """Create the account's master, self-signing and user-signing keys, upload them
        (the server asks for the password: user-interactive auth), and sign this device
        with the self-signing key. False, doing nothing, when the account already has a
        master key (this device then gets the keys from secret storage: `restore`) —
        unless `reset`: a new identity replaces it (everyone who verified the user sees a
        changed identity)."""
        async with self._lock:
            await self._refresh_keys(self.user_id)
            if self.crypto.cross_signing.get(self.user_id, {}).get(MASTER) and not reset:
                return False
            keys = {usage: SigningKey.generate() for usage in USAGES}
            master = keys[MASTER]
            user = self.user_id
            body = {
                "master_key": key_object(user, MASTER, master.public),
                "self_signing_key": master.sign(
                    key_object(user, SELF_SIGNING, keys[SELF_SIGNING].public), user
                ),
                "user_signing_key": master.sign(
                    key_object(user, USER_SIGNING, keys[USER_SIGNING].public), user
                ),
            }
            self._keep_signing_keys(keys)  # before the server has them: never lost
            try:
                await self.api.upload_signing_keys(body, user, password)
            except MatrixError:
                for usage in USAGES:
                    self.store.put_secret(f"cross_signing:{usage}", None)
                raise
            self.crypto.own_master = master.public
            self.crypto.pinned_masters.pop(user, None)  # our own new identity
            await self._refresh_keys(user)
            self.crypto.verify_master(user, master.public)
            self.store.save_machine(self.crypto)
            # This device vouches for the master key, and the self-signing key for it.
            await self.api.upload_signatures(
                {
                    user: {
                        self.device_id: keys[SELF_SIGNING].sign(self.crypto.device_keys(), user),
                        master.public: self.crypto.sign(body["master_key"]),
                    }
                }
            )
            await self._refresh_keys(user)
            self.store.save_machine(self.crypto)
        return True

    async def _import_signing_keys(self, key_id: str, ssss_key: bytes) -> bool:
        """Take the cross-signing private keys from secret storage (after checking each is
        the account's current public key), trust our master key, and sign this device."""
        await self._refresh_keys(self.user_id)
        published = self.crypto.cross_signing.get(self.user_id, {})
        keys: dict[str, SigningKey] = {}
        for usage in USAGES:
            secret = await self._read_secret(key_id, ssss_key, SECRET_NAMES[usage])
            if secret is None:
                continue
            key = SigningKey.from_secret(secret)
            if published.get(usage) != key.public:
                log.warning("secret storage's %s key is not the account's: ignored", usage)
                continue
            keys[usage] = key
        if MASTER not in keys:
            return False
        self._keep_signing_keys(keys)
        self.crypto.verify_master(self.user_id, keys[MASTER].public)
        self.store.save_machine(self.crypto)
        device = self.crypto.devices.get(self.user_id, {}).get(self.device_id)
        if SELF_SIGNING in keys and (device is None or not device.cross_signed):
            await self.api.upload_signatures(
                {
                    self.user_id: {
                        self.device_id: keys[SELF_SIGNING].sign(
                            self.crypto.device_keys(), self.user_id
                        )
                    }
                }
            )
            await self._refresh_keys(self.user_id)
            self.store.save_machine(self.crypto)
        return True

    async def _cross_sign_own_device(self, device: Device) -> None:
        """Sign another device of ours, verified by SAS, with our self-signing key."""
        key = self._signing_key(SELF_SIGNING)
        if key is None or device.cross_signed:
            return
        await self._refresh_keys(self.user_id)
        if self.crypto.cross_signing.get(self.user_id, {}).get(SELF_SIGNING) != key.public:
            return
        keys = await self.api.keys_query([self.user_id])
        raw = ((keys.get("device_keys") or {}).get(self.user_id) or {}).get(device.device_id)
        if (
            not isinstance(raw, dict)
            or raw.get("keys", {}).get(f"ed25519:{device.device_id}") != device.ed25519
        ):
            return
        await self.api.upload_signatures(
            {self.user_id: {device.device_id: key.sign(_without_unsigned(raw), self.user_id)}}
        )
        await self._refresh_keys(self.user_id)
        self.store.save_machine(self.crypto)

    async def _cross_sign_user(self, user: str) -> None:
        """Sign another user's master key (verified by SAS) with our user-signing key, so
        our other devices, and theirs, see them as verified by us."""
        key = self._signing_key(USER_SIGNING)
        if key is None:
            return
        master = self.crypto.cross_signing.get(user, {}).get(MASTER)
        obj = self.crypto.master_objects.get(user)
        if master is None or obj is None or self.crypto.verified_masters.get(user) != master:
            return
        if self.crypto.cross_signing.get(self.user_id, {}).get(USER_SIGNING) != key.public:
            return
        await self.api.upload_signatures(
            {user: {master: key.sign(_without_unsigned(obj), self.user_id)}}
        )

    # ---- secrets shared between our own devices (m.secret.request / m.secret.send) --------

    SHAREABLE = (*SECRET_NAMES.values(), BACKUP_SECRET)

    def _local_secret(self, name: str) -> str | None:
        """A secret this device holds, by its secret-storage name."""
        for usage, secret_name in SECRET_NAMES.items():
            if name == secret_name:
                key = self._signing_key(usage)
                published = self.crypto.cross_signing.get(self.user_id, {}).get(usage)
                return key.secret() if key is not None and key.public == published else None
        if name == BACKUP_SECRET:
            return self.store.get_secret("backup_key")
        return None

    async def _request_secrets(self, device: Device) -> None:
        """Ask a newly verified device of ours for the secrets this device lacks (the
        cross-signing keys, the backup key): the spec's sharing, for a new device verified
        by SAS instead of restored from secret storage."""
        for name in self.SHAREABLE:
            if self._local_secret(name) is not None or name in self._secret_requests.values():
                continue
            request_id = secrets.token_urlsafe(12)
            self._secret_requests[request_id] = name
            request = {
                "name": name,
                "action": "request",
                "requesting_device_id": self.device_id,
                "request_id": request_id,
            }
            await self.api.send_to_device(
                "m.secret.request", {self.user_id: {device.device_id: request}}
            )

    async def _answer_secret_requests(
        self, requests: list[tuple[str, str, dict[str, Any]]]
    ) -> None:
        """Give a secret to a device of ours that asks, only if this device trusts it
        (verified, or cross-signed under our trusted identity), and only over Olm."""
        for sender, _, content in requests:
            if sender != self.user_id or content.get("action") != "request":
                continue
            device_id, name = content.get("requesting_device_id"), content.get("name")
            request_id = content.get("request_id")
            if not isinstance(device_id, str) or device_id == self.device_id:
                continue
            if not isinstance(request_id, str) or name not in self.SHAREABLE:
                continue
            device = self.crypto.devices.get(self.user_id, {}).get(device_id)
            secret = self._local_secret(str(name))
            if device is None or secret is None or not self.crypto.device_trusted(device):
                continue
            if device.curve25519 not in self.crypto.olm_sessions:
                claims = {self.user_id: {device_id: "signed_curve25519"}}
                self.crypto.receive_keys_claim(claims, await self.api.keys_claim(claims))
            if device.curve25519 not in self.crypto.olm_sessions:
                continue
            encrypted = self.crypto.encrypt_olm(
                device, "m.secret.send", {"request_id": request_id, "secret": secret}
            )
            await self.api.send_to_device(
                "m.room.encrypted", {self.user_id: {device_id: encrypted}}
            )
            self.store.save_machine(self.crypto)

    async def _take_shared_secrets(self) -> None:
        """Keep the secrets our other devices sent, each checked against what the server
        publishes (cross-signing public keys, the backup's public key)."""
        received, self._secrets_received = self._secrets_received, {}
        if not received:
            return
        published = self.crypto.cross_signing.get(self.user_id, {})
        keys: dict[str, SigningKey] = {}
        for usage, name in SECRET_NAMES.items():
            if name in received:
                try:
                    key = SigningKey.from_secret(received[name])
                except CrossSigningError:
                    continue
                if published.get(usage) == key.public:
                    keys[usage] = key
        # Each key was checked against the published one on its own; the secrets may
        # arrive in different sync responses, so keep whichever came.
        self._keep_signing_keys(keys)
        if MASTER in keys:
            self.crypto.verify_master(self.user_id, keys[MASTER].public)
        own = self.crypto.devices.get(self.user_id, {}).get(self.device_id)
        if SELF_SIGNING in keys and (own is None or not own.cross_signed):
            await self.api.upload_signatures(
                {
                    self.user_id: {
                        self.device_id: keys[SELF_SIGNING].sign(
                            self.crypto.device_keys(), self.user_id
                        )
                    }
                }
            )
            self.crypto.outdated.add(self.user_id)
        if BACKUP_SECRET in received:
            info = await self.api.backup_version()
            try:
                private = b64decode(received[BACKUP_SECRET])
                if len(private) != 32:
                    raise BackupError("a backup key is 32 bytes")
                public = backup_public_key(private)
            except (ValueError, TypeError, BackupError) as e:
                log.warning("a shared backup key is unusable: %s", e)
                public = None
            auth = (info or {}).get("auth_data")
            if info is not None and isinstance(auth, dict) and auth.get("public_key") == public:
                self.store.put_secret("backup_version", str(info["version"]))
                self.store.put_secret("backup_key", b64encode(private))
        self.store.save_machine(self.crypto)

    def user_trust(self, user: str) -> str:
        """ "verified", "unverified" or "changed" (identity changed since first seen)."""
        return self.crypto.user_trust(user)

    # ---- key backup ---------------------------------------------------------------------

    def _backup_key(self) -> tuple[str, bytes] | None:
        version = self.store.get_secret("backup_version")
        key = self.store.get_secret("backup_key")
        if version is None or key is None:
            return None
        return version, b64decode(key)

    async def backup_status(self) -> dict[str, Any]:
        """The server's current backup, and whether this device holds its key."""
        info = await self.api.backup_version()
        mine = self._backup_key()
        return {
            "version": info.get("version") if info else None,
            "algorithm": info.get("algorithm") if info else None,
            "count": info.get("count") if info else None,
            "this_device_has_key": bool(info and mine and mine[0] == info.get("version")),
        }

    async def create_backup(self, passphrase: str | None = None) -> str:
        """Set up secret storage and a new key backup; upload every room key we hold. The
        secret-storage key is random, or derived from `passphrase` (`m.pbkdf2`, its
        parameters in the key description, as the spec and Element do); either way the
        recovery key it returns (that key, encoded) opens it too. Shown once, never stored."""
        if passphrase is not None:
            parameters = passphrase_parameters()
            ssss_key = await asyncio.to_thread(key_from_passphrase, passphrase, parameters)
            description = key_description(ssss_key, "passphrase", parameters)
        else:
            ssss_key = os.urandom(32)
            description = key_description(ssss_key, "recovery")
        key_id = b64encode(os.urandom(18))
        backup_private = os.urandom(32)
        auth_data = self.crypto.sign({"public_key": backup_public_key(backup_private)})
        master = self._signing_key(MASTER)
        if master is not None and master.public == self.crypto.own_master:
            # Signed by our identity too: our other devices trust the backup through it.
            auth_data = master.sign(auth_data, self.user_id)
        version = await self.api.create_backup_version(BACKUP_ALGORITHM, auth_data)
        await self.api.set_account_data(self.user_id, f"m.secret_storage.key.{key_id}", description)
        await self._store_secret(ssss_key, key_id, BACKUP_SECRET, b64encode(backup_private))
        published = self.crypto.cross_signing.get(self.user_id, {})
        for usage in USAGES:
            signing = self._signing_key(usage)
            if signing is not None and published.get(usage) == signing.public:
                await self._store_secret(ssss_key, key_id, SECRET_NAMES[usage], signing.secret())
        await self.api.set_account_data(
            self.user_id, "m.secret_storage.default_key", {"key": key_id}
        )
        await self.api.set_account_data(self.user_id, "m.key_backup", {"enabled": True})
        self.store.put_secret("backup_version", version)
        self.store.put_secret("backup_key", b64encode(backup_private))
        await self.upload_room_keys()
        return encode_recovery_key(ssss_key)

    async def _store_secret(self, ssss_key: bytes, key_id: str, name: str, secret: str) -> None:
        """Put one secret into secret storage, encrypted with the key `key_id`."""
        await self.api.set_account_data(
            self.user_id, name, {"encrypted": {key_id: encrypt_secret(ssss_key, name, secret)}}
        )

    async def open_secret_storage(
        self, recovery_key: str | None = None, *, passphrase: str | None = None
    ) -> tuple[str, bytes]:
        """The default secret-storage key's ID and the key itself, from the recovery key or
        from the passphrase it was made with; checked against the key description's MAC."""
        default = await self.api.get_account_data(self.user_id, "m.secret_storage.default_key")
        key_id = default.get("key") if default else None
        if not isinstance(key_id, str):
            raise BackupError("this account has no secret storage")
        description = await self.api.get_account_data(
            self.user_id, f"m.secret_storage.key.{key_id}"
        )
        if passphrase is not None:
            parameters = (description or {}).get("passphrase")
            if parameters is None:
                raise BackupError(
                    "this secret storage was set up without a passphrase: use the recovery key"
                )
            ssss_key = await asyncio.to_thread(key_from_passphrase, passphrase, parameters)
            wrong = "wrong passphrase"
        elif recovery_key is not None:
            ssss_key = decode_recovery_key(recovery_key)
            wrong = "wrong recovery key"
        else:
            raise BackupError("a recovery key or a passphrase is needed")
        if not check_key(ssss_key, description):
            raise BackupError(wrong)
        return key_id, ssss_key

    async def _read_secret(self, key_id: str, ssss_key: bytes, name: str) -> str | None:
        """A secret from secret storage; None when it is not stored there."""
        data = await self.api.get_account_data(self.user_id, name)
        encrypted = (data or {}).get("encrypted")
        if not isinstance(encrypted, dict) or key_id not in encrypted:
            return None
        return decrypt_secret(ssss_key, name, encrypted[key_id])

    async def upload_room_keys(self) -> int:
        """Back up the room keys not in the current backup yet; how many were sent."""
        mine = self._backup_key()
        if mine is None:
            return 0
        version, private = mine
        public = backup_public_key(private)
        done = self.store.backed_up(version)
        todo = [s for key, s in list(self.crypto.inbound.items()) if key not in done]
        if not todo:
            return 0
        rooms: dict[str, Any] = {}
        for entry in todo:
            data = backup_session_data(
                public, entry.room_id, entry.session, entry.sender_key, entry.signing_key
            )
            rooms.setdefault(entry.room_id, {"sessions": {}})["sessions"][entry.session_id] = data
        try:
            await self.api.put_room_keys(version, rooms)
        except MatrixError as e:
            if e.errcode == "M_WRONG_ROOM_KEYS_VERSION":
                # Another device replaced the backup: stop writing to ours.
                self.store.put_secret("backup_version", None)
                self.store.put_secret("backup_key", None)
                return 0
            raise
        self.store.mark_backed_up(version, [(e.room_id, e.session_id) for e in todo])
        return len(todo)

    async def restore_backup(
        self, recovery_key: str | None = None, *, passphrase: str | None = None
    ) -> int:
        """Open secret storage with the recovery key (or its passphrase), take the backup key
        from it, and import every room key of the current backup; events waiting for those
        keys decrypt. Returns how many sessions were imported. This device then backs up to
        the same backup."""
        key_id, ssss_key = await self.open_secret_storage(recovery_key, passphrase=passphrase)
        async with self._lock:
            try:
                await self._import_signing_keys(key_id, ssss_key)
            except (MatrixError, CrossSigningError, BackupError) as e:
                log.warning("cross-signing keys not taken from secret storage: %s", e)
        stored = await self._read_secret(key_id, ssss_key, BACKUP_SECRET)
        if stored is None:
            raise BackupError("secret storage holds no key backup key")
        private = b64decode(stored)
        info = await self.api.backup_version()
        if info is None or info.get("algorithm") != BACKUP_ALGORITHM:
            raise BackupError("the server has no key backup this client can read")
        auth_data = info.get("auth_data")
        if not isinstance(auth_data, dict) or auth_data.get("public_key") != backup_public_key(
            private
        ):
            raise BackupError("the server's backup is not the one secret storage holds the key of")
        version = str(info["version"])
        answer = await self.api.get_room_keys(version)
        imported: list[tuple[str, str]] = []
        async with self._lock:
            for room_id, room in (answer.get("rooms") or {}).items():
                for session_id, data in ((room or {}).get("sessions") or {}).items():
                    try:
                        session = decrypt_session_data(private, data.get("session_data"))
                        claimed = session.get("sender_claimed_keys") or {}
                        if self.crypto.import_inbound(
                            room_id,
                            session["session_key"],
                            str(session.get("sender_key", "")),
                            str(claimed.get("ed25519", "")),
                        ):
                            imported.append((room_id, session_id))
                    except (BackupError, DecryptionError, AttributeError) as e:
                        log.warning("backed-up session %s not restored: %s", session_id, e)
            self.store.save_machine(self.crypto)
            self.store.put_secret("backup_version", version)
            self.store.put_secret("backup_key", b64encode(private))
            self.store.mark_backed_up(version, imported)
            self._retry_pending()
        return len(imported)

    def _retry_pending(self) -> list[Message]:
        """Decrypt the events that waited for a room key, now that some may have come."""
        messages: list[Message] = []
        for (room_id, event_id), event in list(self._pending.items()):
            message = self._decrypt(room_id, event, keep_pending=False)
            if message.error is None:
                del self._pending[(room_id, event_id)]
                self.store.delete_pending(room_id, event_id)
                if self.store.add_message(room_id, event_id, message.to_json(), seen=False):
                    messages.append(message)
        return messages

    # ---- devices ------------------------------------------------------------------------

    async def devices(self, user_id: str) -> list[dict[str, Any]]:
        """A user's devices as our crypto state knows them (after a fresh key query)."""
        async with self._lock:
            self.crypto.track_users([user_id])
            self.crypto.outdated.add(user_id)
            await self._query_keys()
        return [
            {**d.to_json(), "trusted": self.crypto.device_trusted(d)}
            for d in self.crypto.devices.get(user_id, {}).values()
        ]


def _without_unsigned(obj: dict[str, Any]) -> dict[str, Any]:
    """A key object as it was uploaded (the server adds `unsigned` when it answers)."""
    return {k: v for k, v in obj.items() if k != "unsigned"}

"""The end-to-end encryption state machine: Olm account, device keys and one-time/fallback
keys, device-list tracking, Olm sessions, Megolm outbound and inbound sessions.

No I/O here. The client feeds it what the server said (sync sections, /keys/query and
/keys/claim answers) and sends what it returns (upload bodies, claim requests, to-device
messages, encrypted event contents). Everything it changed since the last `drain_changes()`
is listed there, so a store can persist exactly that (see store.py). The clock is injected,
so the rotation rules are tested without waiting.

The algorithms follow the spec's "End-to-end encryption" module: `m.olm.v1.curve25519-aes-sha2`
for to-device messages and `m.megolm.v1.aes-sha2` for room events, with vodozemac doing the
cryptography.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import vodozemac

from starling_client.cross_signing import (
    MASTER,
    SELF_SIGNING,
    USER_SIGNING,
    public_key_of,
)
from starling_client.encoding import b64decode, b64encode, canonical_json

OLM = "m.olm.v1.curve25519-aes-sha2"
MEGOLM = "m.megolm.v1.aes-sha2"
SIGNED_CURVE25519 = "signed_curve25519"

# The spec's "appropriate default" rotation: a week, or 100 messages.
DEFAULT_ROTATION_MS = 7 * 24 * 3600 * 1000
DEFAULT_ROTATION_MSGS = 100
# Olm sessions kept per sender key (the spec asks for at least 4), least recently used dropped.
MAX_OLM_SESSIONS_PER_KEY = 6
# A device whose one-time key could not be claimed is not asked again for this long.
CLAIM_RETRY_MS = 5 * 60 * 1000
# Megolm indices remembered per inbound session to refuse replays.
MAX_SEEN_INDICES = 10_000
# A room whose key was shared with every member device is not checked again before each
# message while nothing changed (devices, Olm sessions, members), for at most this long.
SHARE_RECHECK_MS = 60_000


class DecryptionError(Exception):
    """An event that cannot or must not be decrypted; `code` says why (e.g. `unknown_session`,
    `replay`, `bad_payload`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass
class Device:
    """Another device's published keys, checked against its own signature."""

    user_id: str
    device_id: str
    curve25519: str
    ed25519: str
    algorithms: list[str] = field(default_factory=list)
    display_name: str | None = None
    verified: bool = False  # verified on this device (SAS)
    blocked: bool = False
    cross_signed: bool = False  # signed by its owner's (master-signed) self-signing key

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "device_id": self.device_id,
            "curve25519": self.curve25519,
            "ed25519": self.ed25519,
            "algorithms": self.algorithms,
            "display_name": self.display_name,
            "verified": self.verified,
            "blocked": self.blocked,
            "cross_signed": self.cross_signed,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Device:
        return cls(**data)


@dataclass
class RoomEncryption:
    """A room's `m.room.encryption` settings."""

    algorithm: str = MEGOLM
    rotation_period_ms: int = DEFAULT_ROTATION_MS
    rotation_period_msgs: int = DEFAULT_ROTATION_MSGS

    @classmethod
    def from_content(cls, content: dict[str, Any]) -> RoomEncryption:
        def positive(key: str, default: int) -> int:
            value = content.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
            return default

        algorithm = content.get("algorithm")
        return cls(
            algorithm if isinstance(algorithm, str) else "",
            positive("rotation_period_ms", DEFAULT_ROTATION_MS),
            positive("rotation_period_msgs", DEFAULT_ROTATION_MSGS),
        )


@dataclass
class OlmSession:
    session: vodozemac.Session
    sender_key: str  # the other device's Curve25519 key
    last_used_ms: int

    @property
    def session_id(self) -> str:
        return str(self.session.session_id)


@dataclass
class OutboundGroupSession:
    room_id: str
    session: vodozemac.GroupSession
    created_ms: int
    messages: int = 0
    # (user_id, device_id, curve25519) of every device the key was sent to.
    shared_with: set[tuple[str, str, str]] = field(default_factory=set)

    @property
    def session_id(self) -> str:
        return str(self.session.session_id)

    def meta(self) -> dict[str, Any]:
        return {
            "created_ms": self.created_ms,
            "messages": self.messages,
            "shared_with": sorted(list(t) for t in self.shared_with),
        }


@dataclass
class InboundGroupSession:
    room_id: str
    session: vodozemac.InboundGroupSession
    sender: str  # the user whose device sent us the key over Olm
    sender_key: str  # that device's Curve25519 key (the Olm channel's)
    signing_key: str  # the Ed25519 key that device claimed in the Olm payload
    seen: dict[int, str] = field(default_factory=dict)  # message index → event ID

    @property
    def session_id(self) -> str:
        return str(self.session.session_id)

    def meta(self) -> dict[str, Any]:
        return {
            "room_id": self.room_id,
            "sender": self.sender,
            "sender_key": self.sender_key,
            "signing_key": self.signing_key,
            "seen": {str(k): v for k, v in self.seen.items()},
        }


@dataclass
class Decrypted:
    """A decrypted event: the inner type and content, and who provably sent it."""

    type: str
    content: dict[str, Any]
    sender: str
    sender_key: str
    sender_device: str | None  # the device ID, when the sender key belongs to a known device
    verified: bool  # the sending device is one the user verified
    session_id: str | None = None
    ed25519: str = ""  # the sender's Ed25519 key as the encrypted payload claims it


@dataclass
class Changes:
    """What changed since the last drain, for the store to persist."""

    account: bool = False
    meta: bool = False
    olm_sessions: list[OlmSession] = field(default_factory=list)
    inbound: list[InboundGroupSession] = field(default_factory=list)
    outbound: dict[str, OutboundGroupSession | None] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (self.account or self.meta or self.olm_sessions or self.inbound or self.outbound)


def sign_json(account: vodozemac.Account, obj: dict[str, Any]) -> str:
    unsigned = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    return str(account.sign(canonical_json(unsigned)).to_base64())


def verify_json(obj: dict[str, Any], user_id: str, key_id: str, ed25519: str) -> bool:
    """Whether `obj` carries a valid `signatures[user_id][key_id]` by the Ed25519 key."""
    try:
        signature = obj["signatures"][user_id][key_id]
        unsigned = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
        vodozemac.Ed25519PublicKey.from_base64(ed25519).verify_signature(
            canonical_json(unsigned), vodozemac.Ed25519Signature.from_base64(signature)
        )
    except (KeyError, TypeError, ValueError):
        return False
    return True


def _now_ms() -> int:
    return int(time.time() * 1000)


class CryptoMachine:
    """One device's encryption state. See the module docstring for how it is driven."""

    def __init__(
        self,
        user_id: str,
        device_id: str,
        account: vodozemac.Account | None = None,
        *,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self.clock = clock
        self.account = account if account is not None else vodozemac.Account()
        self.device_keys_uploaded = False
        self.server_otk_count: int | None = None
        self.fallback_needed = True
        self.devices: dict[str, dict[str, Device]] = {}
        self.tracked: set[str] = set()
        self.outdated: set[str] = set()
        self.rooms: dict[str, RoomEncryption] = {}
        self.failed_claims: dict[str, int] = {}  # "user|device" → when the claim came back empty
        self.olm_sessions: dict[str, list[OlmSession]] = {}
        self.inbound: dict[tuple[str, str], InboundGroupSession] = {}
        self.outbound: dict[str, OutboundGroupSession] = {}
        self.withheld: dict[str, str] = {}  # "room|session" or "user|*" → code and reason
        self._changes = Changes(account=account is None, meta=account is None)
        # Bumped by anything that may change who must get a room key (device lists, Olm
        # sessions, outbound sessions, trust); see share_up_to_date. In memory only.
        self._share_epoch = 0
        self._share_checked: dict[str, tuple[frozenset[str], int, int]] = {}
        # Cross-signing: each user's checked public keys ({"master", "self_signing", and
        # for us "user_signing"}), the master key first seen per user (a different one
        # later is a changed identity), the master keys verified (SAS, or signed by our
        # user-signing key), and our own master key when this device holds or trusts it.
        self.cross_signing: dict[str, dict[str, str]] = {}
        self.pinned_masters: dict[str, str] = {}
        self.verified_masters: dict[str, str] = {}
        self.own_master: str | None = None
        # Another user's master key object as the server gave it (to sign it after a SAS).
        self.master_objects: dict[str, dict[str, Any]] = {}

    # ---- identity -------------------------------------------------------------------

    @property
    def curve25519(self) -> str:
        return str(self.account.curve25519_key.to_base64())

    @property
    def ed25519(self) -> str:
        return str(self.account.ed25519_key.to_base64())

    def sign(self, obj: dict[str, Any]) -> dict[str, Any]:
        """`obj` with our device's signature added."""
        signed = dict(obj)
        signatures = {u: dict(s) for u, s in obj.get("signatures", {}).items()}
        signatures.setdefault(self.user_id, {})[f"ed25519:{self.device_id}"] = sign_json(
            self.account, obj
        )
        signed["signatures"] = signatures
        return signed

    def device_keys(self) -> dict[str, Any]:
        return self.sign(
            {
                "user_id": self.user_id,
                "device_id": self.device_id,
                "algorithms": [OLM, MEGOLM],
                "keys": {
                    f"curve25519:{self.device_id}": self.curve25519,
                    f"ed25519:{self.device_id}": self.ed25519,
                },
            }
        )

    # ---- one-time and fallback keys ---------------------------------------------------

    def otk_target(self) -> int:
        return int(self.account.max_number_of_one_time_keys) // 2

    def keys_to_upload(self) -> dict[str, Any] | None:
        """The body of the next `/keys/upload`, or None when nothing needs uploading: device
        keys once, one-time keys up to half of what the account can hold, and a new fallback
        key when the server says ours was used."""
        body: dict[str, Any] = {}
        if not self.device_keys_uploaded:
            body["device_keys"] = self.device_keys()
        unpublished = self.account.one_time_keys
        if self.server_otk_count is not None or not self.device_keys_uploaded:
            on_server = self.server_otk_count or 0
            wanted = self.otk_target() - on_server - len(unpublished)
            if wanted > 0:
                self.account.generate_one_time_keys(wanted)
                self._changes.account = True
                unpublished = self.account.one_time_keys
        if unpublished:
            body["one_time_keys"] = {
                f"{SIGNED_CURVE25519}:{key_id}": self.sign({"key": key.to_base64()})
                for key_id, key in unpublished.items()
            }
        fallback = self.account.fallback_key  # type: ignore[attr-defined]  # missing from the stubs
        if self.fallback_needed and not fallback:
            self.account.generate_fallback_key()  # type: ignore[attr-defined]
            self._changes.account = True
            fallback = self.account.fallback_key  # type: ignore[attr-defined]  # missing from the stubs
        if fallback:
            body["fallback_keys"] = {
                f"{SIGNED_CURVE25519}:{key_id}": self.sign(
                    {"key": key.to_base64(), "fallback": True}
                )
                for key_id, key in fallback.items()
            }
        return body or None

    def keys_uploaded(self, response: dict[str, Any]) -> None:
        """The server accepted the body `keys_to_upload` gave."""
        self.account.mark_keys_as_published()
        self.device_keys_uploaded = True
        self.fallback_needed = False
        counts = response.get("one_time_key_counts")
        if isinstance(counts, dict) and isinstance(counts.get(SIGNED_CURVE25519), int):
            self.server_otk_count = counts[SIGNED_CURVE25519]
        else:
            self.server_otk_count = 0
        self._changes.account = self._changes.meta = True

    def needs_upload(self) -> bool:
        return (
            not self.device_keys_uploaded
            or self.fallback_needed
            or (self.server_otk_count is not None and self.server_otk_count < self.otk_target())
        )

    # ---- what /sync says --------------------------------------------------------------

    def receive_sync_counts(
        self, otk_counts: dict[str, Any] | None, unused_fallback: list[str] | None
    ) -> None:
        # Servers leave the section out of a sync in which it did not change: an absent
        # count keeps the last one (taking it for zero would upload 25 keys every sync).
        if isinstance(otk_counts, dict):
            count = otk_counts.get(SIGNED_CURVE25519, 0)
            self.server_otk_count = count if isinstance(count, int) else 0
        if unused_fallback is not None and SIGNED_CURVE25519 not in unused_fallback:
            if not self.fallback_needed:
                self.fallback_needed = True
                self._changes.meta = True

    def receive_device_list_changes(self, changed: Iterable[str], left: Iterable[str]) -> None:
        self._share_epoch += 1
        for user in changed:
            if user in self.tracked and user not in self.outdated:
                self.outdated.add(user)
                self._changes.meta = True
        for user in left:
            if user in self.tracked and user != self.user_id:
                self.tracked.discard(user)
                self.outdated.discard(user)
                self.devices.pop(user, None)
                self._changes.meta = True

    def track_users(self, users: Iterable[str]) -> None:
        """Start following these users' device lists (members of encrypted rooms, and us)."""
        for user in users:
            if user not in self.tracked:
                self._share_epoch += 1
                self.tracked.add(user)
                self.outdated.add(user)
                self._changes.meta = True

    def users_to_query(self) -> list[str]:
        return sorted(self.outdated)

    def receive_keys_query(self, users: Iterable[str], response: dict[str, Any]) -> None:
        """Take the devices `/keys/query` gave for `users`. A device is kept only when its
        keys are signed by its own Ed25519 key and name the right user and device; a device
        that comes back with a different Ed25519 key than before is refused (TOFU)."""
        self._share_epoch += 1
        device_keys = response.get("device_keys")
        if not isinstance(device_keys, dict):
            return
        failures = response.get("failures") or {}
        users = sorted(set(users), key=lambda u: u != self.user_id)  # ours first: our USK
        # `failures` is keyed by server name: that server's users were not answered.
        failed = {u for u in users if u.partition(":")[2] in failures}
        for user in users:
            if user not in failed:
                self._receive_cross_signing(user, response)
        for user in users:
            answer = device_keys.get(user)
            if not isinstance(answer, dict):
                continue
            known = self.devices.get(user, {})
            fresh: dict[str, Device] = {}
            self_signing = self.cross_signing.get(user, {}).get(SELF_SIGNING)
            for device_id, keys in answer.items():
                device = self._check_device(user, device_id, keys)
                if device is None:
                    continue
                device.cross_signed = self_signing is not None and verify_json(
                    keys, user, f"ed25519:{self_signing}", self_signing
                )
                old = known.get(device_id)
                if old is not None:
                    if old.ed25519 != device.ed25519:
                        continue  # a changed identity for the same device ID: not trusted
                    device.verified, device.blocked = old.verified, old.blocked
                fresh[device_id] = device
            self.devices[user] = fresh
            if user not in failed:
                self.outdated.discard(user)
            self._changes.meta = True

    def _receive_cross_signing(self, user: str, response: dict[str, Any]) -> None:
        """Take a user's cross-signing keys from a /keys/query answer: the master key, and
        the self-signing (and for us the user-signing) key only when the master signed it.
        A master key other than the first one seen is a changed identity (user_trust)."""

        def section(name: str) -> Any:
            part = response.get(name)
            return part.get(user) if isinstance(part, dict) else None

        master_obj = section("master_keys")
        master = public_key_of(master_obj, user, MASTER)
        if master is None:
            if self.cross_signing.pop(user, None) is not None:
                self._changes.meta = True
            return
        keys = {MASTER: master}
        for usage, name in (
            (SELF_SIGNING, "self_signing_keys"),
            (USER_SIGNING, "user_signing_keys"),
        ):
            obj = section(name)
            public = public_key_of(obj, user, usage)
            if public is not None and verify_json(obj, user, f"ed25519:{master}", master):
                keys[usage] = public
        if self.cross_signing.get(user) != keys:
            self.cross_signing[user] = keys
            self._changes.meta = True
        self.master_objects[user] = master_obj
        if user not in self.pinned_masters:
            self.pinned_masters[user] = master
            self._changes.meta = True
        # A master key our (trusted) user-signing key signed was verified by one of our
        # devices: trusted here too.
        our_usk = self._trusted_user_signing_key()
        if (
            user != self.user_id
            and our_usk is not None
            and self.verified_masters.get(user) != master
            and self.pinned_masters.get(user) == master
            and verify_json(master_obj, self.user_id, f"ed25519:{our_usk}", our_usk)
        ):
            self.verified_masters[user] = master
            self._changes.meta = True

    def _trusted_user_signing_key(self) -> str | None:
        """Our user-signing public key, if our master key is trusted and signed it."""
        ours = self.cross_signing.get(self.user_id, {})
        if self.own_master is None or ours.get(MASTER) != self.own_master:
            return None
        return ours.get(USER_SIGNING)

    def user_trust(self, user: str) -> str:
        """ "verified", "unverified", or "changed" (the user's master key is not the one
        first seen here: their identity changed, or the server swapped it)."""
        master = self.cross_signing.get(user, {}).get(MASTER)
        if master is None:
            return "unverified"
        if self.pinned_masters.get(user, master) != master:
            return "changed"
        if user == self.user_id:
            return "verified" if self.own_master == master else "unverified"
        return "verified" if self.verified_masters.get(user) == master else "unverified"

    def verify_master(self, user: str, master: str) -> bool:
        """The user's master key `master` was verified (its MAC checked in a SAS): trust it,
        and accept it as their identity from now on. False if it is not their current key."""
        if self.cross_signing.get(user, {}).get(MASTER) != master:
            return False
        self.pinned_masters[user] = master
        if user == self.user_id:
            self.own_master = master
        else:
            self.verified_masters[user] = master
        self._share_epoch += 1
        self._changes.meta = True
        return True

    def device_trusted(self, device: Device) -> bool:
        """Verified here, or cross-signed by an owner whose identity we trust."""
        if device.blocked:
            return False
        if device.verified:
            return True
        return device.cross_signed and self.user_trust(device.user_id) == "verified"

    def _check_device(self, user: str, device_id: str, keys: Any) -> Device | None:
        if not isinstance(keys, dict):
            return None
        if keys.get("user_id") != user or keys.get("device_id") != device_id:
            return None
        key_map = keys.get("keys")
        if not isinstance(key_map, dict):
            return None
        curve = key_map.get(f"curve25519:{device_id}")
        ed = key_map.get(f"ed25519:{device_id}")
        if not isinstance(curve, str) or not isinstance(ed, str):
            return None
        if not verify_json(keys, user, f"ed25519:{device_id}", ed):
            return None
        if user == self.user_id and device_id == self.device_id and ed != self.ed25519:
            return None
        algorithms = keys.get("algorithms")
        unsigned = keys.get("unsigned")
        name = unsigned.get("device_display_name") if isinstance(unsigned, dict) else None
        return Device(
            user,
            device_id,
            curve,
            ed,
            [a for a in algorithms if isinstance(a, str)] if isinstance(algorithms, list) else [],
            name if isinstance(name, str) else None,
        )

    def device_by_curve(self, user: str, curve25519: str) -> Device | None:
        for device in self.devices.get(user, {}).values():
            if device.curve25519 == curve25519:
                return device
        return None

    def set_verified(self, user: str, device_id: str, verified: bool = True) -> None:
        device = self.devices.get(user, {}).get(device_id)
        if device is None:
            raise KeyError(f"unknown device {user} {device_id}")
        device.verified = verified
        self._share_epoch += 1
        self._changes.meta = True

    # ---- Olm ---------------------------------------------------------------------------

    def _recipient_devices(self, users: Iterable[str]) -> list[Device]:
        out = []
        for user in sorted(set(users)):
            for device in self.devices.get(user, {}).values():
                if user == self.user_id and device.device_id == self.device_id:
                    continue
                if device.blocked:
                    continue
                out.append(device)
        return out

    def missing_olm_sessions(self, users: Iterable[str]) -> dict[str, dict[str, str]]:
        """The `one_time_keys` of a `/keys/claim` for the devices of `users` that we have no
        Olm session with (devices whose last claim came back empty are left alone a while)."""
        now = self.clock()
        claims: dict[str, dict[str, str]] = {}
        for device in self._recipient_devices(users):
            if device.curve25519 in self.olm_sessions:
                continue
            failed = self.failed_claims.get(f"{device.user_id}|{device.device_id}")
            if failed is not None and now - failed < CLAIM_RETRY_MS:
                continue
            claims.setdefault(device.user_id, {})[device.device_id] = SIGNED_CURVE25519
        return claims

    def receive_keys_claim(
        self, requested: dict[str, dict[str, str]], response: dict[str, Any]
    ) -> None:
        """Start an Olm session with every device whose claimed key carries the device's
        signature."""
        self._share_epoch += 1
        now = self.clock()
        answer = response.get("one_time_keys")
        answer = answer if isinstance(answer, dict) else {}
        for user, device_ids in requested.items():
            for device_id in device_ids:
                device = self.devices.get(user, {}).get(device_id)
                keys = answer.get(user, {}) if isinstance(answer.get(user), dict) else {}
                claimed = keys.get(device_id) if isinstance(keys, dict) else None
                started = False
                if device is not None and isinstance(claimed, dict):
                    for key_obj in claimed.values():
                        if not isinstance(key_obj, dict) or not isinstance(key_obj.get("key"), str):
                            continue
                        if not verify_json(key_obj, user, f"ed25519:{device_id}", device.ed25519):
                            continue
                        try:
                            session = self.account.create_outbound_session(
                                vodozemac.Curve25519PublicKey.from_base64(device.curve25519),
                                vodozemac.Curve25519PublicKey.from_base64(key_obj["key"]),
                            )
                        except (ValueError, vodozemac.KeyException):
                            continue
                        self._add_olm_session(OlmSession(session, device.curve25519, now))
                        started = True
                        break
                if not started:
                    self.failed_claims[f"{user}|{device_id}"] = now
                    self._changes.meta = True

    def _add_olm_session(self, entry: OlmSession) -> None:
        self._share_epoch += 1
        sessions = self.olm_sessions.setdefault(entry.sender_key, [])
        sessions.insert(0, entry)
        del sessions[MAX_OLM_SESSIONS_PER_KEY:]
        self._changes.olm_sessions.append(entry)
        self._changes.account = True

    def encrypt_olm(
        self, device: Device, event_type: str, content: dict[str, Any]
    ) -> dict[str, Any]:
        """An `m.room.encrypted` to-device content for one device we have a session with."""
        sessions = self.olm_sessions.get(device.curve25519)
        if not sessions:
            raise KeyError(f"no Olm session with {device.user_id} {device.device_id}")
        entry = max(sessions, key=lambda s: s.last_used_ms)
        payload = {
            "type": event_type,
            "content": content,
            "sender": self.user_id,
            "sender_device": self.device_id,
            "recipient": device.user_id,
            "recipient_keys": {"ed25519": device.ed25519},
            "keys": {"ed25519": self.ed25519},
        }
        message_type, ciphertext = entry.session.encrypt(canonical_json(payload)).to_parts()
        self._changes.olm_sessions.append(entry)
        return {
            "algorithm": OLM,
            "sender_key": self.curve25519,
            "ciphertext": {
                device.curve25519: {"type": int(message_type), "body": b64encode(ciphertext)}
            },
        }

    def decrypt_olm(self, event: dict[str, Any]) -> Decrypted:
        """Decrypt an Olm `m.room.encrypted` to-device event and apply the spec's checks."""
        sender = event.get("sender")
        content = event.get("content")
        if not isinstance(sender, str) or not isinstance(content, dict):
            raise DecryptionError("bad_event", "to-device event without sender or content")
        if content.get("algorithm") != OLM:
            raise DecryptionError("bad_algorithm", f"not {OLM}")
        sender_key = content.get("sender_key")
        ciphertexts = content.get("ciphertext")
        if not isinstance(sender_key, str) or not isinstance(ciphertexts, dict):
            raise DecryptionError("bad_event", "missing sender_key or ciphertext")
        mine = ciphertexts.get(self.curve25519)
        if not isinstance(mine, dict):
            raise DecryptionError("not_for_us", "no ciphertext for this device")
        message_type, body = mine.get("type"), mine.get("body")
        if message_type not in (0, 1) or not isinstance(body, str):
            raise DecryptionError("bad_event", "bad ciphertext type or body")
        try:
            raw = b64decode(body)
            message = vodozemac.AnyOlmMessage.from_parts(message_type, raw)
            sender_curve = vodozemac.Curve25519PublicKey.from_base64(sender_key)
        except (ValueError, vodozemac.DecodeException, vodozemac.KeyException) as e:
            raise DecryptionError("bad_event", f"undecodable Olm message: {e}") from e
        plaintext = self._olm_plaintext(sender_key, sender_curve, message_type, message)
        try:
            payload = json.loads(plaintext)
        except ValueError as e:
            raise DecryptionError("bad_payload", "Olm plaintext is not JSON") from e
        if not isinstance(payload, dict):
            raise DecryptionError("bad_payload", "Olm plaintext is not an object")
        if payload.get("sender") != sender:
            raise DecryptionError("bad_payload", "sender in the payload is not the event's")
        if payload.get("recipient") != self.user_id:
            raise DecryptionError("bad_payload", "recipient is not us")
        recipient_keys = payload.get("recipient_keys")
        if not isinstance(recipient_keys, dict) or recipient_keys.get("ed25519") != self.ed25519:
            raise DecryptionError("bad_payload", "recipient_keys is not our Ed25519 key")
        keys = payload.get("keys")
        claimed_ed = keys.get("ed25519") if isinstance(keys, dict) else None
        if not isinstance(claimed_ed, str):
            raise DecryptionError("bad_payload", "no sender Ed25519 key in the payload")
        device = self.device_by_curve(sender, sender_key)
        if device is not None and device.ed25519 != claimed_ed:
            raise DecryptionError("bad_payload", "sender's Ed25519 key does not match its device")
        inner_type, inner_content = payload.get("type"), payload.get("content")
        if not isinstance(inner_type, str) or not isinstance(inner_content, dict):
            raise DecryptionError("bad_payload", "payload without type or content")
        return Decrypted(
            inner_type,
            inner_content,
            sender,
            sender_key,
            device.device_id if device else None,
            bool(device and self.device_trusted(device)),
            ed25519=claimed_ed,
        )

    def _olm_plaintext(
        self,
        sender_key: str,
        sender_curve: vodozemac.Curve25519PublicKey,
        message_type: int,
        message: vodozemac.AnyOlmMessage,
    ) -> bytes:
        now = self.clock()
        sessions = self.olm_sessions.get(sender_key, [])
        pre_key = message.to_pre_key() if message_type == 0 else None
        for entry in sessions:
            if pre_key is not None and not entry.session.session_matches(pre_key):
                continue
            try:
                plaintext = entry.session.decrypt(message)
            except vodozemac.OlmDecryptionException:
                if pre_key is not None:
                    raise DecryptionError("olm", "matching session failed to decrypt") from None
                continue
            entry.last_used_ms = now
            self._changes.olm_sessions.append(entry)
            return bytes(plaintext)
        if pre_key is None:
            raise DecryptionError("olm", "no Olm session decrypts this message")
        try:
            session, plaintext = self.account.create_inbound_session(sender_curve, pre_key)
        except (vodozemac.SessionCreationException, ValueError) as e:
            raise DecryptionError("olm", f"cannot start an inbound session: {e}") from e
        # Only now is the one-time key used up (the account forgot it) and the session kept.
        self._add_olm_session(OlmSession(session, sender_key, now))
        if self.server_otk_count is not None and self.server_otk_count > 0:
            self.server_otk_count -= 1
        return bytes(plaintext)

    def receive_to_device(self, event: dict[str, Any]) -> Decrypted | None:
        """Handle one to-device event. Encrypted ones are decrypted; room keys are installed
        here. Returns the decrypted event for the client (None for plain events the machine
        has no business with); raises DecryptionError for bad encrypted events."""
        if event.get("type") != "m.room.encrypted":
            return None
        decrypted = self.decrypt_olm(event)
        if decrypted.type == "m.room_key":
            self._receive_room_key(decrypted)
        elif decrypted.type == "m.forwarded_room_key":
            self.receive_forwarded_key(decrypted)
        return decrypted

    def _receive_room_key(self, decrypted: Decrypted) -> None:
        content = decrypted.content
        room_id, session_key = content.get("room_id"), content.get("session_key")
        if content.get("algorithm") != MEGOLM:
            return
        if not isinstance(room_id, str) or not isinstance(session_key, str):
            raise DecryptionError("bad_payload", "m.room_key without room_id or session_key")
        try:
            session = vodozemac.InboundGroupSession(vodozemac.SessionKey(session_key))
        except (ValueError, vodozemac.SessionKeyDecodeException) as e:
            raise DecryptionError("bad_payload", f"bad session_key: {e}") from e
        if content.get("session_id") != session.session_id:
            raise DecryptionError("bad_payload", "session_id does not match the session key")
        # The Ed25519 key was checked against the device in decrypt_olm when it is known.
        claimed_ed = decrypted.ed25519
        key = (room_id, str(session.session_id))
        existing = self.inbound.get(key)
        if existing is not None:
            if existing.sender_key != decrypted.sender_key or existing.sender != decrypted.sender:
                return  # a session ID already owned by another device: ignore the impostor
            if existing.session.first_known_index <= session.first_known_index:
                return
        entry = InboundGroupSession(
            room_id, session, decrypted.sender, decrypted.sender_key, claimed_ed
        )
        self.inbound[key] = entry
        self._changes.inbound.append(entry)

    def import_inbound(
        self, room_id: str, exported_key: str, sender_key: str, signing_key: str
    ) -> bool:
        """Add a Megolm session from a key backup (or an export). Its sender is unknown: the
        key did not come over an Olm channel, so its messages never count as verified. An
        existing session that knows earlier messages is kept. True if it was added."""
        try:
            session = vodozemac.InboundGroupSession.import_session(
                vodozemac.ExportedSessionKey(exported_key)
            )
        except (ValueError, vodozemac.SessionKeyDecodeException) as e:
            raise DecryptionError("bad_payload", f"bad exported session key: {e}") from e
        key = (room_id, str(session.session_id))
        existing = self.inbound.get(key)
        if existing is not None and existing.session.first_known_index <= session.first_known_index:
            return False
        entry = InboundGroupSession(room_id, session, "", sender_key, signing_key)
        if existing is not None:
            entry.sender, entry.seen = existing.sender, existing.seen
        self.inbound[key] = entry
        self._changes.inbound.append(entry)
        return True

    # ---- key requests, forwarded keys, withheld notices ----------------------------------

    def key_request(self, room_id: str, session_id: str, request_id: str) -> dict[str, Any]:
        """An `m.room_key_request` for a session we lack (sent to our own devices)."""
        return {
            "action": "request",
            "body": {"algorithm": MEGOLM, "room_id": room_id, "session_id": session_id},
            "request_id": request_id,
            "requesting_device_id": self.device_id,
        }

    def answer_key_request(
        self, sender: str, content: dict[str, Any]
    ) -> tuple[Device, dict[str, Any]] | None:
        """The `m.forwarded_room_key` to send (Olm-encrypted) to the device asking, or None:
        only our own *verified* other devices get keys, and only keys we hold."""
        if sender != self.user_id or content.get("action") != "request":
            return None
        device_id = content.get("requesting_device_id")
        body = content.get("body")
        if not isinstance(device_id, str) or device_id == self.device_id:
            return None
        device = self.devices.get(self.user_id, {}).get(device_id)
        if device is None or not self.device_trusted(device):
            return None
        if not isinstance(body, dict) or body.get("algorithm") != MEGOLM:
            return None
        room_id, session_id = body.get("room_id"), body.get("session_id")
        entry = self.inbound.get((str(room_id), str(session_id)))
        if entry is None:
            return None
        exported = entry.session.export_at(entry.session.first_known_index)
        if exported is None:
            return None
        return device, {
            "algorithm": MEGOLM,
            "room_id": entry.room_id,
            "sender_key": entry.sender_key,
            "session_id": entry.session_id,
            "session_key": exported.to_base64(),
            "sender_claimed_ed25519_key": entry.signing_key,
            "forwarding_curve25519_key_chain": [],
        }

    def receive_forwarded_key(self, decrypted: Decrypted) -> bool:
        """Take an `m.forwarded_room_key` — only from our own verified devices (the spec's
        advice). True if a session was added."""
        if decrypted.sender != self.user_id:
            return False
        device = self.device_by_curve(self.user_id, decrypted.sender_key)
        if device is None or not self.device_trusted(device) or device.ed25519 != decrypted.ed25519:
            return False
        content = decrypted.content
        room_id, key = content.get("room_id"), content.get("session_key")
        if content.get("algorithm") != MEGOLM or not isinstance(room_id, str):
            return False
        if not isinstance(key, str):
            return False
        return self.import_inbound(
            room_id,
            key,
            str(content.get("sender_key", "")),
            str(content.get("sender_claimed_ed25519_key", "")),
        )

    def withheld_notice(
        self, room_id: str, session_id: str, code: str, reason: str
    ) -> dict[str, Any]:
        notice: dict[str, Any] = {
            "algorithm": MEGOLM,
            "sender_key": self.curve25519,
            "from_device": self.device_id,
            "code": code,
            "reason": reason,
        }
        if code != "m.no_olm":
            notice.update({"room_id": room_id, "session_id": session_id})
        return notice

    def receive_withheld(self, sender: str, content: dict[str, Any]) -> None:
        """Remember why a sender will not give us a key (shown instead of the message)."""
        code = content.get("code")
        if not isinstance(code, str):
            return
        session_id = content.get("session_id")
        key = (
            f"{content.get('room_id')}|{session_id}"
            if isinstance(session_id, str)
            else f"{sender}|*"
        )
        self.withheld[key] = f"{code}: {content.get('reason', '')}".strip()

    def withheld_reason(self, room_id: str, session_id: str, sender: str) -> str | None:
        return self.withheld.get(f"{room_id}|{session_id}") or self.withheld.get(f"{sender}|*")

    # ---- Megolm ------------------------------------------------------------------------

    def set_room_encryption(self, room_id: str, content: dict[str, Any]) -> None:
        """An `m.room.encryption` state event was seen. Encryption is never turned off, and
        a later event may not weaken the settings we already follow."""
        settings = RoomEncryption.from_content(content)
        old = self.rooms.get(room_id)
        if old is not None:
            settings = RoomEncryption(
                old.algorithm,
                min(old.rotation_period_ms, settings.rotation_period_ms),
                min(old.rotation_period_msgs, settings.rotation_period_msgs),
            )
            if settings == old:
                return
        self.rooms[room_id] = settings
        self._changes.meta = True

    def is_encrypted(self, room_id: str) -> bool:
        return room_id in self.rooms

    def member_left(self, room_id: str, user: str) -> None:
        """A member left (or was kicked or banned): the next message uses a new session."""
        outbound = self.outbound.get(room_id)
        if outbound is not None and any(u == user for u, _, _ in outbound.shared_with):
            self.discard_outbound(room_id)

    def discard_outbound(self, room_id: str) -> None:
        self._share_epoch += 1
        if self.outbound.pop(room_id, None) is not None:
            self._changes.outbound[room_id] = None

    def _needs_rotation(
        self, outbound: OutboundGroupSession, recipients: set[tuple[str, str, str]]
    ) -> bool:
        settings = self.rooms.get(outbound.room_id, RoomEncryption())
        if outbound.messages >= settings.rotation_period_msgs:
            return True
        if self.clock() - outbound.created_ms >= settings.rotation_period_ms:
            return True
        # A device that had the key is no longer a recipient (left, removed, blocked).
        return not outbound.shared_with <= recipients

    def share_up_to_date(self, room_id: str, members: Iterable[str]) -> bool:
        """Whether the room's current outbound session may encrypt the next message without
        the full per-device check: `note_shared` ran for these members since the last change
        to devices, Olm sessions, trust or sessions, recently, and no rotation is due. The
        fast path of sending; False means: run the whole check (claim, share, withheld)."""
        outbound = self.outbound.get(room_id)
        checked = self._share_checked.get(room_id)
        if outbound is None or checked is None:
            return False
        members = frozenset(members)
        now = self.clock()
        if checked[0] != members or checked[1] != self._share_epoch:
            return False
        if now - checked[2] >= SHARE_RECHECK_MS or not members.isdisjoint(self.outdated):
            return False
        settings = self.rooms.get(room_id, RoomEncryption())
        return (
            outbound.messages < settings.rotation_period_msgs
            and now - outbound.created_ms < settings.rotation_period_ms
        )

    def note_shared(self, room_id: str, members: Iterable[str]) -> None:
        """The room key went to every member device that could get it (see
        share_up_to_date)."""
        self._share_checked[room_id] = (frozenset(members), self._share_epoch, self.clock())

    def share_room_key(self, room_id: str, members: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Make sure the room has a current outbound session and return the to-device
        `m.room.encrypted` messages ({user: {device: content}}) that share its key with
        every member device that lacks it and that we have an Olm session with. Call
        `missing_olm_sessions` / `receive_keys_claim` first. If sending these fails, call
        `discard_outbound(room_id)`."""
        if room_id not in self.rooms:
            raise KeyError(f"{room_id} is not encrypted")
        devices = self._recipient_devices(members)
        recipients = {(d.user_id, d.device_id, d.curve25519) for d in devices}
        outbound = self.outbound.get(room_id)
        if outbound is None or self._needs_rotation(outbound, recipients):
            outbound = self._new_outbound(room_id)
        room_key = {
            "algorithm": MEGOLM,
            "room_id": room_id,
            "session_id": outbound.session_id,
            "session_key": outbound.session.session_key.to_base64(),
        }
        messages: dict[str, dict[str, Any]] = {}
        for device in devices:
            ident = (device.user_id, device.device_id, device.curve25519)
            if ident in outbound.shared_with or device.curve25519 not in self.olm_sessions:
                continue
            messages.setdefault(device.user_id, {})[device.device_id] = self.encrypt_olm(
                device, "m.room_key", room_key
            )
            outbound.shared_with.add(ident)
        if messages:
            self._changes.outbound[room_id] = outbound
        return messages

    def withheld_devices(self, room_id: str, members: Iterable[str]) -> list[Device]:
        """Member devices the current session was not shared with (no Olm session)."""
        outbound = self.outbound.get(room_id)
        shared = outbound.shared_with if outbound else set()
        return [
            d
            for d in self._recipient_devices(members)
            if (d.user_id, d.device_id, d.curve25519) not in shared
        ]

    def _new_outbound(self, room_id: str) -> OutboundGroupSession:
        self._share_epoch += 1
        session = vodozemac.GroupSession()
        outbound = OutboundGroupSession(room_id, session, self.clock())
        self.outbound[room_id] = outbound
        self._changes.outbound[room_id] = outbound
        # Our own inbound copy, so our own messages decrypt when they come back in /sync.
        inbound = InboundGroupSession(
            room_id,
            vodozemac.InboundGroupSession(session.session_key),
            self.user_id,
            self.curve25519,
            self.ed25519,
        )
        self.inbound[(room_id, inbound.session_id)] = inbound
        self._changes.inbound.append(inbound)
        return outbound

    def encrypt_room_event(
        self, room_id: str, event_type: str, content: dict[str, Any]
    ) -> dict[str, Any]:
        """The `m.room.encrypted` content for an event, with the room's current outbound
        session (`share_room_key` must have run since the last rotation)."""
        outbound = self.outbound.get(room_id)
        if outbound is None:
            raise KeyError(f"no outbound session for {room_id}: call share_room_key first")
        plaintext = canonical_json({"type": event_type, "content": content, "room_id": room_id})
        ciphertext = outbound.session.encrypt(plaintext).to_base64()
        outbound.messages += 1
        self._changes.outbound[room_id] = outbound
        return {
            "algorithm": MEGOLM,
            "sender_key": self.curve25519,
            "device_id": self.device_id,
            "session_id": outbound.session_id,
            "ciphertext": ciphertext,
        }

    def decrypt_room_event(self, room_id: str, event: dict[str, Any]) -> Decrypted:
        """Decrypt a Megolm `m.room.encrypted` room event, refusing replays, sessions of
        another room and sessions whose key came from another user."""
        content = event.get("content")
        sender = event.get("sender")
        if not isinstance(content, dict) or not isinstance(sender, str):
            raise DecryptionError("bad_event", "event without content or sender")
        if content.get("algorithm") != MEGOLM:
            raise DecryptionError("bad_algorithm", f"not {MEGOLM}")
        session_id, ciphertext = content.get("session_id"), content.get("ciphertext")
        if not isinstance(session_id, str) or not isinstance(ciphertext, str):
            raise DecryptionError("bad_event", "missing session_id or ciphertext")
        entry = self.inbound.get((room_id, session_id))
        if entry is None:
            withheld = self.withheld_reason(room_id, session_id, sender)
            if withheld is not None:
                raise DecryptionError("withheld", f"the sender withheld the key ({withheld})")
            raise DecryptionError("unknown_session", f"no key for session {session_id}")
        # An imported session (from a backup) has no known sender ("").
        if entry.sender and entry.sender != sender:
            raise DecryptionError("wrong_sender", "the session belongs to another user")
        try:
            result = entry.session.decrypt(vodozemac.MegolmMessage.from_base64(ciphertext))
        except (ValueError, vodozemac.DecodeException, vodozemac.MegolmDecryptionException) as e:
            raise DecryptionError("megolm", f"cannot decrypt: {e}") from e
        index = int(result.message_index)
        event_id = str(event.get("event_id", ""))
        seen = entry.seen.get(index)
        if seen is not None and seen != event_id:
            raise DecryptionError("replay", f"message index {index} was already used by {seen}")
        if seen is None:
            entry.seen[index] = event_id
            if len(entry.seen) > MAX_SEEN_INDICES:
                entry.seen.pop(next(iter(entry.seen)))
            self._changes.inbound.append(entry)
        try:
            payload = json.loads(result.plaintext)
        except ValueError as e:
            raise DecryptionError("bad_payload", "Megolm plaintext is not JSON") from e
        if not isinstance(payload, dict) or payload.get("room_id") != room_id:
            raise DecryptionError("bad_payload", "the event was encrypted for another room")
        inner_type, inner_content = payload.get("type"), payload.get("content")
        if not isinstance(inner_type, str) or not isinstance(inner_content, dict):
            raise DecryptionError("bad_payload", "payload without type or content")
        device = self.device_by_curve(sender, entry.sender_key)
        return Decrypted(
            inner_type,
            inner_content,
            sender,
            entry.sender_key,
            device.device_id if device else None,
            bool(
                entry.sender
                and device
                and self.device_trusted(device)
                and device.ed25519 == entry.signing_key
            ),
            session_id,
        )

    # ---- persistence -------------------------------------------------------------------

    def drain_changes(self) -> Changes:
        changes, self._changes = self._changes, Changes()
        # De-duplicate (an object may be listed once per change).
        changes.olm_sessions = list({id(s): s for s in changes.olm_sessions}.values())
        changes.inbound = list({id(s): s for s in changes.inbound}.values())
        return changes

    def meta(self) -> dict[str, Any]:
        """The machine's state besides vodozemac objects, as JSON."""
        return {
            "device_keys_uploaded": self.device_keys_uploaded,
            "server_otk_count": self.server_otk_count,
            "fallback_needed": self.fallback_needed,
            "devices": {
                u: {d: dev.to_json() for d, dev in devs.items()} for u, devs in self.devices.items()
            },
            "tracked": sorted(self.tracked),
            "outdated": sorted(self.outdated),
            "rooms": {
                r: [s.algorithm, s.rotation_period_ms, s.rotation_period_msgs]
                for r, s in self.rooms.items()
            },
            "failed_claims": self.failed_claims,
            "cross_signing": self.cross_signing,
            "pinned_masters": self.pinned_masters,
            "verified_masters": self.verified_masters,
            "own_master": self.own_master,
        }

    def load_meta(self, meta: dict[str, Any]) -> None:
        self.device_keys_uploaded = bool(meta.get("device_keys_uploaded"))
        self.server_otk_count = meta.get("server_otk_count")
        self.fallback_needed = bool(meta.get("fallback_needed", True))
        self.devices = {
            u: {d: Device.from_json(dev) for d, dev in devs.items()}
            for u, devs in meta.get("devices", {}).items()
        }
        self.tracked = set(meta.get("tracked", []))
        self.outdated = set(meta.get("outdated", []))
        self.rooms = {r: RoomEncryption(*s) for r, s in meta.get("rooms", {}).items()}
        self.failed_claims = dict(meta.get("failed_claims", {}))
        self.cross_signing = dict(meta.get("cross_signing", {}))
        self.pinned_masters = dict(meta.get("pinned_masters", {}))
        self.verified_masters = dict(meta.get("verified_masters", {}))
        self.own_master = meta.get("own_master")

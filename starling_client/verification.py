"""Interactive device verification by short authentication string (SAS, `m.sas.v1`), as a
state machine without I/O: it takes the verification events the other device sent and
returns the ones to send back. The client routes `m.key.verification.*` to-device events to
it and marks the device verified when both MACs check out.

What is supported: `curve25519-hkdf-sha256` key agreement, `sha256` commitments, the
`hkdf-hmac-sha256.v2` MAC (and the deprecated `hkdf-hmac-sha256` when the other side offers
nothing else), emoji and decimal strings. The legacy `curve25519` key agreement is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any, NoReturn

import vodozemac

from starling_client.encoding import b64encode, canonical_json

SAS_V1 = "m.sas.v1"
KEY_AGREEMENT = "curve25519-hkdf-sha256"
HASH = "sha256"
MAC_V2 = "hkdf-hmac-sha256.v2"
MAC_V1 = "hkdf-hmac-sha256"
SAS_METHODS = ("decimal", "emoji")

# The spec's table (data-definitions/sas-emoji.json): emoji and English description.
SAS_EMOJI: tuple[tuple[str, str], ...] = (
    ("🐶", "Dog"),
    ("🐱", "Cat"),
    ("🦁", "Lion"),
    ("🐎", "Horse"),
    ("🦄", "Unicorn"),
    ("🐷", "Pig"),
    ("🐘", "Elephant"),
    ("🐰", "Rabbit"),
    ("🐼", "Panda"),
    ("🐓", "Rooster"),
    ("🐧", "Penguin"),
    ("🐢", "Turtle"),
    ("🐟", "Fish"),
    ("🐙", "Octopus"),
    ("🦋", "Butterfly"),
    ("🌷", "Flower"),
    ("🌳", "Tree"),
    ("🌵", "Cactus"),
    ("🍄", "Mushroom"),
    ("🌏", "Globe"),
    ("🌙", "Moon"),
    ("☁️", "Cloud"),
    ("🔥", "Fire"),
    ("🍌", "Banana"),
    ("🍎", "Apple"),
    ("🍓", "Strawberry"),
    ("🌽", "Corn"),
    ("🍕", "Pizza"),
    ("🎂", "Cake"),
    ("❤️", "Heart"),
    ("😀", "Smiley"),
    ("🤖", "Robot"),
    ("🎩", "Hat"),
    ("👓", "Glasses"),
    ("🔧", "Spanner"),
    ("🎅", "Santa"),
    ("👍", "Thumbs Up"),
    ("☂️", "Umbrella"),
    ("⌛", "Hourglass"),
    ("⏰", "Clock"),
    ("🎁", "Gift"),
    ("💡", "Light Bulb"),
    ("📕", "Book"),
    ("✏️", "Pencil"),
    ("📎", "Paperclip"),
    ("✂️", "Scissors"),
    ("🔒", "Lock"),
    ("🔑", "Key"),
    ("🔨", "Hammer"),
    ("☎️", "Telephone"),
    ("🏁", "Flag"),
    ("🚂", "Train"),
    ("🚲", "Bicycle"),
    ("✈️", "Aeroplane"),
    ("🚀", "Rocket"),
    ("🏆", "Trophy"),
    ("⚽", "Ball"),
    ("🎸", "Guitar"),
    ("🎺", "Trumpet"),
    ("🔔", "Bell"),
    ("⚓", "Anchor"),
    ("🎧", "Headphones"),
    ("📁", "Folder"),
    ("📌", "Pin"),
)

Outgoing = tuple[str, dict[str, Any]]  # (event type, content) for the other device


class VerificationError(Exception):
    pass


@dataclass
class Sas:
    """One verification between our device and one other device."""

    own_user: str
    own_device: str
    own_ed25519: str
    their_user: str
    their_device: str
    their_ed25519: str
    transaction_id: str
    we_started: bool
    state: str = "created"  # created → started → accepted → keys → confirmed → done | cancelled
    cancel_code: str | None = None
    cancel_reason: str | None = None
    verified: bool = False
    mac_method: str = MAC_V2
    sas_methods: tuple[str, ...] = SAS_METHODS
    start_content: dict[str, Any] = field(default_factory=dict)
    commitment: str | None = None
    their_key: str | None = None
    their_mac: dict[str, Any] | None = None
    we_confirmed: bool = False
    done_received: bool = False
    # Cross-signing master keys: ours is sent in our MAC; theirs (as /keys/query gave it)
    # is checked against their MAC, and `master_verified` says it checked out.
    own_master: str | None = None
    their_master: str | None = None
    master_verified: bool = False
    _sas: vodozemac.Sas = field(default_factory=vodozemac.Sas)
    _established: vodozemac.EstablishedSas | None = None

    # ---- starting ---------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        own_user: str,
        own_device: str,
        own_ed25519: str,
        their_user: str,
        their_device: str,
        their_ed25519: str,
        transaction_id: str | None = None,
    ) -> tuple[Sas, Outgoing]:
        """We begin: the `m.key.verification.start` to send."""
        sas = cls(
            own_user,
            own_device,
            own_ed25519,
            their_user,
            their_device,
            their_ed25519,
            transaction_id or secrets.token_urlsafe(16),
            True,
        )
        sas.start_content = {
            "from_device": own_device,
            "method": SAS_V1,
            "transaction_id": sas.transaction_id,
            "key_agreement_protocols": [KEY_AGREEMENT],
            "hashes": [HASH],
            "message_authentication_codes": [MAC_V2, MAC_V1],
            "short_authentication_string": list(SAS_METHODS),
        }
        sas.state = "started"
        return sas, ("m.key.verification.start", sas.start_content)

    @classmethod
    def from_start(
        cls,
        own_user: str,
        own_device: str,
        own_ed25519: str,
        their_user: str,
        their_ed25519: str,
        content: dict[str, Any],
    ) -> Sas:
        """The other device began; `accept()` answers it (a Sas in state `cancelled` says
        the offer was unusable, and `cancellation()` says so to the other side)."""
        sas = cls(
            own_user,
            own_device,
            own_ed25519,
            their_user,
            str(content.get("from_device", "")),
            their_ed25519,
            str(content.get("transaction_id", "")),
            False,
        )
        sas.start_content = content
        sas.state = "started"

        def offered(key: str) -> list[str]:
            value = content.get(key)
            return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []

        macs = offered("message_authentication_codes")
        strings = tuple(m for m in SAS_METHODS if m in offered("short_authentication_string"))
        if (
            content.get("method") != SAS_V1
            or KEY_AGREEMENT not in offered("key_agreement_protocols")
            or HASH not in offered("hashes")
            or not (MAC_V2 in macs or MAC_V1 in macs)
            or not strings
        ):
            sas.state = "cancelled"
            sas.cancel_code, sas.cancel_reason = "m.unknown_method", "no method both sides support"
        sas.mac_method = MAC_V2 if MAC_V2 in macs else MAC_V1
        sas.sas_methods = strings
        return sas

    def accept(self) -> Outgoing:
        """Our `m.key.verification.accept` (we did not start), with the commitment."""
        self._expect(not self.we_started and self.state == "started", "accept")
        commitment = hashlib.sha256(
            self._sas.public_key.to_base64().encode() + canonical_json(self.start_content)
        ).digest()
        self.state = "accepted"
        return (
            "m.key.verification.accept",
            {
                "transaction_id": self.transaction_id,
                "method": SAS_V1,
                "key_agreement_protocol": KEY_AGREEMENT,
                "hash": HASH,
                "message_authentication_code": self.mac_method,
                "short_authentication_string": list(self.sas_methods),
                "commitment": b64encode(commitment),
            },
        )

    # ---- the exchange -----------------------------------------------------------------

    def receive(self, event_type: str, content: dict[str, Any]) -> list[Outgoing]:
        """Take one event of this transaction from the other device; what to send back."""
        if self.state in ("cancelled", "done") and event_type != "m.key.verification.done":
            return []
        try:
            if event_type == "m.key.verification.cancel":
                self.state = "cancelled"
                self.cancel_code = str(content.get("code", "m.user"))
                self.cancel_reason = str(content.get("reason", ""))
                return []
            if event_type == "m.key.verification.accept":
                return self._on_accept(content)
            if event_type == "m.key.verification.key":
                return self._on_key(content)
            if event_type == "m.key.verification.mac":
                return self._on_mac(content)
            if event_type == "m.key.verification.done":
                self.done_received = True
                return []
        except VerificationError:
            return [self.cancellation()]
        return []

    def _on_accept(self, content: dict[str, Any]) -> list[Outgoing]:
        self._expect(self.we_started and self.state == "started", "accept")
        mac = content.get("message_authentication_code")
        strings = content.get("short_authentication_string")
        if (
            content.get("key_agreement_protocol") != KEY_AGREEMENT
            or content.get("hash") != HASH
            or mac not in (MAC_V2, MAC_V1)
            or not isinstance(strings, list)
            or not any(s in SAS_METHODS for s in strings)
            or not isinstance(content.get("commitment"), str)
        ):
            self._fail("m.unknown_method", "the accepted methods were not offered")
        self.mac_method = str(mac)
        self.sas_methods = tuple(s for s in SAS_METHODS if s in strings)
        self.commitment = content["commitment"]
        self.state = "accepted"
        return [self._key_message()]

    def _key_message(self) -> Outgoing:
        return (
            "m.key.verification.key",
            {"transaction_id": self.transaction_id, "key": self._sas.public_key.to_base64()},
        )

    def _on_key(self, content: dict[str, Any]) -> list[Outgoing]:
        self._expect(self.state == "accepted" and self.their_key is None, "key")
        key = content.get("key")
        if not isinstance(key, str):
            self._fail("m.invalid_message", "no key")
        if self.we_started:
            digest = hashlib.sha256(key.encode() + canonical_json(self.start_content)).digest()
            # The spec's encoding is unpadded base64; matrix-nio sends hex. Same hash.
            if self.commitment not in (b64encode(digest), digest.hex()):
                self._fail("m.mismatched_commitment", "the key does not match the commitment")
        try:
            self._established = self._sas.diffie_hellman(
                vodozemac.Curve25519PublicKey.from_base64(key)
            )
        except (ValueError, vodozemac.KeyException, vodozemac.SasException):
            self._fail("m.invalid_message", "bad public key")
        self.their_key = key
        self.state = "keys"
        return [] if self.we_started else [self._key_message()]

    def _sas_info(self) -> str:
        ours = f"{self.own_user}|{self.own_device}|{self._sas.public_key.to_base64()}"
        theirs = f"{self.their_user}|{self.their_device}|{self.their_key}"
        first, second = (ours, theirs) if self.we_started else (theirs, ours)
        return f"MATRIX_KEY_VERIFICATION_SAS|{first}|{second}|{self.transaction_id}"

    def emoji(self) -> list[tuple[str, str]]:
        """The seven emoji (with their descriptions) both users compare."""
        if self._established is None:
            raise VerificationError("the keys have not been exchanged yet")
        indices = self._established.bytes(self._sas_info()).emoji_indices
        return [SAS_EMOJI[i] for i in indices]

    def decimals(self) -> tuple[int, int, int]:
        if self._established is None:
            raise VerificationError("the keys have not been exchanged yet")
        a, b, c = self._established.bytes(self._sas_info()).decimals
        return (int(a), int(b), int(c))

    def _mac_info(
        self, sender_user: str, sender_device: str, receiver_user: str, receiver_device: str
    ) -> str:
        return (
            f"MATRIX_KEY_VERIFICATION_MAC{sender_user}{sender_device}"
            f"{receiver_user}{receiver_device}{self.transaction_id}"
        )

    def _mac(self, text: str, info: str) -> str:
        assert self._established is not None
        return str(self._established.calculate_mac(text, info))

    def _mac_matches(self, text: str, info: str, mac: Any) -> bool:
        assert self._established is not None
        if not isinstance(mac, str):
            return False
        candidates = [self._established.calculate_mac(text, info)]
        if self.mac_method == MAC_V1:
            candidates.append(self._established.calculate_mac_invalid_base64(text, info))
        return any(hmac.compare_digest(str(c), mac) for c in candidates)

    def confirm(self) -> list[Outgoing]:
        """The user says the emoji match: our MAC (and `done` if theirs already checked)."""
        self._expect(self.state == "keys" and not self.we_confirmed, "confirm")
        self.we_confirmed = True
        info = self._mac_info(self.own_user, self.own_device, self.their_user, self.their_device)
        key_id = f"ed25519:{self.own_device}"
        macs = {key_id: self._mac(self.own_ed25519, info + key_id)}
        if self.own_master:
            master_id = f"ed25519:{self.own_master}"
            macs[master_id] = self._mac(self.own_master, info + master_id)
        out: list[Outgoing] = [
            (
                "m.key.verification.mac",
                {
                    "transaction_id": self.transaction_id,
                    "mac": macs,
                    "keys": self._mac(",".join(sorted(macs)), info + "KEY_IDS"),
                },
            )
        ]
        if self.their_mac is not None:
            try:
                out.extend(self._check_mac())
            except VerificationError:
                out.append(self.cancellation())
        return out

    def mismatch(self) -> Outgoing:
        """The user says the emoji differ."""
        self.state = "cancelled"
        self.cancel_code, self.cancel_reason = "m.mismatched_sas", "the emoji did not match"
        return self.cancellation()

    def _on_mac(self, content: dict[str, Any]) -> list[Outgoing]:
        self._expect(self.state == "keys" and self.their_mac is None, "mac")
        self.their_mac = content
        return self._check_mac() if self.we_confirmed else []

    def _check_mac(self) -> list[Outgoing]:
        content = self.their_mac or {}
        macs = content.get("mac")
        if not isinstance(macs, dict) or not macs:
            self._fail("m.invalid_message", "no MACs")
        info = self._mac_info(self.their_user, self.their_device, self.own_user, self.own_device)
        key_ids = ",".join(sorted(macs))
        if not self._mac_matches(key_ids, info + "KEY_IDS", content.get("keys")):
            self._fail("m.key_mismatch", "the list of keys does not match its MAC")
        device_key = f"ed25519:{self.their_device}"
        if device_key not in macs:
            self._fail("m.key_mismatch", "the device's own key was not sent")
        if not self._mac_matches(self.their_ed25519, info + device_key, macs[device_key]):
            self._fail("m.key_mismatch", "the device key does not match its MAC")
        # Their cross-signing master key, when they sent it and it is the one we know for
        # them; other key IDs are covered by the KEY_IDS MAC and otherwise ignored.
        master_id = f"ed25519:{self.their_master}" if self.their_master else None
        if master_id is not None and master_id in macs:
            if not self._mac_matches(str(self.their_master), info + master_id, macs[master_id]):
                self._fail("m.key_mismatch", "the master key does not match its MAC")
            self.master_verified = True
        self.verified = True
        self.state = "done"
        return [("m.key.verification.done", {"transaction_id": self.transaction_id})]

    # ---- failing ----------------------------------------------------------------------

    def _expect(self, ok: bool, what: str) -> None:
        if not ok:
            self._fail("m.unexpected_message", f"unexpected {what} in state {self.state}")

    def _fail(self, code: str, reason: str) -> NoReturn:
        self.state = "cancelled"
        self.cancel_code, self.cancel_reason = code, reason
        raise VerificationError(f"{code}: {reason}")

    def cancellation(self) -> Outgoing:
        return (
            "m.key.verification.cancel",
            {
                "transaction_id": self.transaction_id,
                "code": self.cancel_code or "m.user",
                "reason": self.cancel_reason or "cancelled",
            },
        )

    def cancel(self, code: str = "m.user", reason: str = "cancelled by the user") -> Outgoing:
        self.state = "cancelled"
        self.cancel_code, self.cancel_reason = code, reason
        return self.cancellation()

"""Noise framing of CoAP datagrams (pure: no sockets).

MSC3079 leaves the secure channel to DTLS; Starling uses the Noise protocol framework
(as matrix-org's coap-proxy did) with the pattern NK: the client knows the server's
static key in advance (published in /_matrix/client/versions over HTTPS), so the
handshake authenticates the server in one round trip and the client stays anonymous
until it sends an access token inside the encrypted channel.

Datagrams (first byte is the kind):

- ``0x01 | NK message 1`` (client → server: ephemeral key, 48 bytes);
- ``0x02 | NK message 2`` (server → client); its encrypted payload is the 4-byte
  session ID the server chose;
- ``0x03 | session ID (4) | counter (low 16 bits, big-endian) | AEAD(CoAP message)``:
  one CoAP message, ChaCha20-Poly1305 under the session's key for that direction, the
  full counter as nonce and the 7-byte header as associated data (so a header cannot be
  swapped). The receiver rebuilds the full counter as the value with those low bits
  nearest to the highest authentic counter + 1 (as DTLS 1.3 and QUIC do with their
  sequence and packet numbers): right unless 32768 datagrams in a row were lost, and a
  wrong guess only fails authentication;
- ``0x04 | session ID (4)``: "no such session" (server → client, unauthenticated: at worst
  a forged one makes the client handshake again).

UDP reorders and drops, so nonces are explicit (their low bits), and replays are refused with a sliding
window over the last 1024 counters (as DTLS and WireGuard do). A session is found by its
ID, not by the sender's address: a client whose address changes (mobile) keeps its
session; the server answers at the address of the last authentic datagram.
"""

from __future__ import annotations

import secrets
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import NoiseInvalidMessage

PROTOCOL = b"Noise_NK_25519_ChaChaPoly_BLAKE2s"
PROLOGUE = b"org.starling.lowbandwidth/1"
HANDSHAKE_INIT = 0x01
HANDSHAKE_RESPONSE = 0x02
DATA = 0x03
UNKNOWN_SESSION = 0x04
HEADER = struct.Struct(">BIH")  # kind, session ID, counter's low 16 bits: 7 bytes
COUNTER_BITS = 16
INIT_LENGTH = 1 + 32 + 16
RESPONSE_LENGTH = 1 + 32 + 4 + 16
TAG_LENGTH = 16
REPLAY_WINDOW = 1024
# 2^32 datagrams per direction, after which the session is spent and the client
# handshakes again (only its low 16 bits travel: 2 bytes fewer on every datagram).
MAX_COUNTER = 2**32 - 1


def full_counter(low: int, highest: int) -> int:
    """The counter whose low COUNTER_BITS are `low`, nearest to `highest` + 1 (RFC 9000
    §A.3's packet-number decoding; RFC 9147 §4.2.2 does the same for DTLS 1.3)."""
    expected = highest + 1
    span = 1 << COUNTER_BITS
    half = span // 2
    candidate = (expected & ~(span - 1)) | low
    if candidate + half <= expected and candidate + span <= MAX_COUNTER:
        return candidate + span
    if candidate > expected + half and candidate >= span:
        return candidate - span
    return candidate


class NoiseError(Exception):
    """A datagram that does not authenticate (tampered, replayed, wrong key...)."""


def generate_private_key() -> bytes:
    """A new X25519 static private key (32 bytes)."""
    return X25519PrivateKey.generate().private_bytes_raw()


def public_key(private_key: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


class ReplayWindow:
    """Counters seen: the highest, and a bitmap of the REPLAY_WINDOW below it."""

    def __init__(self) -> None:
        self.highest = -1
        self.bitmap = 0

    def fresh(self, counter: int) -> bool:
        if counter > self.highest:
            return True
        offset = self.highest - counter
        return offset < REPLAY_WINDOW and not (self.bitmap >> offset) & 1

    def mark(self, counter: int) -> None:
        if counter > self.highest:
            shift = counter - self.highest
            self.bitmap = ((self.bitmap << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self.highest = counter
        else:
            self.bitmap |= 1 << (self.highest - counter)


class SecureChannel:
    """The two directions' ciphers of an established session."""

    def __init__(self, conn: NoiseConnection, session_id: int) -> None:
        self.session_id = session_id
        self._send = conn.noise_protocol.cipher_state_encrypt
        self._receive = conn.noise_protocol.cipher_state_decrypt
        self._counter = 0
        self._window = ReplayWindow()

    def seal(self, plaintext: bytes) -> bytes:
        if self._counter > MAX_COUNTER:
            raise NoiseError("Session exhausted; handshake again")
        header = HEADER.pack(DATA, self.session_id, self._counter & ((1 << COUNTER_BITS) - 1))
        self._send.set_nonce(self._counter)
        self._counter += 1
        return header + bytes(self._send.encrypt_with_ad(header, plaintext))

    def open(self, datagram: bytes) -> bytes:
        """The plaintext of an authentic, fresh datagram; NoiseError otherwise. The
        window only moves for authentic datagrams, so forgeries cannot push it."""
        if len(datagram) < HEADER.size + TAG_LENGTH:
            raise NoiseError("Too short")
        kind, session_id, low = HEADER.unpack_from(datagram)
        if kind != DATA or session_id != self.session_id:
            raise NoiseError("Not a data datagram of this session")
        counter = full_counter(low, self._window.highest)
        if not self._window.fresh(counter):
            raise NoiseError("Replayed")
        self._receive.set_nonce(counter)
        try:
            plaintext = bytes(
                self._receive.decrypt_with_ad(datagram[: HEADER.size], datagram[HEADER.size :])
            )
        except (InvalidTag, NoiseInvalidMessage, ValueError) as e:
            raise NoiseError("Does not authenticate") from e
        self._window.mark(counter)
        return plaintext


def session_id_of(datagram: bytes) -> int | None:
    if len(datagram) >= 5 and datagram[0] in (DATA, UNKNOWN_SESSION):
        return int.from_bytes(datagram[1:5], "big")
    return None


def respond(private_key: bytes, init: bytes) -> tuple[SecureChannel, bytes]:
    """Server side of the handshake: (channel, response datagram); NoiseError if `init`
    is not a valid first message for our key."""
    if len(init) != INIT_LENGTH or init[0] != HANDSHAKE_INIT:
        raise NoiseError("Not a handshake")
    conn = NoiseConnection.from_name(PROTOCOL)
    conn.set_as_responder()
    conn.set_prologue(PROLOGUE)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, private_key)
    conn.start_handshake()
    try:
        conn.read_message(init[1:])
    except Exception as e:  # the library raises several types for bad messages
        raise NoiseError("Bad handshake") from e
    session_id = secrets.randbits(32)
    response = bytes([HANDSHAKE_RESPONSE]) + bytes(conn.write_message(session_id.to_bytes(4)))
    return SecureChannel(conn, session_id), response


class Initiator:
    """Client side of the handshake with a server whose static public key is known."""

    def __init__(self, server_public_key: bytes) -> None:
        self._conn = NoiseConnection.from_name(PROTOCOL)
        self._conn.set_as_initiator()
        self._conn.set_prologue(PROLOGUE)
        self._conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, server_public_key)
        self._conn.start_handshake()
        self.init = bytes([HANDSHAKE_INIT]) + bytes(self._conn.write_message())

    def finish(self, response: bytes) -> SecureChannel:
        if len(response) != RESPONSE_LENGTH or response[0] != HANDSHAKE_RESPONSE:
            raise NoiseError("Not a handshake response")
        try:
            payload = bytes(self._conn.read_message(response[1:]))
        except Exception as e:
            raise NoiseError("Bad handshake response (wrong server key?)") from e
        return SecureChannel(self._conn, int.from_bytes(payload, "big"))

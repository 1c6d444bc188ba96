"""The low-bandwidth listener: MSC3079 CoAP over UDP, every datagram sealed with Noise.

aiocoap does CoAP itself (RFC 7252 messages, confirmable retransmission, duplicate
detection, separate responses for long-polls). Its UDP transport is replaced by
`_NoiseInterface`: each datagram is opened with the session's Noise keys before aiocoap
sees it, and each datagram aiocoap sends is sealed. Each Noise session is one aiocoap
remote, so "the connection" of MSC3079 (sticky access token and CBOR version) is the
session, and it survives the client's address changing.

`_MatrixResource` turns each CoAP request into a Client-Server request (path enums,
Uri-Query, CBOR → JSON, the access-token option 256) and hands it to `dispatch`: the same
in-process dispatch as the WebSocket (starling/api/inprocess.py, injected by app.py),
so routes, guards and rate limits are exactly those of HTTP. Blockwise transfer
(RFC 7959) is done here rather than by aiocoap, so it can be bounded: Block1 request
bodies are reassembled up to `max_body_size`; a large answer is kept (per session, a
few, briefly) so its Block2 blocks all come from one response — a /sync is never
re-run for block 2 (MSC3079 asks this of pushed syncs too).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import orjson
from aiocoap import Code, Context, Message, interfaces
from aiocoap.numbers.constants import MAX_REGULAR_BLOCK_SIZE_EXP
from aiocoap.optiontypes import BlockOption
from aiocoap.resource import Resource
from aiocoap.transports.generic_udp import GenericMessageInterface

from starling.config import LowBandwidthConfig, parse_size
from starling.protocol.lowbandwidth import codec, noise
from starling.protocol.lowbandwidth.coap import (
    NOISE_FEATURE,
    OPTION_ACCESS_TOKEN,
    OPTION_CBOR_VERSION,
    OPTION_DEFLATE,
    SYNC_PATH,
)

logger = logging.getLogger(__name__)


class Dispatch(Protocol):
    """(method, path with query, JSON body, access token, client address) → (status,
    JSON); `acknowledge=False` makes a /sync read without acknowledging its `since`
    (SYNC_NO_ACK: the Observe stream's server-chained polls)."""

    def __call__(
        self,
        method: str,
        path: str,
        body: bytes | None,
        token: str | None,
        remote: str,
        *,
        acknowledge: bool = True,
    ) -> Awaitable[tuple[int, Any]]: ...


SYNC_REFERENCES = 2  # /sync answers kept per session as DEFLATE dictionaries
ROOM_REFERENCES = 64  # resolved room references kept per session (codec.room_reference)
JOINED_ROOMS_PATH = "/_matrix/client/v3/joined_rooms"
MAX_DATAGRAM = 1600  # a 1024-byte block, CoAP options and the Noise header fit
MAX_TOKEN_LENGTH = 1024
ASSEMBLIES_PER_SESSION = 4
ANSWERS_PER_SESSION = 4
HANDSHAKE_BURST = 20
HANDSHAKE_PER_SECOND = 2.0
"""Handshakes per client address (each costs two X25519 operations): a token bucket."""
HANDSHAKE_BUCKETS = 10_000
BUFFER_BUDGET = 64 * 1024 * 1024
"""Bytes held for blockwise transfers (half-received bodies, large answers being read
block by block) across all sessions: per-session caps alone would let 1000 sessions hold
gigabytes. Beyond it a new transfer is answered 5.03 M_LIMIT_EXCEEDED (retry later)."""
BLOCK_TTL_SECONDS = 120.0
OBSERVE_POLL_MS = 60_000
"""The Observe stream's server-side long-polls (no bytes on the wire when nothing moved)."""
OBSERVE_NUMBER_MODULO = 1 << 24  # RFC 7641 §4.4: 24-bit sequence numbers
# Options that do not tell two requests apart for blockwise transfers: Block2, Block1,
# Observe, and the sticky session options (the client sends those once, so a block
# follow-up may omit them).
NOT_IN_CACHE_KEY = [23, 27, 6, OPTION_ACCESS_TOKEN, OPTION_CBOR_VERSION, OPTION_DEFLATE]
METHODS = {Code.GET: "GET", Code.POST: "POST", Code.PUT: "PUT", Code.DELETE: "DELETE"}


def load_or_create_key(path: Path) -> bytes:
    """The server's static Noise private key, created (mode 0600) on first start."""
    if path.exists():
        key = path.read_bytes()
        if len(key) != 32:
            raise ValueError(f"{path}: not a 32-byte X25519 private key")
        return key
    key = noise.generate_private_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def coap_code(status: int, method: str) -> Code:
    """HTTP status → CoAP code (RFC 8075 §7): 2xx success, c.dd for the errors."""
    if 200 <= status < 300:
        return Code.CONTENT if method == "GET" else Code.CHANGED
    cls, detail = divmod(status, 100)
    if cls not in (4, 5):
        cls, detail = 5, 0
    return Code((cls << 5) | (detail if detail < 32 else 0))


@dataclass(eq=False)
class Session(interfaces.EndpointAddress):  # type: ignore[misc]
    """One Noise session, which is one CoAP remote (hashed by identity)."""

    channel: noise.SecureChannel
    address: tuple[str, int]
    endpoint: _NoiseEndpoint
    init_digest: bytes
    handshake_response: bytes
    last_seen: float = field(default_factory=time.monotonic)
    access_token: str | None = None
    cbor_version: int = 0
    deflate: bool = False
    # The last /sync answers sent (CBOR), by their next_batch: the next request's
    # `since` names the one to compress against.
    sync_references: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    in_flight: int = 0
    assemblies: OrderedDict[Any, tuple[float, bytearray]] = field(default_factory=OrderedDict)
    answers: OrderedDict[Any, tuple[float, Message]] = field(default_factory=OrderedDict)
    # The session's /sync Observe registration (at most one: a new one ends it).
    observation: asyncio.Task[Any] | None = None
    block_read: asyncio.Event = field(default_factory=asyncio.Event)  # a Block2 was served
    # Room references (`~...`) this session used, resolved to room IDs (most recent last).
    room_references: OrderedDict[str, str] = field(default_factory=OrderedDict)

    def send(self, data: bytes) -> None:
        self.endpoint.send_sealed(self, data)

    @property
    def ip(self) -> str:
        return self.address[0]

    # aiocoap's EndpointAddress interface
    is_multicast = False
    is_multicast_locally = False
    scheme = "coap"
    maximum_block_size_exp = MAX_REGULAR_BLOCK_SIZE_EXP

    @property
    def hostinfo(self) -> str:
        return f"noise-{self.channel.session_id:08x}"

    @property
    def hostinfo_local(self) -> str:
        return self.endpoint.hostinfo_local

    @property
    def uri_base(self) -> str:
        return f"coap://{self.hostinfo}"

    @property
    def uri_base_local(self) -> str:
        return f"coap://{self.hostinfo_local}"

    @property
    def blockwise_key(self) -> int:
        return id(self)


class _NoiseEndpoint(asyncio.DatagramProtocol):
    """The UDP socket: handshakes, session table, opening and sealing datagrams."""

    def __init__(self, config: LowBandwidthConfig, private_key: bytes) -> None:
        self.config = config
        self.private_key = private_key
        self.sessions: dict[int, Session] = {}
        self.by_init: dict[bytes, Session] = {}
        self.handshake_buckets: dict[str, tuple[float, float]] = {}  # ip → (tokens, time)
        self.transport: asyncio.DatagramTransport | None = None
        self.interface: _NoiseInterface | None = None
        self.hostinfo_local = ""
        # Dropped datagrams by reason (tests and metrics): nothing bad is ever answered
        # with more than a fixed-size handshake reply or a 5-byte "no such session".
        self.dropped: dict[str, int] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport
        host, port = transport.get_extra_info("sockname")[:2]
        self.hostinfo_local = f"{host}:{port}"

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self._received(data, addr)
        except Exception:  # one bad datagram must never stop the listener
            logger.exception("low-bandwidth datagram from %s failed", addr[0])
            self._drop("error")

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data or len(data) > MAX_DATAGRAM:
            self._drop("size")
            return
        if data[0] == noise.HANDSHAKE_INIT:
            self._handshake(data, addr)
            return
        session_id = noise.session_id_of(data)
        if session_id is None or data[0] != noise.DATA:
            self._drop("kind")
            return
        session = self.sessions.get(session_id)
        if session is None:
            self._drop("unknown_session")
            self._sendto(bytes([noise.UNKNOWN_SESSION]) + data[1:5], addr)
            return
        try:
            plaintext = session.channel.open(data)
        except noise.NoiseError as e:
            self._drop("replayed" if str(e) == "Replayed" else "unauthentic")
            return
        session.address = addr  # roaming: answer where the last authentic datagram came from
        session.last_seen = time.monotonic()
        if self.interface is not None:
            self.interface.received(session, plaintext)

    def _handshake(self, data: bytes, addr: tuple[str, int]) -> None:
        digest = hashlib.blake2s(data).digest()
        existing = self.by_init.get(digest)
        if existing is not None:
            # A retransmitted first message: the same answer, not a second session.
            self._sendto(existing.handshake_response, addr)
            return
        if not self._may_handshake(addr[0]):
            self._drop("handshake_rate")
            return
        try:
            channel, response = noise.respond(self.private_key, data)
        except noise.NoiseError:
            self._drop("handshake")
            return
        self._make_room(addr[0])
        session = Session(channel, addr, self, digest, response)
        self.sessions[channel.session_id] = session
        self.by_init[digest] = session
        self._sendto(response, addr)

    def _may_handshake(self, ip: str) -> bool:
        now = time.monotonic()
        if len(self.handshake_buckets) >= HANDSHAKE_BUCKETS and ip not in self.handshake_buckets:
            # Full buckets are forgotten (a full bucket is the default anyway).
            full = [
                k
                for k, (t, at) in self.handshake_buckets.items()
                if t >= HANDSHAKE_BURST or now - at > HANDSHAKE_BURST / HANDSHAKE_PER_SECOND
            ]
            for k in full:
                del self.handshake_buckets[k]
            if len(self.handshake_buckets) >= HANDSHAKE_BUCKETS:
                return False
        tokens, at = self.handshake_buckets.get(ip, (float(HANDSHAKE_BURST), now))
        tokens = min(float(HANDSHAKE_BURST), tokens + (now - at) * HANDSHAKE_PER_SECOND)
        if tokens < 1:
            self.handshake_buckets[ip] = (tokens, now)
            return False
        self.handshake_buckets[ip] = (tokens - 1, now)
        return True

    def _make_room(self, ip: str) -> None:
        """Expire idle sessions; then, if the address or the server is at its cap, drop
        the longest-idle session (of that address first)."""
        now = time.monotonic()
        for session in [
            s
            for s in self.sessions.values()
            if now - s.last_seen > self.config.session_idle_timeout
        ]:
            self.forget(session)
        mine = [s for s in self.sessions.values() if s.ip == ip]
        if len(mine) >= self.config.max_sessions_per_ip:
            self.forget(min(mine, key=lambda s: s.last_seen))
        if len(self.sessions) >= self.config.max_sessions:
            self.forget(min(self.sessions.values(), key=lambda s: s.last_seen))

    def forget(self, session: Session) -> None:
        self.sessions.pop(session.channel.session_id, None)
        self.by_init.pop(session.init_digest, None)
        if session.observation is not None:
            session.observation.cancel()
            session.observation = None

    def _sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)

    def send_sealed(self, session: Session, data: bytes) -> None:
        if self.sessions.get(session.channel.session_id) is not session:
            return  # forgotten: its client will handshake again
        try:
            self._sendto(session.channel.seal(data), session.address)
        except noise.NoiseError:
            self.forget(session)

    def error_received(self, exc: Exception) -> None:
        logger.debug("low-bandwidth socket error: %s", exc)


class _NoiseInterface(GenericMessageInterface):  # type: ignore[misc]
    """aiocoap's message interface over the Noise endpoint (server side)."""

    def __init__(self, mman: Any, endpoint: _NoiseEndpoint) -> None:
        super().__init__(mman, logger, asyncio.get_running_loop())
        self._endpoint = endpoint
        self._pool = self
        endpoint.interface = self

    def received(self, session: Session, plaintext: bytes) -> None:
        self._received_datagram(session, plaintext)

    async def shutdown(self) -> None:  # the pool's shutdown
        self._mman = None
        if self._endpoint.transport is not None:
            self._endpoint.transport.close()

    async def determine_remote(self, request: Message) -> None:
        return None  # the server never starts exchanges

    async def connect(self, sockaddr: Any) -> None:  # pragma: no cover - never called
        raise RuntimeError("The low-bandwidth listener does not open connections")


def _uint(value: Any) -> int:
    """An option's uint value (aiocoap gives unknown options as bytes)."""
    if isinstance(value, int):
        return value
    raw = bytes(value)
    return int.from_bytes(raw, "big") if len(raw) <= 4 else 0


def _error(status: int, errcode: str, message: str) -> tuple[int, dict[str, str]]:
    return status, {"errcode": errcode, "error": message}


def _query(request: Message) -> list[tuple[str, str]]:
    """Uri-Query as (name, value) pairs, a packed `zs` token expanded to `since`."""
    query = []
    for item in request.opt.uri_query:
        name, _, value = item.partition("=")
        if name == codec.PACKED_SINCE:
            name, value = "since", codec.unpack_token(value)
        query.append((name, value))
    return query


def _is_sync(request: Message) -> bool:
    try:
        return codec.expand_path(list(request.opt.uri_path)) == SYNC_PATH
    except codec.CodecError:
        return False


class _MatrixResource(Resource):  # type: ignore[misc]
    def __init__(self, config: LowBandwidthConfig, dispatch: Dispatch) -> None:
        super().__init__()
        self.config = config
        self._dispatch = dispatch
        self.max_body = parse_size(config.max_body_size)

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        return False  # done in render, with bounds

    async def render(self, request: Message) -> Message:
        session = request.remote
        if not isinstance(session, Session):
            return Message(code=Code.FORBIDDEN)
        method = METHODS.get(request.code)
        if method is None:
            return Message(code=Code.METHOD_NOT_ALLOWED)
        key = (request.code, request.get_cache_key(NOT_IN_CACHE_KEY))
        block2 = request.opt.block2
        if block2 is not None and block2.block_number > 0:
            return self._next_block(session, key, block2)
        try:
            body = self._assemble(session, key, request)
        except _Continue as c:
            return c.response
        since: str | None = None
        is_sync = False
        if session.in_flight >= self.config.max_in_flight:
            status, answer = _error(
                429, "M_LIMIT_EXCEEDED", f"At most {self.config.max_in_flight} in flight"
            )
        else:
            session.in_flight += 1
            try:
                status, answer, path = await self._serve(session, method, request, body)
            finally:
                session.in_flight -= 1
            is_sync = method == "GET" and path.split("?", 1)[0] == SYNC_PATH
            with contextlib.suppress(codec.CodecError):  # a bad one was answered 4.00
                since = dict(_query(request)).get("since")
        response = self._response(session, method, status, answer, is_sync, since)
        if request.opt.block1 is not None:
            response.opt.block1 = request.opt.block1
        return self._first_block(session, key, request, response)

    @staticmethod
    def _session_options(session: Session, request: Message) -> tuple[int, Any] | None:
        """Take the sticky options (token 256, CBOR version 257, DEFLATE 65000) into the
        session; an error answer if the token option is malformed."""
        for option in request.opt.get_option(OPTION_ACCESS_TOKEN):
            token = bytes(option.value).decode("utf-8", "replace")
            token = token.removeprefix("Bearer ")
            if not 0 < len(token) <= MAX_TOKEN_LENGTH:
                return _error(400, "M_INVALID_PARAM", "Malformed access token option")
            session.access_token = token  # sticky for the session (MSC3079)
        for option in request.opt.get_option(OPTION_CBOR_VERSION):
            session.cbor_version = _uint(option.value)
        for option in request.opt.get_option(OPTION_DEFLATE):
            session.deflate = _uint(option.value) == 1
        return None

    async def render_to_pipe(self, pipe: Any) -> None:
        """A GET /sync with Observe: 0 is an Observe registration (RFC 7641, MSC3079);
        everything else is one request, one answer (`render`)."""
        request = pipe.request
        block2 = request.opt.block2
        if (
            request.opt.observe == 0
            and request.code == Code.GET
            and isinstance(request.remote, Session)
            and (block2 is None or block2.block_number == 0)
            and request.opt.block1 is None
            and _is_sync(request)
        ):
            await self._observe_sync(pipe, request.remote)
            return
        await super().render_to_pipe(pipe)

    async def _observe_sync(self, pipe: Any, session: Session) -> None:
        """The /sync Observe stream. The first answer is the /sync the request asks for
        (its `since`, filter and `timeout`; it acknowledges `since`, as /sync does).
        Then the server long-polls /sync from the previous answer's `next_batch` and
        pushes each answer that moved the token as a confirmable notification (MSC3079:
        pushed syncs MUST be confirmable; aiocoap sends one at a time per client, so
        they arrive in order). Those chained polls acknowledge nothing (SYNC_NO_ACK):
        a notification may arrive and never be processed, so to-device messages are
        deleted only when the client syncs or registers again from a later `since`.
        A notification too large for one datagram is sent as Block2 block 0; the
        client GETs the other blocks (RFC 7959 §3.4) from that same stored answer, and
        the next notification waits until it has (or BLOCK_TTL_SECONDS). The stream
        ends when the client loses interest (RST, a failed retransmission: aiocoap
        cancels this task), when a newer registration of the session replaces it, or
        with an error answer (e.g. the token was logged out)."""
        request = pipe.request
        refused = self._session_options(session, request)
        if refused is not None:
            pipe.add_response(self._response(session, "GET", *refused), is_last=True)
            return
        if session.observation is not None:
            session.observation.cancel()
        session.observation = asyncio.current_task()
        key = (request.code, request.get_cache_key(NOT_IN_CACHE_KEY))
        try:
            query = _query(request)
        except codec.CodecError as e:
            error = self._response(session, "GET", *_error(400, e.errcode, str(e)))
            pipe.add_response(error, is_last=True)
            return
        since = next((v for n, v in query if n == "since"), None) or None
        timeout = next((v for n, v in query if n == "timeout"), "0")
        rest = [(n, v) for n, v in query if n not in ("since", "timeout")]
        number = 0
        base: bytes | None = None  # the first answer (CBOR): part of every later dictionary
        try:
            while True:
                first = number == 0
                params = [*rest, ("timeout", timeout if first else str(OBSERVE_POLL_MS))]
                if since is not None:
                    params.append(("since", since))
                status, answer = await self._dispatch(
                    "GET",
                    SYNC_PATH + "?" + urlencode(params),
                    None,
                    session.access_token,
                    session.ip,
                    acknowledge=first,
                )
                next_batch = answer.get("next_batch") if isinstance(answer, dict) else None
                if status == 200 and not first and next_batch == since:
                    continue  # nothing new: nothing on the wire
                response = self._first_block(
                    session,
                    key,
                    request,
                    self._response(session, "GET", status, answer, True, since, base),
                )
                if first and status == 200:
                    base = codec.encode(answer, integer_keys=session.cbor_version >= 1)
                    base = base[-codec.WINDOW :]
                if status != 200 or not response.code.is_successful():
                    pipe.add_response(response, is_last=True)
                    return
                response.opt.observe = number % OBSERVE_NUMBER_MODULO
                pipe.add_response(response, is_last=False)
                number += 1
                since = next_batch if isinstance(next_batch, str) else since
                await self._blocks_fetched(session, key)
        finally:
            if session.observation is asyncio.current_task():
                session.observation = None

    @staticmethod
    async def _blocks_fetched(session: Session, key: Any) -> None:
        """Until the client has read the last block of the answer stored under `key`
        (it is popped then), or it expired."""
        entry = session.answers.get(key)
        if entry is None:
            return
        deadline = entry[0] + BLOCK_TTL_SECONDS
        while session.answers.get(key) is entry and time.monotonic() < deadline:
            session.block_read.clear()
            with contextlib.suppress(TimeoutError):  # re-checked each second (evictions)
                await asyncio.wait_for(session.block_read.wait(), 1.0)

    async def _serve(
        self, session: Session, method: str, request: Message, body: bytes
    ) -> tuple[int, Any, str]:
        """(status, JSON answer, the Client-Server path it was for)."""
        refused = self._session_options(session, request)
        if refused is not None:
            return (*refused, "")
        segments = list(request.opt.uri_path)
        if any(codec.is_room_reference(segments[i]) for i in codec.room_slots(segments)):
            resolved = await self._resolve_rooms(session, segments)
            if isinstance(resolved, tuple):
                return (*resolved, "")
            segments = resolved
        try:
            path = codec.expand_path(segments)
        except codec.CodecError as e:
            return (*_error(404, e.errcode, str(e)), "")
        try:
            query = _query(request)
        except codec.CodecError as e:
            return (*_error(400, e.errcode, str(e)), path)
        if query:
            path += "?" + urlencode(query)
        json_body: bytes | None = None
        if body:
            fmt = request.opt.content_format
            try:
                if fmt is not None and int(fmt) == codec.DEFLATE_CONTENT_FORMAT:
                    body = codec.inflate(body, self.max_body)
                elif fmt is not None and int(fmt) != codec.CBOR_CONTENT_FORMAT:
                    return (
                        *_error(415, "M_NOT_JSON", "Send application/cbor (content-format 60)"),
                        path,
                    )
                raw = codec.loads(body)
                value = codec.expand(raw)
            except codec.CodecError as e:
                return (
                    *_error(413 if e.errcode == "M_TOO_LARGE" else 400, e.errcode, str(e)),
                    path,
                )
            if session.cbor_version == 0 and codec.uses_integer_keys(raw):
                session.cbor_version = 1  # numeric keys mean it speaks version 1 (MSC3079)
            json_body = orjson.dumps(value)
        status, answer = await self._dispatch(
            method, path, json_body, session.access_token, session.ip
        )
        return status, answer, path

    async def _resolve_rooms(
        self, session: Session, segments: list[str]
    ) -> list[str] | tuple[int, Any]:
        """The path segments with each room reference (`~...`, codec.room_reference) in
        a `{roomId}` slot replaced by the room ID it names among the rooms the session's
        user has joined (asked of /joined_rooms, with the session's token, when the
        session has not resolved it yet); an error answer (4.04
        ROOM_REFERENCE_ERRCODE) if one names no joined room or more than one: the
        client then sends the full room ID."""
        out = list(segments)
        refs = session.room_references
        slots = [i for i in codec.room_slots(segments) if codec.is_room_reference(segments[i])]
        if any(segments[i] not in refs for i in slots):
            status, answer = await self._dispatch(
                "GET", JOINED_ROOMS_PATH, None, session.access_token, session.ip
            )
            if status != 200:
                return status, answer
            joined = answer.get("joined_rooms") if isinstance(answer, dict) else None
            found: dict[str, list[str]] = {}
            for room_id in joined if isinstance(joined, list) else []:
                if isinstance(room_id, str):
                    found.setdefault(codec.room_reference(room_id), []).append(room_id)
            for i in slots:
                rooms = found.get(segments[i], [])
                if len(rooms) != 1:
                    return _error(
                        404,
                        codec.ROOM_REFERENCE_ERRCODE,
                        "No single joined room has this reference; send the room ID",
                    )
                refs[segments[i]] = rooms[0]
        for i in slots:
            refs.move_to_end(segments[i])
            out[i] = refs[segments[i]]
        while len(refs) > ROOM_REFERENCES:
            refs.popitem(last=False)
        return out

    def _response(
        self,
        session: Session,
        method: str,
        status: int,
        answer: Any,
        is_sync: bool = False,
        since: str | None = None,
        base: bytes | None = None,
    ) -> Message:
        """The CoAP answer; with DEFLATE, a /sync answer is compressed against the answer
        `since` names, and an Observe notification also against its registration's
        first answer (`base`)."""
        payload = codec.encode(answer, integer_keys=session.cbor_version >= 1)
        if len(payload) > self.max_body:
            status, answer = _error(500, "M_TOO_LARGE", "The answer is over max_body_size")
            payload = codec.encode(answer, integer_keys=session.cbor_version >= 1)
        content_format = codec.CBOR_CONTENT_FORMAT
        if session.deflate:
            reference = session.sync_references.get(since or "") if is_sync else None
            since_format = codec.DEFLATE_SINCE_CONTENT_FORMAT
            if reference is not None and base:
                reference = base[-codec.WINDOW :] + reference
                since_format = codec.DEFLATE_BASE_CONTENT_FORMAT
            packed = codec.deflate(payload, reference or b"")
            if is_sync and status == 200 and isinstance(answer, dict):
                next_batch = answer.get("next_batch")
                if isinstance(next_batch, str):
                    # Only the last WINDOW bytes can serve as a dictionary: keeping
                    # just those bounds each session to 2 x 32 KiB, with no change.
                    session.sync_references[next_batch] = payload[-codec.WINDOW :]
                    while len(session.sync_references) > SYNC_REFERENCES:
                        session.sync_references.popitem(last=False)
            if len(packed) < len(payload):
                payload = packed
                content_format = (
                    since_format if reference is not None else codec.DEFLATE_CONTENT_FORMAT
                )
        return Message(
            code=coap_code(status, method), payload=payload, content_format=content_format
        )

    def _assemble(self, session: Session, key: Any, request: Message) -> bytes:
        """The request body, reassembled from Block1 blocks (bounded)."""
        block1 = request.opt.block1
        payload = bytes(request.payload)
        if block1 is None:
            if len(payload) > self.max_body:
                raise _Continue(self._coded(413, "M_TOO_LARGE", "Request body too large"))
            return payload
        now = time.monotonic()
        for stale in [k for k, (t, _) in session.assemblies.items() if now - t > BLOCK_TTL_SECONDS]:
            del session.assemblies[stale]
        if block1.start + len(payload) > self.max_body:
            session.assemblies.pop(key, None)
            raise _Continue(self._coded(413, "M_TOO_LARGE", "Request body too large"))
        if block1.block_number == 0:
            while len(session.assemblies) >= ASSEMBLIES_PER_SESSION:
                session.assemblies.popitem(last=False)
            buffer = bytearray()
            session.assemblies[key] = (now, buffer)
        else:
            entry = session.assemblies.get(key)
            if entry is None or len(entry[1]) != block1.start:
                session.assemblies.pop(key, None)
                raise _Continue(Message(code=Code.REQUEST_ENTITY_INCOMPLETE))
            buffer = entry[1]
            session.assemblies[key] = (now, buffer)
        if block1.more and len(payload) != block1.size:
            session.assemblies.pop(key, None)
            raise _Continue(self._coded(400, "M_INVALID_PARAM", "Block1 of the wrong size"))
        if self._buffered(session) + len(payload) > BUFFER_BUDGET:
            session.assemblies.pop(key, None)
            raise _Continue(self._coded(503, "M_LIMIT_EXCEEDED", "Busy; retry later"))
        buffer += payload
        if block1.more:
            raise _Continue(Message(code=Code.CONTINUE, block1=block1))
        del session.assemblies[key]
        return bytes(buffer)

    @staticmethod
    def _coded(status: int, errcode: str, message: str) -> Message:
        return Message(
            code=coap_code(status, "POST"),
            payload=codec.encode({"errcode": errcode, "error": message}),
            content_format=codec.CBOR_CONTENT_FORMAT,
        )

    def _first_block(
        self, session: Session, key: Any, request: Message, response: Message
    ) -> Message:
        size = session.maximum_payload_size
        szx = session.maximum_block_size_exp
        if request.opt.block2 is not None:
            szx = min(szx, request.opt.block2.size_exponent)
            size = 2 ** (szx + 4)
        if len(response.payload) <= size:
            return response
        while len(session.answers) >= ANSWERS_PER_SESSION:
            session.answers.popitem(last=False)
        if self._buffered(session) + len(response.payload) > BUFFER_BUDGET:
            return self._coded(503, "M_LIMIT_EXCEEDED", "Busy; retry later")
        session.answers[key] = (time.monotonic(), response)
        return self._slice(response, 0, szx)

    @staticmethod
    def _buffered(session: Session) -> int:
        """Bytes held for blockwise transfers by every live session of this listener
        (at most max_sessions x 8 entries: summed when a transfer grows, not kept)."""
        return sum(
            sum(len(buf) for _, buf in s.assemblies.values())
            + sum(len(m.payload) for _, m in s.answers.values())
            for s in session.endpoint.sessions.values()
        )

    def _next_block(self, session: Session, key: Any, block2: Any) -> Message:
        entry = session.answers.get(key)
        if entry is None or time.monotonic() - entry[0] > BLOCK_TTL_SECONDS:
            session.answers.pop(key, None)
            return Message(code=Code.REQUEST_ENTITY_INCOMPLETE)
        response = entry[1]
        if block2.start >= len(response.payload):
            return self._coded(400, "M_INVALID_PARAM", "Block2 past the end")
        block = self._slice(response, block2.block_number, block2.size_exponent)
        if not block.opt.block2.more:
            session.answers.pop(key, None)
            session.block_read.set()
        return block

    @staticmethod
    def _slice(response: Message, number: int, szx: int) -> Message:
        size = 2 ** (szx + 4)
        payload = response.payload[number * size : (number + 1) * size]
        more = (number + 1) * size < len(response.payload)
        return Message(
            code=response.code,
            payload=payload,
            content_format=response.opt.content_format,
            block2=BlockOption.BlockwiseTuple(number, more, szx),
        )


class _Continue(Exception):
    """Answer now (2.31 Continue, or an error) without dispatching."""

    def __init__(self, response: Message) -> None:
        self.response = response


@dataclass
class LowBandwidthServer:
    """The running listener: `start` binds, `advert` is its /versions entry."""

    config: LowBandwidthConfig
    private_key: bytes
    dispatch: Dispatch | None = None
    endpoints: list[_NoiseEndpoint] = field(default_factory=list)
    contexts: list[Context] = field(default_factory=list)
    port: int = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        site = _MatrixResource(self.config, self._dispatch)
        for host in self.config.bind_addresses:
            endpoint = _NoiseEndpoint(self.config, self.private_key)
            await loop.create_datagram_endpoint(
                lambda endpoint=endpoint: endpoint,  # type: ignore[misc]
                local_addr=(host, self.port or self.config.port or 0),
            )
            assert endpoint.transport is not None
            self.port = endpoint.transport.get_extra_info("sockname")[1]
            context = Context(loop=loop, serversite=site, loggername="starling.coap")

            async def make(mman: Any, endpoint: _NoiseEndpoint = endpoint) -> _NoiseInterface:
                return _NoiseInterface(mman, endpoint)

            await context._append_tokenmanaged_messagemanaged_transport(make)
            self.endpoints.append(endpoint)
            self.contexts.append(context)

    async def _dispatch(
        self,
        method: str,
        path: str,
        body: bytes | None,
        token: str | None,
        remote: str,
        *,
        acknowledge: bool = True,
    ) -> tuple[int, Any]:
        if self.dispatch is None:
            return _error(503, "M_UNKNOWN", "Starting up")
        return await self.dispatch(method, path, body, token, remote, acknowledge=acknowledge)

    @property
    def public_key(self) -> bytes:
        return noise.public_key(self.private_key)

    def advert(self) -> dict[str, Any]:
        """The /versions entry (MSC3079 "Versioning", with our Noise parameters in place of
        the `dtls` port: we do not serve DTLS)."""
        import base64

        return {
            "cbor_enum_version": 1,
            "coap_enum_version": 1,
            NOISE_FEATURE: {
                "port": self.port,
                "protocol": noise.PROTOCOL.decode(),
                "public_key": base64.b64encode(self.public_key).decode().rstrip("="),
            },
        }

    async def stop(self) -> None:
        observations = [
            s.observation
            for endpoint in self.endpoints
            for s in endpoint.sessions.values()
            if s.observation is not None
        ]
        for task in observations:
            task.cancel()
        await asyncio.gather(*observations, return_exceptions=True)
        for context in self.contexts:
            with contextlib.suppress(Exception):
                await context.shutdown()
        for endpoint in self.endpoints:
            if endpoint.transport is not None:
                endpoint.transport.close()
        self.contexts.clear()
        self.endpoints.clear()

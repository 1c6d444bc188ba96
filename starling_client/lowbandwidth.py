"""A low-bandwidth client: Client-Server requests over CoAP+CBOR+Noise (MSC3079).

Part of the client SDK: it imports only the shared, pure layer of the server's package
(starling/protocol/lowbandwidth: codec, Noise framing, option numbers). Used by the SDK's
`Api(transport="coap")` (starling_client/transport.py), `starling debug coap`, the tests
and the benchmark. aiocoap does CoAP (confirmable retransmission, Block1/Block2);
its UDP transport is replaced by one Noise session with the server, whose static key
the caller got from /_matrix/client/versions over HTTPS. The access token travels once
per session in option 256 (the server keeps it: MSC3079's stickiness), and option 257
asks for CBOR integer keys (version 1) in answers.

`loss` drops that share of datagrams in both directions (seeded), to test CoAP's
retransmission; `rebind()` moves to a new local port, as a phone changing networks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

from aiocoap import Code, Context, Message, interfaces
from aiocoap.message import Direction
from aiocoap.numbers.constants import TransportTuning
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.optiontypes import OpaqueOption, UintOption
from aiocoap.transports.generic_udp import GenericMessageInterface

from starling.protocol.lowbandwidth import codec, noise
from starling.protocol.lowbandwidth.coap import (
    OPTION_ACCESS_TOKEN,
    OPTION_CBOR_VERSION,
    OPTION_DEFLATE,
    SYNC_PATH,
    http_status,
)

logger = logging.getLogger(__name__)

METHOD_CODES = {"GET": Code.GET, "POST": Code.POST, "PUT": Code.PUT, "DELETE": Code.DELETE}
HANDSHAKE_TRIES = 6
HANDSHAKE_TIMEOUT_S = 1.0
MAX_QUEUED = 64  # pushed /sync answers waiting for the consumer of observe_sync
# Path enums whose room is one the user has normally joined: their `{roomId}` travels as a
# room reference (codec.room_reference, 12 bytes instead of ~45); the server resolves it
# among the user's joined rooms, and the request is repeated with the full ID if not.
ROOM_REFERENCE_ENUMS = frozenset("89ABCDEFJMOPQYZatu")


class LowBandwidthError(Exception):
    """No answer: the handshake failed or the request timed out."""


class ObserveEnded(Exception):
    """The server ended a /sync observation with an error answer (status, body)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


class _Tuning(TransportTuning):  # type: ignore[misc]
    def __init__(self, ack_timeout: float, max_retransmit: int) -> None:
        super().__init__()
        self.ACK_TIMEOUT = ack_timeout
        self.MAX_RETRANSMIT = max_retransmit


class _Server(interfaces.EndpointAddress):  # type: ignore[misc]
    """The one remote of this client: its Noise session with the server."""

    is_multicast = False
    is_multicast_locally = False
    scheme = "coap"

    def __init__(self, client: LowBandwidthClient) -> None:
        self.client = client

    def send(self, data: bytes) -> None:
        self.client._send_coap(data)

    @property
    def hostinfo(self) -> str:
        return f"{self.client.host}:{self.client.port}"

    @property
    def hostinfo_local(self) -> str:
        return "client"

    @property
    def uri_base(self) -> str:
        return f"coap://{self.hostinfo}"

    @property
    def uri_base_local(self) -> str:
        return "coap://client"

    @property
    def blockwise_key(self) -> int:
        return id(self)


class _Interface(GenericMessageInterface):  # type: ignore[misc]
    def __init__(self, mman: Any, client: LowBandwidthClient) -> None:
        super().__init__(mman, logger, asyncio.get_running_loop())
        self._client = client
        self._pool = self

    async def determine_remote(self, request: Message) -> _Server:
        return self._client._server

    async def recognize_remote(self, remote: Any) -> bool:
        return remote is self._client._server

    async def shutdown(self) -> None:
        self._mman = None

    async def connect(self, sockaddr: Any) -> _Server:  # pragma: no cover
        return self._client._server


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, client: LowBandwidthClient) -> None:
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client._received(data)

    def error_received(self, exc: Exception) -> None:
        logger.debug("low-bandwidth client socket error: %s", exc)


def _without_session_options(data: bytes) -> bytes:
    """aiocoap builds a Block2 follow-up request from the original one, so it would
    repeat the sticky session options (the access token: ~50 bytes a block) the server
    already holds; they are taken out of block follow-ups here."""
    if len(data) < 4 or not (1 <= data[1] <= 31):  # not a request (RFC 7252 §3: code 0.xx)
        return data
    message = Message.decode(data)
    block2 = message.opt.block2
    if block2 is None or block2.block_number == 0:
        return data
    if not any(
        message.opt.get_option(OptionNumber(n))
        for n in (OPTION_ACCESS_TOKEN, OPTION_CBOR_VERSION, OPTION_DEFLATE)
    ):
        return data
    for number in (OPTION_ACCESS_TOKEN, OPTION_CBOR_VERSION, OPTION_DEFLATE):
        message.opt.delete_option(OptionNumber(number))
    message.direction = Direction.OUTGOING  # re-encoded as the message we send
    return bytes(message.encode())


class LowBandwidthClient:
    def __init__(
        self,
        host: str,
        port: int,
        server_public_key: bytes,
        *,
        loss: float = 0.0,
        seed: int = 0,
        ack_timeout: float = 2.0,
        max_retransmit: int = 4,
        deflate: bool = True,
        max_body_size: int = 16 * 1024 * 1024,
        room_references: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.server_public_key = server_public_key
        self.access_token: str | None = None
        self.loss = loss
        self._random = random.Random(seed)
        # RFC 7252's MAX_RETRANSMIT (4): a request fails when 5 transmissions got no
        # answer; a very lossy link may want more.
        self._tuning = _Tuning(ack_timeout, max_retransmit)
        self._server = _Server(self)
        self._socket: _Socket | None = None
        self._channel: noise.SecureChannel | None = None
        self._initiator: noise.Initiator | None = None
        self._handshaken: asyncio.Event = asyncio.Event()
        self._context: Context | None = None
        self._interface: _Interface | None = None
        self._token_sent = False
        self._session_options_sent = False
        self.deflate = deflate
        self.room_references = room_references
        self.max_body_size = max_body_size
        # Our last /sync answers (CBOR) by next_batch: the server may compress the next
        # one against the answer our `since` names (DEFLATE_SINCE_CONTENT_FORMAT).
        self._sync_references: dict[str, bytes] = {}
        self.last_content_format: int | None = None  # of the last answer (tests, debug)
        self.last_sync_payload = b""  # the last /sync answer, CBOR (an Observe base)
        # Bytes on the wire (UDP payloads) each way, and datagrams, for the benchmark.
        self.bytes_sent = 0
        self.bytes_received = 0
        self.datagrams_sent = 0
        self.datagrams_received = 0
        self.dropped_by_loss = 0

    @classmethod
    async def connect(
        cls, host: str, port: int, server_public_key: bytes, **kwargs: Any
    ) -> LowBandwidthClient:
        client = cls(host, port, server_public_key, **kwargs)
        await client._bind()
        await client.handshake()
        context = Context(loop=asyncio.get_running_loop(), loggername="starling.coap.client")

        async def make(mman: Any) -> _Interface:
            # aiocoap counts tokens up from a random 16-bit start, sending them without
            # leading zero bytes: from 0 the first 255 are one byte, not two, on every
            # request and answer. Noise authenticates every datagram, so tokens need no
            # randomness against off-path spoofing (RFC 7252 §5.3.1 asks for it only
            # without security); they stay unique, counting up, as aiocoap needs.
            mman.token_manager._token = 0
            client._interface = _Interface(mman, client)
            return client._interface

        await context._append_tokenmanaged_messagemanaged_transport(make)
        client._context = context
        return client

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        old = self._socket
        sock = _Socket(self)
        await loop.create_datagram_endpoint(lambda: sock, remote_addr=(self.host, self.port))
        self._socket = sock
        if old is not None and old.transport is not None:
            old.transport.close()

    async def rebind(self) -> None:
        """A new local address (a phone changing networks); the session stays."""
        await self._bind()

    async def handshake(self) -> None:
        """A new Noise session (also after the server forgot ours)."""
        for _ in range(HANDSHAKE_TRIES):
            self._handshaken = asyncio.Event()
            self._initiator = noise.Initiator(self.server_public_key)
            self._sendto(self._initiator.init)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._handshaken.wait(), HANDSHAKE_TIMEOUT_S)
                self._token_sent = False  # a new session must be told the token
                self._session_options_sent = False
                self._sync_references.clear()
                return
        raise LowBandwidthError(f"no Noise handshake with {self.host}:{self.port}")

    def _sendto(self, data: bytes) -> None:
        if self._socket is None or self._socket.transport is None:
            return
        if self.loss and self._random.random() < self.loss:
            self.dropped_by_loss += 1
            return
        self.bytes_sent += len(data)
        self.datagrams_sent += 1
        self._socket.transport.sendto(data)

    def _send_coap(self, data: bytes) -> None:
        if self._channel is None:
            return
        data = _without_session_options(data)
        try:
            self._sendto(self._channel.seal(data))
        except noise.NoiseError:  # the session's counter is spent: a new one
            self._channel = None
            asyncio.get_running_loop().create_task(self.handshake())

    def _received(self, data: bytes) -> None:
        if self.loss and self._random.random() < self.loss:
            self.dropped_by_loss += 1
            return
        self.bytes_received += len(data)
        self.datagrams_received += 1
        if not data:
            return
        if data[0] == noise.HANDSHAKE_RESPONSE and self._initiator is not None:
            try:
                self._channel = self._initiator.finish(data)
            except noise.NoiseError:
                return
            self._initiator = None
            self._handshaken.set()
        elif data[0] == noise.UNKNOWN_SESSION and self._channel is not None:
            if noise.session_id_of(data) == self._channel.session_id and self._initiator is None:
                # The server restarted or forgot us: a new session, then CoAP retransmits.
                asyncio.get_running_loop().create_task(self.handshake())
        elif data[0] == noise.DATA and self._channel is not None:
            try:
                plaintext = self._channel.open(data)
            except noise.NoiseError:
                return  # tampered or replayed: as if lost
            if self._interface is not None:
                self._interface._received_datagram(self._server, plaintext)

    def _message(
        self,
        method: str,
        path: str,
        body: Any,
        params: dict[str, str] | None,
        *,
        room_references: bool = False,
    ) -> tuple[Message, str | None]:
        """The CoAP request for a Client-Server request, and its `since` (if any)."""
        segments = codec.compress_path(path.partition("?")[0])
        if room_references and segments[0] in ROOM_REFERENCE_ENUMS:
            for i in codec.room_slots(segments):
                if segments[i].startswith("!"):
                    segments[i] = codec.room_reference(segments[i])
        message = Message(
            code=METHOD_CODES[method], uri_path=segments, transport_tuning=self._tuning
        )
        query = list((params or {}).items())
        if "?" in path:
            query = parse_qsl(path.partition("?")[2], keep_blank_values=True) + query
        if query:  # Uri-Query values are raw text (RFC 7252 §6.5), not %-escaped
            items = []
            for name, value in query:
                short = codec.pack_token(value) if name == "since" else None
                if short is not None:  # ~120 characters → ~40 (codec.PACKED_SINCE)
                    name, value = codec.PACKED_SINCE, short
                items.append(f"{name}={value}")
            message.opt.uri_query = items
        if body is not None:
            payload = codec.encode(body)
            message.opt.content_format = codec.CBOR_CONTENT_FORMAT
            if self.deflate:
                packed = codec.deflate(payload)
                if len(packed) < len(payload):
                    payload = packed
                    message.opt.content_format = codec.DEFLATE_CONTENT_FORMAT
            message.payload = payload
        if not self._session_options_sent:
            # Sticky for the session: integer keys (257) and, if wanted, DEFLATE (65000).
            message.opt.add_option(UintOption(OptionNumber(OPTION_CBOR_VERSION), 1))
            if self.deflate:
                message.opt.add_option(UintOption(OptionNumber(OPTION_DEFLATE), 1))
            self._session_options_sent = True
        if self.access_token and not self._token_sent:
            message.opt.add_option(
                OpaqueOption(OptionNumber(OPTION_ACCESS_TOKEN), self.access_token.encode())
            )
            self._token_sent = True
        message.remote = self._server
        return message, dict(query).get("since")

    def _answer(
        self, response: Message, since: str | None, is_sync: bool, base: bytes | None = None
    ) -> tuple[int, Any]:
        """(HTTP status, JSON body) of a CoAP answer; a /sync answer is kept as the
        DEFLATE reference of the one that will follow it (and in `last_sync_payload`).
        `base`: the first answer of the Observe registration a notification belongs to."""
        status = http_status(response.code)
        fmt = response.opt.content_format
        self.last_content_format = None if fmt is None else int(fmt)
        payload = bytes(response.payload)
        try:
            if fmt is not None and int(fmt) == codec.DEFLATE_CONTENT_FORMAT:
                payload = codec.inflate(payload, self.max_body_size)
            elif fmt is not None and int(fmt) in (
                codec.DEFLATE_SINCE_CONTENT_FORMAT,
                codec.DEFLATE_BASE_CONTENT_FORMAT,
            ):
                reference = self._sync_references.get(since or "")
                if int(fmt) == codec.DEFLATE_BASE_CONTENT_FORMAT:
                    if base is None or reference is None:
                        raise codec.CodecError("M_NOT_JSON", "Compressed against an unknown base")
                    reference = base[-codec.WINDOW :] + reference
                if reference is None:
                    raise codec.CodecError("M_NOT_JSON", "Compressed against an unknown answer")
                payload = codec.inflate(payload, self.max_body_size, reference)
            answer = codec.decode(payload) if payload else {}
        except codec.CodecError as e:
            return 502, {"errcode": e.errcode, "error": f"Bad answer: {e}"}
        if status == 200 and is_sync:
            next_batch = answer.get("next_batch") if isinstance(answer, dict) else None
            self.last_sync_payload = payload
            if isinstance(next_batch, str):
                self._sync_references[next_batch] = payload
                while len(self._sync_references) > 4:
                    del self._sync_references[next(iter(self._sync_references))]
        return status, answer

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        timeout_s: float = 60.0,
    ) -> tuple[int, Any]:
        """(HTTP status, JSON body) of one Client-Server request."""
        assert self._context is not None, "connect() first"
        status, answer = await self._request(
            method, path, body, params, timeout_s, self.room_references
        )
        if (
            status == 404
            and self.room_references
            and isinstance(answer, dict)
            and answer.get("errcode") == codec.ROOM_REFERENCE_ERRCODE
        ):
            # Not a room the server finds among ours (not joined yet, or left): by name.
            status, answer = await self._request(method, path, body, params, timeout_s, False)
        return status, answer

    async def _request(
        self,
        method: str,
        path: str,
        body: Any,
        params: dict[str, str] | None,
        timeout_s: float,
        room_references: bool,
    ) -> tuple[int, Any]:
        assert self._context is not None, "connect() first"
        message, since = self._message(method, path, body, params, room_references=room_references)
        try:
            response = await asyncio.wait_for(self._context.request(message).response, timeout_s)
        except TimeoutError as e:
            self._token_sent = self._session_options_sent = False  # maybe never seen
            raise LowBandwidthError(f"{method} {path}: no answer in {timeout_s}s") from e
        except Exception as e:  # aiocoap's own errors: retransmissions exhausted...
            self._token_sent = self._session_options_sent = False
            raise LowBandwidthError(f"{method} {path}: {e}") from e
        is_sync = path.partition("?")[0] in (SYNC_PATH, "/_matrix/client/r0/sync")
        return self._answer(response, since, is_sync)

    async def observe_sync(
        self,
        since: str | None = None,
        *,
        params: dict[str, str] | None = None,
        timeout_s: float = 60.0,
    ) -> AsyncIterator[dict[str, Any]]:
        """/sync by CoAP Observe (RFC 7641, MSC3079): yields the first answer (from
        `since`, or the initial sync), then each /sync answer the server pushes, each
        following the previous one's `next_batch`. Ends with LowBandwidthError when the
        registration is lost (the caller registers again from the last `next_batch` it
        processed: nothing is lost), or a MatrixError-shaped ObserveEnded when the
        server ends it with an error."""
        assert self._context is not None, "connect() first"
        query = dict(params or {})
        if since is not None:
            query["since"] = since
        # No `timeout`: the first answer is then immediate (/sync's default, 0), and the
        # registration and each Block2 follow-up of its answer are ~10 bytes shorter.
        message, _ = self._message("GET", SYNC_PATH, None, query)
        message.opt.observe = 0
        request = self._context.request(message)
        # aiocoap's `async for` over an observation keeps only the latest notification
        # (Observe is lossy for a resource's state); /sync answers are a chain, none
        # may be skipped, so they are queued here (bounded: a consumer that falls
        # MAX_QUEUED behind loses the registration and registers again from the last
        # next_batch it processed).
        queue: asyncio.Queue[Message | BaseException] = asyncio.Queue()
        observation = request.observation
        if observation is not None:
            observation.register_callback(queue.put_nowait, _suppress_deprecation=True)
            observation.register_errback(queue.put_nowait, _suppress_deprecation=True)
        try:
            try:
                response = await asyncio.wait_for(request.response, timeout_s)
            except Exception as e:
                self._token_sent = self._session_options_sent = False
                raise LowBandwidthError(f"observe /sync: {e}") from e
            status, answer = self._answer(response, since, True)
            if status != 200:
                raise ObserveEnded(status, answer)
            base = self.last_sync_payload  # part of every notification's dictionary
            yield answer
            since = answer.get("next_batch", since)
            if observation is None or response.opt.observe is None:
                raise LowBandwidthError("the server did not accept the observation")
            while True:
                if queue.qsize() > MAX_QUEUED:
                    raise LowBandwidthError("observe /sync: the consumer fell behind")
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise LowBandwidthError(f"observe /sync ended: {item}") from item
                status, answer = self._answer(item, since, True, base)
                if status != 200:
                    raise ObserveEnded(status, answer)
                yield answer
                since = answer.get("next_batch", since)
        finally:
            if observation is not None and not observation.cancelled:
                observation.cancel()

    async def close(self) -> None:
        if self._context is not None:
            with contextlib.suppress(Exception):
                await self._context.shutdown()
            self._context = None
        if self._socket is not None and self._socket.transport is not None:
            self._socket.transport.close()

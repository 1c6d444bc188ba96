"""Slow and abusive clients at the connection level, before a request reaches the app.

Owns the per-connection deadlines and the per-address connection cap of every listener
(config section `http_limits`):

- **header_timeout**: a request's line and headers must arrive within this many seconds
  of its first byte (or of the connection opening). A slowloris client trickling header
  bytes is answered 408 `M_UNKNOWN` and disconnected.
- **body_timeout**: a request body must arrive whole within this many seconds of the end
  of its headers. A body trickled byte by byte fails the handler's read with 408
  `M_UNKNOWN` (a MatrixError, answered as JSON by the edge middleware) and the connection
  is closed after that answer (or a few seconds later, if the handler does not read).
- **keepalive_timeout**: an idle keep-alive connection is closed after this many seconds
  (aiohttp's own timer, also armed when a connection opens).
- **max_connections_per_ip**: at most this many concurrent connections from one address;
  the next one is answered 429 `M_LIMIT_EXCEEDED` and closed at once. Not applied on
  listeners marked `x_forwarded`: there every connection comes from the proxy, which has to
  do this itself.

aiohttp has no header or body read time-outs, so these live in a subclass of its
`RequestHandler` (the asyncio protocol of one HTTP/1 connection), created by
`GuardedAppRunner`; it is a `MatrixRequestHandler` (http_server.py: request-line and header
limits answered as Matrix errors). It relies on two internals of aiohttp 3.x: `_messages` (requests whose
headers are parsed, waiting to be served) and the `Server.__call__` protocol factory;
tests/api/test_connection_guard.py fails if either changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from starling.api.http_server import HANDLER_ARGS, MatrixRequestHandler
from starling.errors import MatrixError

logger = logging.getLogger("starling.http")

# After a body time-out, how long the handler has to answer before the connection is cut.
_ANSWER_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 60.0
    max_connections_per_ip: int = 1000  # 0: no cap


def _raw_response(status: int, reason: str, errcode: str, error: str) -> bytes:
    body = orjson.dumps({"errcode": errcode, "error": error})
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Access-Control-Allow-Origin: *\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


HEADER_TIMEOUT_RESPONSE = _raw_response(
    408, "Request Timeout", "M_UNKNOWN", "Request headers not received in time"
)
TOO_MANY_CONNECTIONS_RESPONSE = _raw_response(
    429, "Too Many Requests", "M_LIMIT_EXCEEDED", "Too many connections from your address"
)


def body_timeout_error() -> MatrixError:
    return MatrixError(408, "M_UNKNOWN", "Request body not received in time")


class PeerCounter:
    """Open connections per remote address, shared by every listener of the process."""

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()

    def acquire(self, host: str, cap: int) -> bool:
        if cap and self._open[host] >= cap:
            return False
        self._open[host] += 1
        return True

    def release(self, host: str) -> None:
        self._open[host] -= 1
        if self._open[host] <= 0:
            del self._open[host]

    def open_connections(self, host: str) -> int:
        return self._open[host]


class GuardedRequestHandler(MatrixRequestHandler):
    """aiohttp's HTTP/1 connection protocol with header and body deadlines and the
    per-address cap."""

    def __init__(
        self, manager: Any, *, limits: ConnectionLimits, peers: PeerCounter | None, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._peers = peers  # None: no per-address cap on this listener
        self._peer_host: str | None = None
        self._rejected = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None

    # --- connection lifecycle ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._peers is not None:
            peer = transport.get_extra_info("peername")
            host = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
            if not self._peers.acquire(host, self._limits.max_connections_per_ip):
                self._rejected = True
                logger.warning("refused a connection from %s: too many open", host)
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(TOO_MANY_CONNECTIONS_RESPONSE)
                transport.close()
                return
            self._peer_host = host
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._rejected:
            return
        self._cancel_header_timer()
        self._cancel_body_timer()
        if self._peers is not None and self._peer_host is not None:
            self._peers.release(self._peer_host)
            self._peer_host = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        before = len(self._messages)
        idle = self._body is None and self._request_idle()
        super().data_received(data)
        parsed = list(self._messages)[before:]
        if parsed:
            # Headers complete: the header deadline is met; its body (if any) is next.
            self._cancel_header_timer()
            payload = parsed[-1][1]
            if isinstance(payload, StreamReader) and not payload.is_eof():
                self._start_body_timer(payload)
        elif idle and data:
            # The first bytes of a request on a kept-alive connection.
            self._arm_header_timer()
        if self._body is not None and self._body.is_eof():
            self._cancel_body_timer()

    def _request_idle(self) -> bool:
        return not self._messages and self._current_request is None

    # --- header deadline -------------------------------------------------------------

    def _arm_header_timer(self) -> None:
        if self._header_timer is None and self._limits.header_timeout > 0:
            self._header_timer = self._loop.call_later(
                self._limits.header_timeout, self._header_timed_out
            )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not self._request_idle():
            return  # a request is being served: the header deadline no longer applies
        logger.info("closing a connection from %s: headers too slow", self._peer_host)
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(HEADER_TIMEOUT_RESPONSE)
        self.force_close()
        transport.close()

    # --- body deadline ---------------------------------------------------------------

    def _start_body_timer(self, payload: StreamReader) -> None:
        self._cancel_body_timer()
        if self._limits.body_timeout > 0:
            self._body = payload
            self._body_timer = self._loop.call_later(
                self._limits.body_timeout, self._body_timed_out
            )

    def _cancel_body_timer(self) -> None:
        self._body = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        payload, self._body, self._body_timer = self._body, None, None
        if payload is None or payload.is_eof():
            return
        logger.info("request body from %s too slow: answering 408", self._peer_host)
        # The handler's read fails with a MatrixError, answered as JSON; then the
        # connection closes (no more requests are read from it).
        payload.set_exception(body_timeout_error())
        self.close()
        self._loop.call_later(_ANSWER_GRACE_SECONDS, self._cut)

    def _cut(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.force_close()
            transport.close()


class _GuardedServer(web.Server):
    """aiohttp's protocol factory, making GuardedRequestHandlers."""

    guard_limits: ConnectionLimits
    guard_peers: PeerCounter | None

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(
            self,
            limits=self.guard_limits,
            peers=self.guard_peers,
            loop=self._loop,
            **self._kwargs,
        )


class GuardedAppRunner(web.AppRunner):
    """An AppRunner whose connections get the deadlines and the per-address cap."""

    def __init__(
        self,
        app: web.Application,
        limits: ConnectionLimits,
        peers: PeerCounter | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            app, keepalive_timeout=limits.keepalive_timeout, **{**HANDLER_ARGS, **kwargs}
        )
        self._guard_limits = limits
        self._guard_peers = peers

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _GuardedServer
        assert isinstance(server, _GuardedServer)
        server.guard_limits = self._guard_limits
        server.guard_peers = self._guard_peers
        return server

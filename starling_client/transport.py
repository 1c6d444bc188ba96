"""Transports beyond HTTPS+JSON for the client SDK (docs/transports.md).

`Api` (starling_client/api.py) asks `choose_transport` once, before its first
authenticated request. Asked for CoAP (`Api(transport="coap")`) and offered it by
/versions (MSC3079's key with our Noise parameters), requests and /sync go over
low-bandwidth CoAP+CBOR+Noise (`CoapTransport`, below). Otherwise, when /versions offers
Starling's WebSocket (`unstable_features["org.starling.ws"]`), Client-Server requests and
/sync go over one socket; otherwise (or if neither opens) everything stays on HTTP.

The socket's sync stream is /sync itself pushed by the server: `sync(since)` returns the
next pushed response after `since`. If the socket drops, it is reopened (bounded retries
with backoff) and the stream restarted from the last `next_batch` handed to the caller,
so nothing is lost or duplicated. The server's chained polls acknowledge no to-device
messages: `sync(since)` with the `next_batch` of the response handed out last means the
caller has processed it, so it sends `{"type": "ack", "since"}` then (as a /sync from it
would acknowledge); a caller that restarts from an older token gets what it did not
acknowledge again. A one-shot sync (timeout 0) is one /sync request on the socket; the
stream and its queue stay. Requests that cannot be safely repeated (POST) are not
retried after a drop; GET, PUT (Matrix PUTs carry transaction IDs) and DELETE are.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from typing import Any, Protocol
from urllib.parse import urlencode

import aiohttp

log = logging.getLogger(__name__)

WS_FEATURE = "org.starling.ws"
WS_PATH = f"/_matrix/client/unstable/{WS_FEATURE}/ws"
RECONNECT_ATTEMPTS = 5
RECONNECT_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 4.0)
CONNECT_TIMEOUT_S = 10.0
IDEMPOTENT = ("GET", "PUT", "DELETE")


class TransportLost(Exception):
    """The socket dropped and could not be reopened; the caller sees status 0."""

    status = 0
    errcode = "M_CONNECTION"


class TokenRefused(TransportLost):
    """The server refused the socket's token (logged out): the caller sees 401, as over
    HTTP, and no reconnection is tried."""

    status = 401
    errcode = "M_UNKNOWN_TOKEN"


class Transport(Protocol):
    """What `Api` needs of a carrier of JSON Client-Server requests."""

    async def request(
        self, method: str, path: str, body: Any, timeout_s: float
    ) -> tuple[int, Any]: ...

    async def sync(self, since: str | None, timeout_ms: int) -> tuple[int, Any]: ...

    async def close(self) -> None: ...


async def choose_transport(
    session: aiohttp.ClientSession, homeserver: str, access_token: str, *, coap: bool = False
) -> Transport | None:
    """With `coap`, low-bandwidth CoAP if /versions offers it and the Noise handshake
    succeeds; else the WebSocket if /versions offers it and it opens; else None (plain
    HTTP)."""
    try:
        async with session.get(
            homeserver + "/_matrix/client/versions",
            timeout=aiohttp.ClientTimeout(total=CONNECT_TIMEOUT_S),
        ) as resp:
            versions = await resp.json(content_type=None) if resp.status == 200 else {}
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    if coap and isinstance(versions, dict):
        lowbandwidth = await coap_transport(versions, homeserver, access_token)
        if lowbandwidth is not None:
            return lowbandwidth
    features = versions.get("unstable_features") if isinstance(versions, dict) else None
    if not isinstance(features, dict) or features.get(WS_FEATURE) is not True:
        return None
    transport = WebSocketTransport(session, homeserver, access_token)
    try:
        await transport.connect()
    except TransportLost as e:
        log.info("WebSocket offered but not usable, staying on HTTP: %s", e)
        return None
    return transport


class WebSocketTransport:
    def __init__(self, session: aiohttp.ClientSession, homeserver: str, token: str) -> None:
        self._session = session
        self._url = homeserver + WS_PATH
        self._token = token
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count()
        self._pending: dict[str, asyncio.Future[tuple[int, Any]]] = {}
        self._pushed: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        # The stream's position: the since it was started from, advanced by each pushed
        # body handed to the caller. None: no stream on the current socket.
        self._stream_since: str | None = None
        self._streaming = False
        # The last token acknowledged on this stream (the stream's since, or an ack).
        self._acked: str | None = None
        self._connect_lock = asyncio.Lock()
        self.reconnects = 0  # sockets opened after the first (tests and metrics)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._ws = None

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def connect(self) -> None:
        """Opens and authenticates a socket (the token in a header, never the URL)."""
        try:
            ws = await self._session.ws_connect(
                self._url,
                headers={"Authorization": f"Bearer {self._token}"},
                compress=15,
                heartbeat=30.0,
                timeout=aiohttp.ClientWSTimeout(ws_close=CONNECT_TIMEOUT_S),
            )
        except aiohttp.WSServerHandshakeError as e:
            if e.status == 401:
                raise TokenRefused("the access token was refused") from e
            raise TransportLost(f"cannot open {self._url}: {e}") from e
        except (aiohttp.ClientError, TimeoutError) as e:
            raise TransportLost(f"cannot open {self._url}: {e}") from e
        try:
            hello = await ws.receive_json(timeout=CONNECT_TIMEOUT_S)
        except (TypeError, ValueError, TimeoutError) as e:
            await ws.close()
            raise TransportLost(f"no greeting from {self._url}") from e
        if not isinstance(hello, dict) or hello.get("type") != "authenticated":
            await ws.close()
            raise TransportLost(f"refused: {hello!r:.200}")
        self._ws = ws
        self._streaming = False
        self._pushed = asyncio.Queue()
        self._reader = asyncio.create_task(self._read(ws))

    async def _reconnect(self) -> None:
        async with self._connect_lock:
            if self.connected:
                return
            last: Exception | None = None
            for delay in RECONNECT_BACKOFF_S[:RECONNECT_ATTEMPTS]:
                try:
                    await self.connect()
                    self.reconnects += 1
                    return
                except TokenRefused:
                    raise
                except TransportLost as e:
                    last = e
                    await asyncio.sleep(delay)
            raise TransportLost(str(last))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for message in ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(message.data)
                except ValueError:
                    continue
                if isinstance(frame, dict):
                    self._on_frame(frame)
        finally:
            # Everything waiting on this socket learns it is gone.
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(TransportLost("the WebSocket closed"))
            self._pending.clear()
            if self._streaming:
                self._pushed.put_nowait((0, None))

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        request_id = frame.get("id")
        if kind == "response" and isinstance(request_id, str):
            future = self._pending.pop(request_id, None)
            if future is not None and not future.done():
                future.set_result((int(frame.get("status", 0)), frame.get("body")))
        elif kind == "sync":
            self._pushed.put_nowait((200, frame.get("body")))
        elif kind == "error":
            error = {k: frame[k] for k in ("errcode", "error") if k in frame}
            if isinstance(request_id, str):
                future = self._pending.pop(request_id, None)
                if future is not None and not future.done():
                    future.set_result((int(frame.get("status", 400)), error))
            elif frame.get("stream") == "sync":
                self._streaming = False
                self._pushed.put_nowait((int(frame.get("status", 400)), error))

    async def _send(self, frame: dict[str, Any]) -> None:
        if not self.connected:
            await self._reconnect()
        assert self._ws is not None
        try:
            await self._ws.send_str(json.dumps(frame))
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as e:
            raise TransportLost(f"send failed: {e}") from e

    async def request(self, method: str, path: str, body: Any, timeout_s: float) -> tuple[int, Any]:
        for attempt in range(2):
            request_id = f"r{next(self._ids)}"
            future: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
            self._pending[request_id] = future
            frame: dict[str, Any] = {
                "type": "request",
                "id": request_id,
                "method": method,
                "path": path,
            }
            if body is not None:
                frame["body"] = body
            try:
                await self._send(frame)
                return await asyncio.wait_for(future, timeout_s)
            except TransportLost:
                self._pending.pop(request_id, None)
                if attempt or method not in IDEMPOTENT:
                    raise
                log.info("WebSocket dropped during %s; reconnecting to repeat it", method)
            except TimeoutError:
                self._pending.pop(request_id, None)
                raise
        raise AssertionError("unreachable")

    async def sync(self, since: str | None, timeout_ms: int) -> tuple[int, Any]:
        """The next /sync response after `since` from the pushed stream; an empty
        response (same token) if nothing came within the timeout, as /sync answers.
        `since` is the caller's word that it processed the response with that token."""
        if timeout_ms <= 0:
            return await self._sync_now(since)
        for _attempt in range(RECONNECT_ATTEMPTS):
            if not self.connected:
                await self._reconnect()
            if not self._streaming or since != self._stream_since:
                await self._restart_stream(since)
            elif since is not None and since != self._acked:
                try:
                    await self._send({"type": "ack", "since": since})
                except TransportLost:
                    continue  # reopened on the next round; the stream's since acks
                self._acked = since
            # An initial sync always answers; later ones wait no longer than the caller
            # would have long-polled (the stream keeps running for the next call).
            wait_s = 60.0 if since is None else timeout_ms / 1000
            try:
                status, body = await asyncio.wait_for(self._pushed.get(), wait_s)
            except TimeoutError:
                return 200, {"next_batch": since} if since else {}
            if status == 0:
                continue  # the socket dropped: reopen and resume from `since`
            if status == 200 and isinstance(body, dict):
                next_batch = body.get("next_batch")
                self._stream_since = next_batch if isinstance(next_batch, str) else since
            return status, body
        raise TransportLost("the sync stream kept dropping")

    async def _sync_now(self, since: str | None) -> tuple[int, Any]:
        """A sync that must answer at once: one /sync request on the socket, like HTTP
        (everything up to now, acknowledging `since`). Not the stream's queue: its oldest
        response may lack what arrived since (an invite the caller is looking for), and
        the stream cannot tell "nothing new" from "not pushed yet" without waiting. The
        stream and its queue are left alone; a later `sync` from this answer's token
        restarts the stream from there, which loses nothing (unacknowledged to-device
        messages come again from that token)."""
        path = "/_matrix/client/v3/sync?timeout=0"
        if since is not None:
            path += "&" + urlencode({"since": since})
        return await self.request("GET", path, None, CONNECT_TIMEOUT_S + 30)

    async def _restart_stream(self, since: str | None) -> None:
        """One stream per socket: a stream from another position needs a fresh socket."""
        if self._streaming:
            await self.close()
            await self._reconnect()
        frame: dict[str, Any] = {"type": "sync"}
        if since is not None:
            frame["since"] = since
        self._pushed = asyncio.Queue()
        self._streaming = True
        self._stream_since = since
        self._acked = since
        await self._send(frame)


class CoapTransport:
    """Low-bandwidth Matrix (MSC3079: CoAP+CBOR over Noise, starling_client/lowbandwidth.py)
    as `Api`'s carrier, when asked for (`Api(transport="coap")`) and offered by /versions.

    Requests are CoAP requests on one Noise session (the token sent once). `sync(since,
    timeout)` reads the server's /sync Observe stream (no request per sync): a pump task
    queues each answer; `sync` hands them out in order, each following the previous
    `next_batch`. A `since` other than the last one handed out (a restart, an older
    token) registers again from it. The pushed answers acknowledge no to-device messages,
    so once the caller has processed one that carried some (it calls `sync` with its
    `next_batch`), the stream is registered again from that token, which acknowledges them
    as /sync does. A lost registration (retransmissions exhausted, a server restart) is
    registered again from the last token handed out: nothing lost or duplicated."""

    def __init__(self, client: Any) -> None:
        self.client = client  # a starling_client.lowbandwidth.LowBandwidthClient
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self._stream_since: str | None = None  # the last token handed out on the stream
        self._unacked_to_device = False
        self.registrations = 0  # Observe registrations made (tests and metrics)

    async def request(self, method: str, path: str, body: Any, timeout_s: float) -> tuple[int, Any]:
        from starling_client.lowbandwidth import LowBandwidthError

        try:
            status, answer = await self.client.request(method, path, body, timeout_s=timeout_s)
        except LowBandwidthError as e:
            raise TransportLost(str(e)) from e
        return status, answer

    async def sync(self, since: str | None, timeout_ms: int) -> tuple[int, Any]:
        if timeout_ms <= 0:
            params = {"timeout": "0", **({"since": since} if since else {})}
            return await self.request(
                "GET", "/_matrix/client/v3/sync?" + urlencode(params), None, 60.0
            )
        if self._pump is None or since != self._stream_since or self._unacked_to_device:
            await self._register(since)
        wait_s = 60.0 if since is None else timeout_ms / 1000
        try:
            status, body = await asyncio.wait_for(self._queue.get(), wait_s)
        except TimeoutError:
            return 200, {"next_batch": since} if since else {}
        if status == 0:  # the registration was lost: again from `since`, once
            await self._register(since)
            try:
                status, body = await asyncio.wait_for(self._queue.get(), wait_s)
            except TimeoutError:
                return 200, {"next_batch": since} if since else {}
            if status == 0:
                raise TransportLost(str(body))
        if status == 200 and isinstance(body, dict):
            next_batch = body.get("next_batch")
            self._stream_since = next_batch if isinstance(next_batch, str) else since
            self._unacked_to_device = bool(body.get("to_device", {}).get("events"))
        return status, body

    async def _register(self, since: str | None) -> None:
        await self._stop_pump()
        self._queue = asyncio.Queue()
        self._stream_since = since
        self._unacked_to_device = False
        self.registrations += 1
        self._pump = asyncio.create_task(self._run(since, self._queue))

    async def _run(self, since: str | None, queue: asyncio.Queue[tuple[int, Any]]) -> None:
        from starling_client.lowbandwidth import LowBandwidthError, ObserveEnded

        try:
            async for body in self.client.observe_sync(since):
                await queue.put((200, body))
        except ObserveEnded as e:
            await queue.put((e.status, e.body))
        except LowBandwidthError as e:
            await queue.put((0, str(e)))

    async def _stop_pump(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump
            self._pump = None

    async def close(self) -> None:
        await self._stop_pump()
        await self.client.close()


async def coap_transport(
    versions: dict[str, Any], homeserver: str, access_token: str
) -> CoapTransport | None:
    """A CoapTransport to the low-bandwidth listener /versions advertises (on the
    homeserver's host; its Noise key learnt over HTTPS), or None if none is offered or
    the handshake fails."""
    import base64
    from urllib.parse import urlsplit

    from starling.protocol.lowbandwidth.coap import FEATURE, NOISE_FEATURE

    advert = versions.get(FEATURE)
    noise_info = advert.get(NOISE_FEATURE) if isinstance(advert, dict) else None
    host = urlsplit(homeserver).hostname
    if not isinstance(noise_info, dict) or host is None:
        return None
    try:
        port = int(noise_info["port"])
        key = base64.b64decode(str(noise_info["public_key"]) + "=" * 3)[:32]
    except (KeyError, TypeError, ValueError):
        return None
    from starling_client.lowbandwidth import LowBandwidthClient, LowBandwidthError

    try:
        client = await LowBandwidthClient.connect(host, port, key)
    except (LowBandwidthError, OSError) as e:
        log.info("CoAP offered but not usable: %s", e)
        return None
    client.access_token = access_token
    return CoapTransport(client)

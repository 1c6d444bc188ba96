"""The WebSocket transport (unstable feature ``org.starling.ws``, docs/transports.md).

GET /_matrix/client/unstable/org.starling.ws/ws upgrades to one WebSocket per client
session. JSON text frames:

- client → ``{"type": "auth", "access_token": ...}`` first (unless the upgrade carried
  ``Authorization: Bearer``; a token in the URL is refused: URLs end up in logs);
- client → ``{"type": "sync", "since"?, "filter"?, "set_presence"?}`` starts the stream;
  the server pushes ``{"type": "sync", "body": <the /sync response>}`` whenever /sync
  would answer something new, each long-poll resuming from the previous ``next_batch``.
  Those chained polls acknowledge nothing (the client may not have processed the pushed
  response): the stream's `since` acknowledges as /sync's does, and so does
- client → ``{"type": "ack", "since": <a next_batch it has processed>}``: its to-device
  messages are deleted; unacknowledged ones come again to a stream resumed from an older
  token (a reconnect), as over HTTP;
- client → ``{"type": "request", "id", "method", "path", "body"?}``, answered by
  ``{"type": "response", "id", "status", "body"}``;
- bad input → ``{"type": "error", "errcode", "error", "id"?}``, the socket stays open.

Sync and requests are dispatched in process through the listener's own application
(router, middlewares, guard) with the session's token, so authentication, rate limits,
validation and errors are exactly those of HTTP; this module adds only the framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web
from yarl import URL

from starling.accounts.auth import Requester
from starling.accounts.service import DeviceListener
from starling.api.inprocess import METHODS, SYNC_NO_ACK, bad_client_path, dispatch
from starling.api.routing import TokenAuthenticator, access_token_from
from starling.config import WebSocketConfig, parse_size
from starling.errors import MatrixError, invalid_param, missing_token
from starling.sync.tokens import SyncToken

logger = logging.getLogger(__name__)

FEATURE = "org.starling.ws"
# The limits are configurable (`websocket:` in the configuration, WebSocketConfig):
# a client frame over max_message_size closes the socket with 1009 (message too big);
# at most max_in_flight request frames are served at once per socket (more are refused
# M_LIMIT_EXCEEDED); a ping every heartbeat seconds (a peer that does not pong within half
# of it is disconnected); the auth frame must come within auth_timeout seconds.
MAX_MESSAGE_BYTES = parse_size(WebSocketConfig.max_message_size)
SYNC_POLL_MS = 30_000
MAX_ID_LENGTH = 128
WS_PATH = f"/_matrix/client/unstable/{FEATURE}/ws"


# (user_id, device_id, token): the device has processed the /sync response whose
# next_batch is `token` (ToDeviceExtension.acknowledge).
Acknowledge = Callable[[str, str, SyncToken], Awaitable[None]]


def _error(e: MatrixError, request_id: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", **e.to_json()}
    if request_id is not None:
        frame["id"] = request_id
    return frame


class WebSocketRoutes:
    def __init__(
        self,
        auth: TokenAuthenticator,
        config: WebSocketConfig,
        add_device_listener: Callable[[DeviceListener], None] | None = None,
        acknowledge: Acknowledge | None = None,
    ) -> None:
        self.auth = auth
        self.config = config
        self.acknowledge = acknowledge
        # Open sockets by (user, device), to close them when the device is deleted
        # (logout); with workers, a logout or deactivation served by another process
        # makes the sockets it may concern check their token again
        # (`invalidated_elsewhere`).
        self.sockets: dict[tuple[str, str], set[_Session]] = {}
        self._revoking: set[asyncio.Task[None]] = set()
        if add_device_listener is not None:
            add_device_listener(self.devices_changed)

    async def devices_changed(self, user_id: str, device_ids: list[str], deleted: bool) -> None:
        """A logged-out (deleted) device's sockets are closed at once."""
        if not deleted:
            return
        for device_id in device_ids:
            for session in list(self.sockets.get((user_id, device_id), ())):
                # Not awaited: closing waits for the client's close frame, and the
                # logout request that got us here must not wait for it.
                task = asyncio.create_task(session.revoke())
                self._revoking.add(task)
                task.add_done_callback(self._revoking.discard)

    def invalidated_elsewhere(self, method: str, args: list[Any]) -> None:
        """Another process revoked access tokens (RequestAuthenticator's relayed
        invalidations): the sockets of that device, user or token check their token
        again and close if it no longer works."""
        if method == "device":
            sessions = set(self.sockets.get((args[0], args[1]), ()))
        elif method == "user":
            sessions = {s for (u, _), group in self.sockets.items() if u == args[0] for s in group}
        elif method == "token":
            sessions = {s for group in self.sockets.values() for s in group if s.token == args[0]}
        else:
            return
        for session in sessions:
            task = asyncio.create_task(self._recheck(session))
            self._revoking.add(task)
            task.add_done_callback(self._revoking.discard)

    async def _recheck(self, session: _Session) -> None:
        if session.token is None:
            return
        try:
            await self.auth.requester_for_token(session.token)
        except MatrixError as e:
            if e.status == 401:
                await session.revoke()

    # GET /_matrix/client/unstable/org.starling.ws/ws
    # (spec: none, Starling's own unstable transport; see docs/transports.md)
    async def connect(self, request: web.Request) -> web.StreamResponse:
        if "access_token" in request.query:
            raise invalid_param("Send the access token in a frame or header, not the URL")
        ws = web.WebSocketResponse(
            heartbeat=self.config.heartbeat,
            compress=True,
            max_msg_size=parse_size(self.config.max_message_size),
        )
        if not ws.can_prepare(request).ok:
            raise MatrixError(400, "M_UNRECOGNIZED", "Expected a WebSocket upgrade")
        token = access_token_from(request)
        requester = await self.auth.requester_for_token(token) if token else None
        await ws.prepare(request)
        await _Session(
            request, ws, self.auth, self.config, requester, token, self.sockets, self.acknowledge
        ).run()
        return ws


class _Session:
    """One socket: authentication, then frames until it closes."""

    def __init__(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        auth: TokenAuthenticator,
        config: WebSocketConfig,
        requester: Requester | None,
        token: str | None,
        registry: dict[tuple[str, str], set[_Session]],
        acknowledge: Acknowledge | None = None,
    ) -> None:
        self.registry = registry
        self.acknowledge = acknowledge
        self.request = request
        self.ws = ws
        self.auth = auth
        self.config = config
        self.requester = requester
        self.token = token
        self.send_lock = asyncio.Lock()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.sync_task: asyncio.Task[None] | None = None
        self.revoking = False
        self.revoked = asyncio.Event()
        self.last_ack: str | None = None

    async def send(self, frame: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        async with self.send_lock:
            with contextlib.suppress(ConnectionError):
                await self.ws.send_str(orjson.dumps(frame).decode())

    async def run(self) -> None:
        try:
            if self.requester is None and not await self.authenticate():
                return
            assert self.requester is not None
            key = self._key()
            if key is not None:
                self.registry.setdefault(key, set()).add(self)
            await self.send(
                {
                    "type": "authenticated",
                    "user_id": self.requester.user_id,
                    "device_id": self.requester.device_id,
                }
            )
            async for message in self.ws:
                if message.type is WSMsgType.TEXT:
                    await self.on_text(message.data)
                elif message.type is WSMsgType.BINARY:
                    await self.send(_error(MatrixError(400, "M_NOT_JSON", "Send text frames")))
        finally:
            if self.revoking:
                # Let the close handshake finish before the connection is torn down
                # (otherwise the client sees 1006 instead of 1008).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.revoked.wait(), self.config.auth_timeout)
            key = self._key()
            if key is not None and key in self.registry:
                self.registry[key].discard(self)
                if not self.registry[key]:
                    del self.registry[key]
            tasks = [*self.in_flight, *([self.sync_task] if self.sync_task else [])]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _key(self) -> tuple[str, str] | None:
        if self.requester is None or self.requester.device_id is None:
            return None
        return self.requester.user_id, self.requester.device_id

    async def revoke(self) -> None:
        """The token is gone (logout, device deleted): tell the client, close."""
        if self.revoked.is_set() or self.revoking:
            return
        self.revoking = True
        try:
            error = MatrixError(401, "M_UNKNOWN_TOKEN", "The access token was logged out")
            await self.send(_error(error))
            with contextlib.suppress(ConnectionError):
                await self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"M_UNKNOWN_TOKEN")
        finally:
            self.revoked.set()

    async def authenticate(self) -> bool:
        """Reads the auth frame; on failure sends an error frame and closes."""
        try:
            try:
                message = await self.ws.receive(timeout=self.config.auth_timeout)
            except TimeoutError:
                raise missing_token() from None
            if message.type is not WSMsgType.TEXT:
                if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                    return False
                raise missing_token()
            frame = self.parse(message.data)
            token = frame.get("access_token")
            if frame.get("type") != "auth" or not isinstance(token, str) or not token:
                raise missing_token()
            self.requester = await self.auth.requester_for_token(token)
            self.token = token
            return True
        except MatrixError as e:
            await self.send(_error(e))
            await self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=e.errcode.encode())
            return False

    @staticmethod
    def parse(data: str) -> dict[str, Any]:
        try:
            frame = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise MatrixError(400, "M_NOT_JSON", "A frame must be a JSON object") from None
        if not isinstance(frame, dict):
            raise MatrixError(400, "M_NOT_JSON", "A frame must be a JSON object")
        return frame

    async def on_text(self, data: str) -> None:
        request_id: str | None = None
        try:
            frame = self.parse(data)
            kind = frame.get("type")
            if kind == "request":
                raw_id = frame.get("id")
                if not isinstance(raw_id, str) or not 0 < len(raw_id) <= MAX_ID_LENGTH:
                    raise invalid_param(f"'id' must be a string of 1-{MAX_ID_LENGTH} characters")
                request_id = raw_id
                self.start_request(raw_id, frame)
            elif kind == "sync":
                self.start_sync(frame)
            elif kind == "ack":
                await self.on_ack(frame)
            elif kind == "auth":
                raise invalid_param("This socket is already authenticated")
            else:
                raise MatrixError(400, "M_UNRECOGNIZED", f"Unknown frame type {kind!r:.40}")
        except MatrixError as e:
            await self.send(_error(e, request_id))

    async def on_ack(self, frame: dict[str, Any]) -> None:
        """`{"type": "ack", "since": T}`: the client has processed the pushed response
        whose next_batch is T. Awaited in frame order (it is one small delete), so an ack
        is done before any later frame is read. No answer unless malformed."""
        since = frame.get("since")
        if not isinstance(since, str):
            raise invalid_param("'since' must be a sync token (a next_batch)")
        token = SyncToken.parse(since)
        assert self.requester is not None
        device_id = self.requester.device_id
        if since == self.last_ack:
            return  # a repeat: nothing more to delete (no write per repeated frame)
        if self.acknowledge is not None and device_id is not None:
            await self.acknowledge(self.requester.user_id, device_id, token)
            self.last_ack = since

    def start_sync(self, frame: dict[str, Any]) -> None:
        if self.sync_task is not None:
            raise invalid_param("This socket is already syncing")
        query: dict[str, str] = {}
        for name in ("since", "set_presence"):
            value = frame.get(name)
            if value is not None:
                if not isinstance(value, str):
                    raise invalid_param(f"'{name}' must be a string")
                query[name] = value
        sync_filter = frame.get("filter")
        if isinstance(sync_filter, dict):
            query["filter"] = orjson.dumps(sync_filter).decode()
        elif isinstance(sync_filter, str):
            query["filter"] = sync_filter
        elif sync_filter is not None:
            raise invalid_param("'filter' must be a filter ID or a filter object")
        self.sync_task = asyncio.create_task(self.sync_stream(query))

    async def sync_stream(self, query: dict[str, str]) -> None:
        """Long-polls /sync from `since`, pushing each answer that moved the token.

        The first poll's `since` is the client's (it has processed that response, so it
        acknowledges, as /sync does); every later `since` is a response we pushed, which
        the client may never process (the socket drops, the client restarts): those
        polls acknowledge nothing, the client does with `ack` frames."""
        since = query.get("since")
        chained = False
        while not self.ws.closed:
            params = dict(query, timeout=str(SYNC_POLL_MS))
            if since is not None:
                params["since"] = since
            status, body = await self.dispatch(
                "GET",
                str(URL("/_matrix/client/v3/sync").with_query(params)),
                None,
                state={SYNC_NO_ACK: True} if chained else None,
            )
            if status != 200 or not isinstance(body, dict):
                body = body if isinstance(body, dict) else {}
                error = MatrixError(
                    status, str(body.get("errcode", "M_UNKNOWN")), str(body.get("error", ""))
                )
                await self.send(dict(_error(error), status=status, stream="sync"))
                self.sync_task = None
                if self._token_gone(status, body):
                    await self.revoke()
                return
            next_batch = body.get("next_batch")
            if since is None or next_batch != since:
                await self.send({"type": "sync", "body": body})
            since = next_batch if isinstance(next_batch, str) else since
            chained = since is not None

    def start_request(self, request_id: str, frame: dict[str, Any]) -> None:
        method = frame.get("method")
        path = frame.get("path")
        if method not in METHODS:
            raise invalid_param(f"'method' must be one of {METHODS}")
        if not isinstance(path, str):
            raise invalid_param("'path' must be a string")
        refused = bad_client_path(path, refused_prefixes=(WS_PATH,))
        if refused is not None:
            raise invalid_param(refused)
        body = None if "body" not in frame else orjson.dumps(frame["body"])
        limit = self.config.max_in_flight
        if len(self.in_flight) >= limit:
            raise MatrixError(429, "M_LIMIT_EXCEEDED", f"At most {limit} requests in flight")
        task = asyncio.create_task(self.answer(request_id, str(method), path, body))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    async def answer(self, request_id: str, method: str, path: str, body: bytes | None) -> None:
        status, answer = await self.dispatch(method, path, body)
        await self.send({"type": "response", "id": request_id, "status": status, "body": answer})
        if self._token_gone(status, answer):
            await self.revoke()

    @staticmethod
    def _token_gone(status: int, body: Any) -> bool:
        return status == 401 and isinstance(body, dict) and body.get("errcode") == "M_UNKNOWN_TOKEN"

    async def dispatch(
        self,
        method: str,
        path: str,
        body: bytes | None,
        state: dict[web.RequestKey[Any], Any] | None = None,
    ) -> tuple[int, Any]:
        """One request through the listener's app as if it came over HTTP with this
        session's token (starling/api/inprocess.py); (status, parsed JSON body)."""
        return await dispatch(
            self.request.app, method, path, body, self.token, template=self.request, state=state
        )

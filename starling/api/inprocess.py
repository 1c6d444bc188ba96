"""In-process dispatch of a Client-Server request through a listener's own application.

The transports beyond HTTPS+JSON (docs/transports.md: the WebSocket, and low-bandwidth
CoAP) carry requests that are not aiohttp requests. Rather than re-implementing
authentication, guest rules, rate limits, validation and errors, they turn each one into
a request on the client listener's aiohttp application (its router, middlewares and
route guards), exactly as if it had come over HTTP with the session's access token, and
read the JSON answer back. This module is that one dispatch; each transport only frames.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http import HttpVersion11, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

logger = logging.getLogger(__name__)

CLIENT_PREFIX = "/_matrix/client/"
METHODS = ("GET", "PUT", "POST", "DELETE")
# Request state (never settable over HTTP: it is not a header or query parameter) that
# makes GET /sync read without acknowledging: the WebSocket's server-chained polls, whose
# `since` is a response the client may not have processed yet (docs/transports.md).
SYNC_NO_ACK = web.RequestKey("starling.sync_no_ack", bool)


def bad_client_path(path: str, *, refused_prefixes: tuple[str, ...] = ()) -> str | None:
    """Why `path` (with its query) may not be dispatched in process, or None if it may:
    it must be a relative Client-Server path; no dot segments; not media (it streams
    files, which these transports do not carry) and not the transports' own endpoints."""
    if not path.startswith(CLIENT_PREFIX):
        return f"'path' must be a path under {CLIENT_PREFIX}"
    try:
        url = URL(path)
    except ValueError:
        return "Malformed 'path'"
    segments = url.raw_path.split("/")
    if (
        url.is_absolute()
        or not url.raw_path.startswith(CLIENT_PREFIX)
        or any(url.raw_path.startswith(p) for p in refused_prefixes)
        or any(segment in (".", "..") for segment in segments)
        or (len(segments) > 4 and segments[4] == "media")
    ):
        return "This path cannot be requested over this transport"
    return None


class _NoConnection:
    """Stands for aiohttp's connection handler: the request came over no HTTP socket."""

    ssl_context = None
    transport = None
    peername = None
    sockname = None
    max_field_size = 8190
    max_line_length = 8190
    max_headers = 128


def synthetic_request(
    app: web.Application,
    method: str,
    path: str,
    headers: dict[str, str],
    *,
    remote: str,
) -> web.Request:
    """A request for `app` that did not arrive over HTTP (no socket, no body stream):
    `remote` is the client's address for rate limits and logs."""
    raw_headers = CIMultiDictProxy(CIMultiDict(headers))
    message = RawRequestMessage(
        method,
        path,
        HttpVersion11,
        raw_headers,
        tuple((k.encode(), v.encode()) for k, v in headers.items()),
        False,  # should_close
        None,  # compression
        False,  # upgrade
        False,  # chunked
        URL(path),
    )
    task = asyncio.current_task()
    assert task is not None
    return web.Request(
        message,
        EMPTY_PAYLOAD,
        _NoConnection(),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]  # no writer: only whole (non-streamed) answers
        task,
        asyncio.get_running_loop(),
        client_max_size=app._client_max_size,
        remote=remote,
    )


async def dispatch(
    app: web.Application,
    method: str,
    path: str,
    body: bytes | None,
    token: str | None,
    *,
    template: web.Request | None = None,
    remote: str = "unknown",
    state: Mapping[web.RequestKey[Any], Any] | None = None,
) -> tuple[int, Any]:
    """Serves one request through `app` with `token` as its bearer; returns (status,
    parsed JSON body). `template` (the WebSocket's upgrade request) is cloned so the
    answer sees its address and listener; without it a synthetic request from `remote`.
    `state`: request state for the handler (e.g. SYNC_NO_ACK)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        if template is not None:
            sub = template.clone(method=method, rel_url=path, headers=headers)
        else:
            sub = synthetic_request(app, method, path, headers, remote=remote)
    except ValueError:
        return 400, {"errcode": "M_INVALID_PARAM", "error": "Malformed path"}
    # The body is the transport message's, never a stream of the original connection.
    sub._read_bytes = body or b""
    for key, value in (state or {}).items():
        sub[key] = value
    try:
        response = await app._handle(sub)
    except Exception:
        logger.exception("In-process request %s %s failed", method, URL(path).path)
        return 500, {"errcode": "M_UNKNOWN", "error": "Internal server error"}
    raw = response.body if isinstance(response, web.Response) else None
    if not isinstance(raw, bytes):
        return 400, {"errcode": "M_UNRECOGNIZED", "error": "Not a JSON endpoint"}
    try:
        return response.status, orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return 400, {"errcode": "M_UNRECOGNIZED", "error": "Not a JSON endpoint"}


def in_process(
    app: web.Application,
) -> Callable[..., Awaitable[tuple[int, Any]]]:
    """The dispatch a transport without an HTTP request of its own (low-bandwidth CoAP)
    is given: the path checks of `bad_client_path`, then `dispatch` from `remote`;
    `acknowledge=False` sets SYNC_NO_ACK (the Observe stream's chained polls)."""

    async def run(
        method: str,
        path: str,
        body: bytes | None,
        token: str | None,
        remote: str,
        *,
        acknowledge: bool = True,
    ) -> tuple[int, Any]:
        if method not in METHODS:
            return 405, {"errcode": "M_UNRECOGNIZED", "error": "Unsupported method"}
        refused = bad_client_path(
            path, refused_prefixes=("/_matrix/client/unstable/org.starling.ws",)
        )
        if refused is not None:
            return 400, {"errcode": "M_INVALID_PARAM", "error": refused}
        state = None if acknowledge else {SYNC_NO_ACK: True}
        return await dispatch(app, method, path, body, token, remote=remote, state=state)

    return run

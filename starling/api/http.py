"""The HTTP edge shared by every listener: errors, CORS, limits, access log, metrics.

One middleware does all of it, in the order a request needs it: answer CORS preflights
before routing can say 405, time the request, turn every failure into the spec's error
JSON (unknown endpoint → 404 `M_UNRECOGNIZED`, wrong method → 405 `M_UNRECOGNIZED`, body
over the limit → 413 `M_TOO_LARGE`, a bug → 500 `M_UNKNOWN` logged with its traceback),
add the CORS headers the spec asks for, then log and count the request (never a secret
from the query string: `loggable_path`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_plus

import orjson
from aiohttp import web

from starling.errors import (
    ConflictError,
    MatrixError,
    bad_json,
    invalid_param,
    not_json,
    too_large,
    unrecognized,
)
from starling.metrics import Counter, Histogram
from starling.protocol.canonical_json import nested_within

logger = logging.getLogger("starling.http")
access_logger = logging.getLogger("starling.access")

# Deepest JSON nesting accepted in a request body: deep enough for any real event
# content, shallow enough that walking it is cheap.
MAX_JSON_DEPTH = 64

CONFLICT = MatrixError(
    409, "M_UNKNOWN", "The request conflicted with a concurrent change; retry it"
)
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization",
}

REQUESTS = Counter(
    "starling_http_requests_total",
    "HTTP requests served, by route, method and status code.",
    ["route", "method", "code"],
)
REQUEST_SECONDS = Histogram(
    "starling_http_request_duration_seconds",
    "Time to serve an HTTP request, by route.",
    ["route", "method"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

USER_ID_KEY = web.RequestKey("user_id", str)
"""Set by authentication, read by the access log."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def error_response(err: MatrixError) -> web.Response:
    return json_response(err.to_json(), status=err.status, headers=err.headers or None)


def parse_json_object(raw: bytes, allow_empty: bool = False) -> dict[str, Any]:
    """A request body as a JSON object, or M_NOT_JSON."""
    if not raw.strip():
        if allow_empty:
            return {}
        raise not_json("Request body is empty; expected a JSON object")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise not_json(f"Content not JSON: {e}") from None
    if not isinstance(value, dict):
        raise not_json("Request body must be a JSON object")
    if not nested_within(value, MAX_JSON_DEPTH):
        raise not_json(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _has_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if "\x00" in v:
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


async def read_json_object(request: web.Request, allow_empty: bool = False) -> dict[str, Any]:
    """Read and parse a client's request body (bounded by the app's client_max_size).

    A string holding NUL is refused (400 M_BAD_JSON): no client text needs it and
    PostgreSQL cannot store it in a text column. (Federation bodies are parsed with
    `parse_json_object`: other servers' events may carry what the spec allows.)
    """
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large() from None
    value = parse_json_object(raw, allow_empty)
    # A JSON text can only hold NUL as an escape; walk the value only when one may be there.
    if b"\\u0000" in raw and _has_nul(value):
        raise bad_json("Strings may not contain NUL characters")
    return value


# Query parameters that carry a secret (the deprecated `?access_token=`, registration and
# login tokens, 3PID client secrets, the OpenID Connect callback's code and state): their
# values never reach a log.
SECRET_QUERY_PARAMS = frozenset(
    {
        "access_token", "token", "login_token", "loginToken", "refresh_token", "client_secret",
        "code", "state",
    }
)  # fmt: skip
MAX_LOGGED_PATH = 400


def loggable_path(path: str, query_string: str) -> str:
    """The path and query for a log line, with secret parameters' values replaced by
    `<redacted>` (names are compared percent-decoded, as the server reads them)."""
    if len(path) >= MAX_LOGGED_PATH:
        path = path[:MAX_LOGGED_PATH] + "..."
    if not query_string:
        return path
    if len(query_string) >= MAX_LOGGED_PATH:
        return path + "?..."
    parts = []
    for pair in query_string.split("&"):
        name, sep, _ = pair.partition("=")
        if unquote_plus(name) in SECRET_QUERY_PARAMS:
            pair = f"{name}{sep or '='}<redacted>"
        parts.append(pair)
    return f"{path}?{'&'.join(parts)}"


def _route_name(request: web.Request) -> str:
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None:
        return "unmatched"
    return str(resource.canonical)


# C0 controls and DEL: no identifier, token or parameter of the API contains one, and NUL
# cannot even be stored in PostgreSQL text.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _refuse_control_characters(request: web.Request) -> None:
    """400 M_INVALID_PARAM for a control character in the decoded path or query."""
    if _CONTROL.search(request.path) or any(
        _CONTROL.search(k) or _CONTROL.search(v) for k, v in request.query.items()
    ):
        raise invalid_param("Control characters are not allowed in the path or query")


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    response: web.StreamResponse
    if request.method == "OPTIONS":
        response = web.Response(status=204)
    else:
        try:
            _refuse_control_characters(request)
            response = await handler(request)
        except MatrixError as e:
            response = error_response(e)
        except web.HTTPException as e:
            response = _http_exception_response(e)
        except ConflictError:
            # A race no service expected: a bug to fix, but the client's retry can succeed.
            logger.warning("Conflict serving %s %s", request.method, request.path, exc_info=True)
            response = error_response(CONFLICT)
        except Exception:
            logger.exception("Unhandled error serving %s %s", request.method, request.path)
            response = error_response(MatrixError(500, "M_UNKNOWN", "Internal server error"))
    if not response.prepared:
        response.headers.update(CORS_HEADERS)
    elapsed = time.perf_counter() - start
    route = _route_name(request)
    REQUESTS.labels(route, request.method, str(response.status)).inc()
    REQUEST_SECONDS.labels(route, request.method).observe(elapsed)
    if access_logger.isEnabledFor(logging.INFO):
        # Written once this task yields: after its response and after any /sync this
        # request woke (those were scheduled first), not in front of them.
        asyncio.get_running_loop().call_soon(
            access_logger.info,
            '%s "%s %s" %d %.1fms user=%s',
            request.remote,
            request.method,
            loggable_path(request.path, request.query_string),
            response.status,
            elapsed * 1000,
            request.get(USER_ID_KEY, "-"),
        )
    return response


def _http_exception_response(e: web.HTTPException) -> web.Response:
    if isinstance(e, web.HTTPNotFound):
        return error_response(unrecognized(404, "Unrecognized request"))
    if isinstance(e, web.HTTPMethodNotAllowed):
        return error_response(unrecognized(405, "Unrecognized request: method not allowed"))
    if isinstance(e, web.HTTPRequestEntityTooLarge):
        return error_response(too_large())
    if 300 <= e.status < 400:
        return web.Response(status=e.status, headers=e.headers)
    code = "M_UNKNOWN" if e.status >= 500 else "M_UNRECOGNIZED"
    return error_response(MatrixError(e.status, code, e.reason or "Error"))


def forwarded_client(x_forwarded_for: str | None) -> str | None:
    """The client address a reverse proxy reports: the last `X-Forwarded-For` entry,
    which the proxy itself added (earlier entries are whatever the client claimed).
    None when absent or not an IP address."""
    if not x_forwarded_for:
        return None
    candidate = x_forwarded_for.rsplit(",", 1)[-1].strip()
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


@web.middleware
async def forwarded_for_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On a listener behind a trusted proxy (`x_forwarded: true`): the request's
    `remote` is the client's address, for per-address limits and the access log."""
    client = forwarded_client(request.headers.get("X-Forwarded-For"))
    if client is not None:
        request = request.clone(remote=client)
    return await handler(request)


def make_web_app(max_body_size: int, *, x_forwarded: bool = False) -> web.Application:
    """An aiohttp application with the Matrix edge behaviour; routes are added by the caller.
    `x_forwarded` believes the proxy's `X-Forwarded-For` (only for listeners marked so:
    anywhere else a client could name its own address)."""
    middlewares = [forwarded_for_middleware] if x_forwarded else []
    return web.Application(
        middlewares=[*middlewares, edge_middleware], client_max_size=max_body_size
    )

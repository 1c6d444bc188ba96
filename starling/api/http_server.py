"""The HTTP server under every listener: request-line and header limits answered as Matrix
errors.

aiohttp parses the request line and headers before any of our code runs, and answers a
request it cannot parse with its own plain-text 400. The limits are chosen here, and
those answers are JSON: a request line over MAX_LINE_BYTES is 414 `M_TOO_LARGE`, a header
over MAX_FIELD_BYTES or more than MAX_HEADERS headers is 431 `M_TOO_LARGE`, anything else
unparsable is 400 `M_UNRECOGNIZED`.

The limits are generous for real clients (an inline /sync filter in the query string, an
access token, cookies from a proxy) and bounded for everyone else. A token within them
but longer than any we issue is 401 `M_UNKNOWN_TOKEN` (accounts/auth.py).

aiohttp offers no hook for its parse errors, so the request handler is subclassed and
created by a Server subclass; tests/api/test_http_limits.py guards the behaviour against
aiohttp upgrades.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

MAX_LINE_BYTES = 16 * 1024
MAX_FIELD_BYTES = 16 * 1024
MAX_HEADERS = 128

HANDLER_ARGS: dict[str, Any] = {
    "max_line_size": MAX_LINE_BYTES,
    "max_field_size": MAX_FIELD_BYTES,
    "max_headers": MAX_HEADERS,
}


def _parse_error_response(exc: BaseException | None) -> tuple[int, str, str]:
    if isinstance(exc, LineTooLong):
        snippet = exc.args[0] if exc.args else b""
        if isinstance(snippet, (bytes, bytearray)) and snippet[:1] in (b"/", b"*", b"h"):
            # The request target ("/...", "*" or an absolute "http..." URL).
            return 414, "M_TOO_LARGE", f"Request line longer than {MAX_LINE_BYTES} bytes"
        return 431, "M_TOO_LARGE", f"Request header longer than {MAX_FIELD_BYTES} bytes"
    if isinstance(exc, BadHttpMessage) and "too many headers" in str(exc).lower():
        return 431, "M_TOO_LARGE", f"More than {MAX_HEADERS} request headers"
    return 400, "M_UNRECOGNIZED", "Malformed HTTP request"


class MatrixRequestHandler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400:
            return super().handle_error(request, status, exc, message)
        # A request aiohttp could not parse: log quietly (clients and scanners do this).
        self.logger.debug("Unparsable request from %s: %r", request.remote, exc)
        code, errcode, error = _parse_error_response(exc)
        resp = web.Response(
            status=code,
            body=orjson.dumps({"errcode": errcode, "error": error}),
            content_type="application/json",
        )
        resp.force_close()
        return resp


class MatrixServer(web.Server):
    def __call__(self) -> RequestHandler:
        return MatrixRequestHandler(self, loop=self._loop, **self._kwargs)


class MatrixAppRunner(web.AppRunner):
    """web.AppRunner whose connections answer parse errors with Matrix errors."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **{**HANDLER_ARGS, **kwargs})

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return MatrixServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )

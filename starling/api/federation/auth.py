"""Inbound request authentication for every federation endpoint (spec: Server-Server API
> Authentication > Request Authentication).

`authenticate_origin(request)` returns the origin server of a request or raises:
* 401 M_UNAUTHORIZED: no or malformed X-Matrix header, a `destination` that is not this
  server, an origin claiming to be this server, no key of the origin's to check with, or
  a signature that does not verify (over method, raw URI as sent, origin, destination and
  the JSON body);
* 403 M_FORBIDDEN: the origin is outside `federation_domain_whitelist`;
* 400 M_NOT_JSON: a body that is not JSON; 413 M_TOO_LARGE: a body over the limit;
* 429 M_LIMIT_EXCEEDED: `rc_federation` refused the origin (it may also delay the
  request, or queue it behind the origin's `concurrent` requests in progress).

Then every `on_inbound_request(origin)` hook of the transport runs (the sender resets its
backoff for that server). The parsed body is kept: handlers read it with
`federation_body(request)`. The rate-limit slot is released by `release_slot_middleware`
when the handler is done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from starling.api.http import USER_ID_KEY, Handler, parse_json_object
from starling.errors import MatrixError, forbidden, not_json, too_large
from starling.federation.errors import SignatureVerifyError
from starling.federation.transport import FederationTransport
from starling.protocol.signing import ED25519
from starling.protocol.x_matrix import XMatrixError, parse_header, verify_request

logger = logging.getLogger(__name__)


def unauthorized(msg: str) -> MatrixError:
    return MatrixError(401, "M_UNAUTHORIZED", msg)


ORIGIN_KEY = web.RequestKey("federation_origin", str)
_BODY_KEY = web.RequestKey("federation_body", object)
_RELEASE_KEY = web.RequestKey("federation_release", object)
_NO_BODY = object()


class OriginAuthenticator:
    def __init__(
        self,
        server_name: str,
        transport: FederationTransport,
        domain_whitelist: list[str] | None,
    ) -> None:
        self._server_name = server_name
        self._transport = transport
        self._whitelist = None if domain_whitelist is None else frozenset(domain_whitelist)

    @property
    def on_inbound_request(self) -> list[Callable[[str], object]]:
        """Hooks called with the origin of every authenticated request."""
        return self._transport.on_inbound_request

    async def authenticate(self, request: web.Request) -> str:
        header = next(
            (h for h in request.headers.getall("Authorization", []) if h[:8].lower() == "x-matrix"),
            None,
        )
        if header is None:
            raise unauthorized("Missing X-Matrix Authorization header")
        try:
            auth = parse_header(header)
        except XMatrixError as e:
            # A header that does not parse (bad syntax, an origin that is not a server
            # name) is a malformed request, 400 (as Synapse); one that parses but does
            # not verify is 401.
            raise MatrixError(400, "M_UNAUTHORIZED", f"Malformed X-Matrix header: {e}") from None
        if not auth.key.startswith(ED25519 + ":"):
            # No other algorithm exists: refused without fetching the origin's keys.
            raise unauthorized(f"Unsupported key algorithm in {auth.key!r}")
        if auth.origin == self._server_name:
            raise unauthorized("Requests from this server's own name are not accepted")
        if auth.destination is not None and auth.destination != self._server_name:
            raise unauthorized(f"Request is for {auth.destination}, not {self._server_name}")
        if self._whitelist is not None and auth.origin not in self._whitelist:
            raise forbidden(f"Federation with {auth.origin} is not allowed")
        content = await _read_body(request)
        keyring = self._transport.keyring
        try:
            key = await keyring.get_verify_key(auth.origin, auth.key, keyring.now_ms())
        except SignatureVerifyError as e:
            raise unauthorized(f"Cannot check the request signature: {e}") from None
        try:
            verify_request(
                auth,
                key,
                method=request.method,
                uri=request.raw_path,
                our_server_name=self._server_name,
                content=None if content is _NO_BODY else content,
            )
        except XMatrixError as e:
            raise unauthorized(str(e)) from None
        request[_BODY_KEY] = content
        request[ORIGIN_KEY] = auth.origin
        request[USER_ID_KEY] = auth.origin
        release = await self._transport.rate_limiter.acquire(auth.origin)
        request[_RELEASE_KEY] = release
        for hook in self._transport.on_inbound_request:
            try:
                hook(auth.origin)
            except Exception:
                logger.exception("on_inbound_request hook failed for %s", auth.origin)
        return auth.origin


FEDERATION_AUTH = web.AppKey("federation_auth", OriginAuthenticator)


async def authenticate_origin(request: web.Request) -> str:
    """The authenticated origin server of `request` (see the module docstring)."""
    if ORIGIN_KEY in request:
        return request[ORIGIN_KEY]
    return await request.config_dict[FEDERATION_AUTH].authenticate(request)


def federation_body(request: web.Request) -> dict[str, Any]:
    """The JSON object body of an authenticated request; 400 M_NOT_JSON if the body is
    missing or not an object."""
    content = request.get(_BODY_KEY, _NO_BODY)
    if not isinstance(content, dict):
        raise not_json("Request body must be a JSON object")
    return content


async def _read_body(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large() from None
    if not raw.strip():
        return _NO_BODY
    return parse_json_object(raw)


@web.middleware
async def release_slot_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Gives the origin's rate-limit slot back when the request is done."""
    try:
        return await handler(request)
    finally:
        release = request.get(_RELEASE_KEY)
        if callable(release):
            release()

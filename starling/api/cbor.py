"""CBOR bodies over HTTP (MSC3079 "JSON -> CBOR"; docs/transports.md).

MSC3079 lists "accept application/cbor" among what a server advertising low-bandwidth
support must do, on HTTP as on CoAP. This middleware, on client listeners, turns a
request body sent as `Content-Type: application/cbor` into the JSON the handlers read,
and a JSON answer into CBOR when the request's `Accept` names `application/cbor` — and
only then (a JSON request without that Accept is never answered in CBOR). Integer keys
(the MSC's version 1 map) are used in answers only if the client used them in its body
(MSC3079 "Versioning": numeric keys from the client mean it speaks version 1). Media
(files, not JSON) is left alone.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from starling.api.http import Handler, error_response
from starling.errors import MatrixError

CBOR = "application/cbor"


def _wants_cbor(request: web.Request) -> bool:
    return any(
        part.split(";", 1)[0].strip().lower() == CBOR
        for part in request.headers.get("Accept", "").split(",")
    )


def _to_cbor(response: web.Response, integer_keys: bool) -> web.Response:
    from starling.protocol.lowbandwidth import codec  # cbor2: loaded on first use

    raw = response.body
    if not isinstance(raw, bytes) or response.content_type != "application/json":
        return response
    try:
        value = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return response
    converted = web.Response(
        body=codec.encode(value, integer_keys=integer_keys),
        status=response.status,
        content_type=CBOR,
    )
    for name, header in response.headers.items():
        if name.lower() not in ("content-type", "content-length"):
            converted.headers[name] = header
    return converted


@web.middleware
async def cbor_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/_matrix/client/"):
        return await handler(request)
    wants = _wants_cbor(request)
    integer_keys = False
    if request.content_type == CBOR and request.can_read_body:
        # cbor2 is loaded on the first CBOR request (~0.8 MiB of idle memory otherwise).
        from starling.protocol.lowbandwidth import codec

        try:
            raw = await request.read()
            decoded = codec.loads(raw)
            value = codec.expand(decoded)
        except web.HTTPRequestEntityTooLarge:
            error = MatrixError(413, "M_TOO_LARGE", "Request body too large")
            return _answer(error_response(error), wants, False)
        except codec.CodecError as e:
            return _answer(error_response(MatrixError(400, e.errcode, str(e))), wants, False)
        integer_keys = codec.uses_integer_keys(decoded)
        # The handlers read JSON; the body is replaced before any of them reads it.
        request._read_bytes = orjson.dumps(value)
    response = await handler(request)
    return _answer(response, wants, integer_keys)


def _answer(response: web.StreamResponse, wants: bool, integer_keys: bool) -> web.StreamResponse:
    if wants and isinstance(response, web.Response) and not response.prepared:
        return _to_cbor(response, integer_keys)
    return response

"""This server's media, for other servers (spec v1.11+ authenticated media).

GET /_matrix/federation/v1/media/download/{mediaId}   (server-server-api/#get_matrixfederationv1mediadownloadmediaid)
GET /_matrix/federation/v1/media/thumbnail/{mediaId}  (server-server-api/#get_matrixfederationv1mediathumbnailmediaid)

Only media uploaded here is served (never media this server cached from others); the
answer is `multipart/mixed` with exactly two parts: an empty JSON object (the metadata),
then the bytes with their `Content-Type` and `Content-Disposition`. Quarantined media is
404 like unknown media. The file is streamed from disk, never read whole into memory.
"""

from __future__ import annotations

import asyncio
import secrets

from aiohttp import web

from starling.api.client.common import query_bool, query_int
from starling.api.media import content_disposition, media_headers
from starling.api.routing import Auth, Route, get
from starling.errors import MatrixError, missing_param
from starling.media.service import DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS, MediaFile, MediaService

_CHUNK = 256 * 1024


def _dimension(request: web.Request, name: str) -> int:
    if name not in request.query:
        raise missing_param(f"Missing '{name}'")
    return query_int(request, name, 0, minimum=1, maximum=10_000)


async def multipart_file_response(
    request: web.Request, f: MediaFile, *, force_inline: bool = False
) -> web.StreamResponse:
    """The spec's two-part answer: `{}` as application/json, then the file."""
    boundary = secrets.token_hex(16)
    headers = media_headers(f.content_type, f.upload_name, authenticated=True)
    if force_inline:
        headers["Content-Disposition"] = content_disposition("inline", f.upload_name)
    head = (
        f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n"
        f"--{boundary}\r\nContent-Type: {headers['Content-Type']}\r\n"
        f"Content-Disposition: {headers['Content-Disposition']}\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    response = web.StreamResponse(headers={"Content-Type": f"multipart/mixed; boundary={boundary}"})
    response.content_length = len(head) + f.length + len(tail)
    source = await asyncio.to_thread(open, f.path, "rb")
    try:
        await response.prepare(request)
        await response.write(head)
        remaining = f.length
        while remaining > 0:
            chunk = await asyncio.to_thread(source.read, min(_CHUNK, remaining))
            if not chunk:
                # The file is shorter than its row says: nothing sane can follow.
                raise ConnectionResetError("media file shorter than recorded")
            remaining -= len(chunk)
            await response.write(chunk)
        await response.write(tail)
        await response.write_eof()
    finally:
        await asyncio.to_thread(source.close)
    return response


class FederationMediaApi:
    def __init__(self, media: MediaService) -> None:
        self._media = media

    def _timeout_ms(self, request: web.Request) -> int:
        return query_int(request, "timeout_ms", DEFAULT_TIMEOUT_MS, maximum=MAX_TIMEOUT_MS)

    async def download(self, request: web.Request) -> web.StreamResponse:
        """GET /_matrix/federation/v1/media/download/{mediaId}
        (spec: server-server-api/#get_matrixfederationv1mediadownloadmediaid)"""
        f = await self._media.download(
            self._media.server_name,
            request.match_info["mediaId"],
            authenticated=True,
            timeout_ms=self._timeout_ms(request),
            allow_remote=False,
        )
        return await multipart_file_response(request, f)

    async def thumbnail(self, request: web.Request) -> web.StreamResponse:
        """GET /_matrix/federation/v1/media/thumbnail/{mediaId}
        (spec: server-server-api/#get_matrixfederationv1mediathumbnailmediaid)"""
        width = _dimension(request, "width")
        height = _dimension(request, "height")
        method = request.query.get("method", "scale")
        if method not in ("crop", "scale"):
            raise MatrixError(400, "M_INVALID_PARAM", "method must be crop or scale")
        f = await self._media.thumbnail(
            self._media.server_name,
            request.match_info["mediaId"],
            width,
            height,
            method,
            animated=query_bool(request, "animated", False),
            authenticated=True,
            timeout_ms=self._timeout_ms(request),
            allow_remote=False,
        )
        return await multipart_file_response(request, f, force_inline=True)

    def routes(self) -> list[Route]:
        """This area's rows of `routes.federation_table` (v1, X-Matrix)."""
        return [
            get("/media/download/{mediaId}", self.download, Auth.FEDERATION),
            get("/media/thumbnail/{mediaId}", self.thumbnail, Auth.FEDERATION),
        ]

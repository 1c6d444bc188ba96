"""Media repository endpoints: the authenticated `/_matrix/client/v1/media/*` (spec v1.11+)
and the older `/_matrix/media/{r0,v1,v3}/*`, both thin over `MediaService`.

Spec: client-server-api, "Content repository".

Every file sent back carries headers that keep a browser from running it as part of a web
page: `Content-Disposition: inline` only for the spec's list of safe types (`attachment`
otherwise), a sandboxing `Content-Security-Policy`, `X-Content-Type-Options: nosniff`, and
`Cross-Origin-Resource-Policy: cross-origin` so web clients may embed it.
Upload bodies are streamed to disk (bounded by `max_upload_size`), never read into memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

from aiohttp import web

from starling.api.client.common import query_bool, query_int
from starling.api.http import json_response
from starling.api.routing import Auth, RouteTable, get, post, put, requester_of
from starling.api.services import Services
from starling.errors import MatrixError, missing_param
from starling.media.service import DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS, MediaFile, MediaService

CSP = (
    "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; "
    "style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"
)

# Spec: "Serving inline content" — types a browser will not run as a page.
INLINE_TYPES = frozenset(
    {
        "text/css",
        "text/plain",
        "text/csv",
        "application/json",
        "application/ld+json",
        "image/jpeg",
        "image/gif",
        "image/png",
        "image/apng",
        "image/webp",
        "image/avif",
        "video/mp4",
        "video/webm",
        "video/ogg",
        "video/quicktime",
        "audio/mp4",
        "audio/webm",
        "audio/aac",
        "audio/mpeg",
        "audio/ogg",
        "audio/wave",
        "audio/wav",
        "audio/x-wav",
        "audio/x-pn-wav",
        "audio/flac",
        "audio/x-flac",
    }
)

# RFC 5987 attr-char: what may stay unescaped in filename*=.
_ATTR_SAFE = "!#$&+-.^_`|~"
_CHUNK = 64 * 1024


def content_disposition(disposition: str, filename: str | None) -> str:
    """`inline`/`attachment` with the file name per RFC 6266: a quoted `filename` when it is
    plain printable ASCII, else an RFC 5987 `filename*` in UTF-8."""
    if not filename:
        return disposition
    if all(0x20 <= ord(c) < 0x7F and c not in '"\\' for c in filename):
        return f'{disposition}; filename="{filename}"'
    return f"{disposition}; filename*=utf-8''{quote(filename, safe=_ATTR_SAFE)}"


def _base_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def media_headers(
    content_type: str, filename: str | None, *, authenticated: bool, force_inline: bool = False
) -> dict[str, str]:
    base = _base_type(content_type)
    if base.startswith("text/") and "charset" not in content_type.lower():
        content_type = f"{content_type}; charset=utf-8"
    inline = force_inline or base in INLINE_TYPES
    return {
        "Content-Type": content_type,
        "Content-Disposition": content_disposition("inline" if inline else "attachment", filename),
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Resource-Policy": "cross-origin",
        "Referrer-Policy": "no-referrer",
        # Media never changes; authenticated media must not sit in shared caches.
        "Cache-Control": f"{'private' if authenticated else 'public'}, max-age=86400",
    }


def file_response(
    f: MediaFile, filename: str | None, *, authenticated: bool, force_inline: bool = False
) -> web.FileResponse:
    headers = media_headers(
        f.content_type, filename, authenticated=authenticated, force_inline=force_inline
    )
    return web.FileResponse(f.path, headers=headers)


async def _body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(_CHUNK):
        yield chunk


def _timeout_ms(request: web.Request) -> int:
    return query_int(request, "timeout_ms", DEFAULT_TIMEOUT_MS, maximum=MAX_TIMEOUT_MS)


def _required_dimension(request: web.Request, name: str) -> int:
    if name not in request.query:
        raise missing_param(f"Missing '{name}'")
    return query_int(request, name, 0, minimum=1, maximum=10_000)


class MediaResource:
    def __init__(self, media: MediaService) -> None:
        self._media = media

    # GET /_matrix/client/v1/media/config
    # GET /_matrix/media/v3/config
    # (spec: client-server-api/#get_matrixclientv1mediaconfig)
    async def config(self, request: web.Request) -> web.Response:
        return json_response(self._media.media_config())

    # GET /_matrix/media/unstable/org.matrix.msc4034/usage
    # (spec: MSC4034 "Media limits API, space usage"; Starling adds io.starling.upload_limits)
    async def usage(self, request: web.Request) -> web.Response:
        return json_response(await self._media.usage(requester_of(request).user_id))

    # POST /_matrix/media/v3/upload
    # (spec: client-server-api/#post_matrixmediav3upload)
    async def upload(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        mxc = await self._media.upload(
            requester.user_id,
            _body_chunks(request),
            content_type=request.headers.get("Content-Type"),
            upload_name=request.query.get("filename"),
            declared_length=request.content_length,
        )
        return json_response({"content_uri": mxc})

    # POST /_matrix/media/v1/create
    # (spec: client-server-api/#post_matrixmediav1create)
    async def create(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        mxc, expires = await self._media.create(requester.user_id)
        return json_response({"content_uri": mxc, "unused_expires_at": expires})

    # PUT /_matrix/media/v3/upload/{serverName}/{mediaId}
    # (spec: client-server-api/#put_matrixmediav3uploadservernamemediaid)
    async def upload_to(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        await self._media.upload_to(
            requester.user_id,
            request.match_info["serverName"],
            request.match_info["mediaId"],
            _body_chunks(request),
            content_type=request.headers.get("Content-Type"),
            upload_name=request.query.get("filename"),
            declared_length=request.content_length,
        )
        return json_response({})

    # GET /_matrix/client/v1/media/download/{serverName}/{mediaId}
    # GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}
    # (spec: client-server-api/#get_matrixclientv1mediadownloadservernamemediaid)
    async def download_authenticated(self, request: web.Request) -> web.FileResponse:
        return await self._download(request, authenticated=True)

    # GET /_matrix/media/v3/download/{serverName}/{mediaId}
    # GET /_matrix/media/v3/download/{serverName}/{mediaId}/{fileName}
    # (spec: client-server-api/#get_matrixmediav3downloadservernamemediaid)
    async def download_legacy(self, request: web.Request) -> web.FileResponse:
        return await self._download(request, authenticated=False)

    async def _download(self, request: web.Request, *, authenticated: bool) -> web.FileResponse:
        f = await self._media.download(
            request.match_info["serverName"],
            request.match_info["mediaId"],
            authenticated=authenticated,
            timeout_ms=_timeout_ms(request),
            allow_remote=authenticated or query_bool(request, "allow_remote", True),
            client_ip=request.remote,
        )
        filename = request.match_info.get("fileName") or f.upload_name
        return file_response(f, filename, authenticated=authenticated)

    # GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}
    # (spec: client-server-api/#get_matrixclientv1mediathumbnailservernamemediaid)
    async def thumbnail_authenticated(self, request: web.Request) -> web.FileResponse:
        return await self._thumbnail(request, authenticated=True)

    # GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}
    # (spec: client-server-api/#get_matrixmediav3thumbnailservernamemediaid)
    async def thumbnail_legacy(self, request: web.Request) -> web.FileResponse:
        return await self._thumbnail(request, authenticated=False)

    async def _thumbnail(self, request: web.Request, *, authenticated: bool) -> web.FileResponse:
        width = _required_dimension(request, "width")
        height = _required_dimension(request, "height")
        method = request.query.get("method", "scale")
        if method not in ("crop", "scale"):
            raise MatrixError(400, "M_INVALID_PARAM", "method must be crop or scale")
        f = await self._media.thumbnail(
            request.match_info["serverName"],
            request.match_info["mediaId"],
            width,
            height,
            method,
            animated=query_bool(request, "animated", False),
            authenticated=authenticated,
            timeout_ms=_timeout_ms(request),
            allow_remote=authenticated or query_bool(request, "allow_remote", True),
            client_ip=request.remote,
        )
        return file_response(f, f.upload_name, authenticated=authenticated, force_inline=True)

    # GET /_matrix/client/v1/media/preview_url
    # GET /_matrix/media/v3/preview_url
    # (spec: client-server-api/#get_matrixclientv1mediapreview_url)
    async def preview_url(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        url = request.query.get("url")
        if not url:
            raise missing_param("Missing 'url'")
        query_int(request, "ts", 0, maximum=2**62)  # validated; any cached version will do
        return json_response(await self._media.preview_url(requester.user_id, url))


def media_tables(services: Services) -> tuple[RouteTable, RouteTable]:
    """The authenticated media API under /_matrix/client/v1/media (client listeners), and
    the deprecated /_matrix/media/{r0,v1,v3} (client and media listeners)."""
    r = MediaResource(services.media)
    ids = "{serverName}/{mediaId}"
    client = RouteTable(
        "media",
        "/_matrix/client/{version}/media",
        ("v1",),
        [
            get("/config", r.config),
            get(f"/download/{ids}", r.download_authenticated, guests=True),
            get(f"/download/{ids}/{{fileName}}", r.download_authenticated, guests=True),
            get(f"/thumbnail/{ids}", r.thumbnail_authenticated, guests=True),
            get("/preview_url", r.preview_url),
        ],
    )
    legacy = RouteTable(
        "media (deprecated)",
        "/_matrix/media/{version}",
        ("r0", "v1", "v3"),
        [
            get("/config", r.config),
            post("/upload", r.upload),
            put(f"/upload/{ids}", r.upload_to),
            post("/create", r.create),
            get(f"/download/{ids}", r.download_legacy, Auth.NONE),
            get(f"/download/{ids}/{{fileName}}", r.download_legacy, Auth.NONE),
            get(f"/thumbnail/{ids}", r.thumbnail_legacy, Auth.NONE),
            get("/preview_url", r.preview_url),
            get("/usage", r.usage, versions=("unstable/org.matrix.msc4034",)),
        ],
    )
    return client, legacy

"""Other servers' media, fetched for our clients (the `RemoteMediaFetcher` of the media
repository).

Spec: server-server-api, "Content Repository" (v1.11+):
GET /_matrix/federation/v1/media/download/{mediaId}, signed, answered with
`multipart/mixed`: a JSON part (metadata, an empty object today), then either the bytes
(with their `Content-Type` and `Content-Disposition`) or a `Location` header naming where
to fetch them. A server that does not know that endpoint (404/400/405 with no error
code or `M_UNRECOGNIZED`, as servers older than v1.11 answer) is asked the legacy
GET /_matrix/media/v3/download/{serverName}/{mediaId}?allow_remote=false instead.

Everything is streamed (the media repository writes it to disk, bounded by its size
limit); URLs given by `Location` or a redirect are fetched unsigned through the same IP
range rules (`ip_range_blacklist`) as federation. The media repository caches what comes
back and serialises concurrent fetches of one media.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
import orjson
from yarl import URL

from starling.errors import MatrixError, not_found
from starling.federation.client import FederationClient, federation_path
from starling.federation.errors import FederationDenied, FederationUnreachable
from starling.media.service import RemoteMedia, not_yet_uploaded

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024
MAX_ERROR_BODY = 64 * 1024
MAX_METADATA = 64 * 1024
# The whole download may take this long at least (the client's timeout_ms bounds each
# wait for data, not a large file's transfer).
MIN_TOTAL_SECONDS = 120.0
_UNSUPPORTED_STATUSES = (400, 404, 405, 501)


def _remote_error(message: str) -> MatrixError:
    return MatrixError(502, "M_UNKNOWN", message)


def _too_large() -> MatrixError:
    return MatrixError(502, "M_TOO_LARGE", "Remote content is too large")


class _Unsupported(Exception):
    """The server does not serve the authenticated federation media endpoint."""


async def _error_of(response: aiohttp.ClientResponse) -> str | None:
    """The errcode of an error answer (None when it has none)."""
    body = b""
    async for chunk in response.content.iter_chunked(CHUNK):
        body += chunk
        if len(body) > MAX_ERROR_BODY:
            return None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    errcode = value.get("errcode") if isinstance(value, dict) else None
    return errcode if isinstance(errcode, str) else None


def _check_length(response: aiohttp.ClientResponse, max_bytes: int) -> None:
    if response.content_length is not None and response.content_length > max_bytes:
        raise _too_large()


async def _response_chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.content.iter_chunked(CHUNK):
            yield chunk
    except (aiohttp.ClientError, TimeoutError) as e:
        raise _remote_error(f"Remote media transfer failed: {type(e).__name__}") from None


async def _part_chunks(part: aiohttp.BodyPartReader) -> AsyncIterator[bytes]:
    try:
        while chunk := await part.read_chunk(CHUNK):
            yield chunk
    except (aiohttp.ClientError, TimeoutError, ValueError, AssertionError) as e:
        raise _remote_error(f"Remote media transfer failed: {type(e).__name__}") from None


class FederationMediaFetcher:
    def __init__(self, client: FederationClient) -> None:
        self._client = client

    @asynccontextmanager
    async def fetch(
        self, server_name: str, media_id: str, *, max_bytes: int, timeout_ms: int
    ) -> AsyncIterator[RemoteMedia | None]:
        """The media of `server_name` (None when it has no such media), streamed while
        the context is open. Raises MatrixError 502 when the server cannot be reached or
        answers nonsense, 504 M_NOT_YET_UPLOADED when it says so."""
        timeout = max(timeout_ms, 1000) / 1000
        total = max(timeout, MIN_TOTAL_SECONDS)
        async with AsyncExitStack() as stack:
            try:
                try:
                    media = await self._authenticated(
                        stack, server_name, media_id, max_bytes, timeout, total
                    )
                except _Unsupported:
                    media = await self._legacy(
                        stack, server_name, media_id, max_bytes, timeout, total
                    )
            except FederationDenied:
                raise not_found("Media not found") from None
            except FederationUnreachable as e:
                logger.info("remote media %s/%s: %s", server_name, media_id, e)
                raise _remote_error(f"Could not reach {server_name}") from None
            yield media

    async def _authenticated(
        self,
        stack: AsyncExitStack,
        server_name: str,
        media_id: str,
        max_bytes: int,
        timeout: float,
        total: float,
    ) -> RemoteMedia | None:
        response = await stack.enter_async_context(
            self._client.stream_get(
                server_name,
                federation_path("/_matrix/federation/v1/media/download/{}", media_id),
                {"timeout_ms": int(timeout * 1000)},
                timeout=timeout,
                total_timeout=total,
            )
        )
        if response.status != 200:
            errcode = await self._status_error(response)
            if response.status in _UNSUPPORTED_STATUSES and errcode in (None, "M_UNRECOGNIZED"):
                raise _Unsupported()
            return None
        if response.content_type != "multipart/mixed":
            # Not what the spec says, but plainly the media: taken as it is.
            _check_length(response, max_bytes)
            return RemoteMedia(
                response.headers.get("Content-Type"),
                response.content_disposition.filename if response.content_disposition else None,
                _response_chunks(response),
            )
        try:
            reader = aiohttp.MultipartReader(response.headers, response.content)
            metadata = await reader.next()
            if not isinstance(metadata, aiohttp.BodyPartReader):
                raise ValueError("no metadata part")
            size = 0
            while chunk := await metadata.read_chunk(CHUNK):
                size += len(chunk)
                if size > MAX_METADATA:
                    raise ValueError("metadata part too large")
            part = await reader.next()
            if not isinstance(part, aiohttp.BodyPartReader):
                raise ValueError("no media part")
        except (aiohttp.ClientError, TimeoutError) as e:
            raise _remote_error(f"Remote media transfer failed: {type(e).__name__}") from None
        except (ValueError, AssertionError, KeyError) as e:
            logger.info("remote media %s/%s: bad multipart answer: %s", server_name, media_id, e)
            raise _remote_error(f"{server_name} answered an unreadable multipart body") from None
        location = part.headers.get("Location")
        if location is not None:
            return await self._follow(stack, location, max_bytes, timeout, total)
        return RemoteMedia(part.headers.get("Content-Type"), part.filename, _part_chunks(part))

    async def _legacy(
        self,
        stack: AsyncExitStack,
        server_name: str,
        media_id: str,
        max_bytes: int,
        timeout: float,
        total: float,
    ) -> RemoteMedia | None:
        response = await stack.enter_async_context(
            self._client.stream_get(
                server_name,
                federation_path("/_matrix/media/v3/download/{}/{}", server_name, media_id),
                {"allow_remote": "false", "timeout_ms": int(timeout * 1000)},
                timeout=timeout,
                total_timeout=total,
            )
        )
        if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
            location = str(response.url.join(URL(response.headers["Location"])))
            return await self._follow(stack, location, max_bytes, timeout, total)
        if response.status != 200:
            await self._status_error(response)
            return None
        _check_length(response, max_bytes)
        return RemoteMedia(
            response.headers.get("Content-Type"),
            response.content_disposition.filename if response.content_disposition else None,
            _response_chunks(response),
        )

    async def _follow(
        self, stack: AsyncExitStack, location: str, max_bytes: int, timeout: float, total: float
    ) -> RemoteMedia | None:
        response = await stack.enter_async_context(
            self._client.stream_url(location, timeout=timeout, total_timeout=total)
        )
        if response.status != 200:
            await self._status_error(response)
            return None
        _check_length(response, max_bytes)
        return RemoteMedia(
            response.headers.get("Content-Type"),
            response.content_disposition.filename if response.content_disposition else None,
            _response_chunks(response),
        )

    @staticmethod
    async def _status_error(response: aiohttp.ClientResponse) -> str | None:
        """The errcode of a non-200 answer; raises for the answers that are not a plain
        "no such media"."""
        errcode = await _error_of(response)
        if response.status == 504 and errcode == "M_NOT_YET_UPLOADED":
            raise not_yet_uploaded()
        if errcode == "M_TOO_LARGE":
            raise _too_large()
        if response.status in (404,) or response.status in _UNSUPPORTED_STATUSES:
            return errcode
        raise _remote_error(f"Remote server answered {response.status}")

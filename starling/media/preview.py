"""URL previews: fetch a page (through the SSRF guard), read its OpenGraph data, store its
image in the media repository, cache the answer.

Every fetch goes through `starling.media.ssrf.guarded_session`; redirects are followed by
hand (at most MAX_REDIRECTS) so that each hop's URL is checked against the URL deny list
and each hop's connection against the IP policy. Bodies are read up to `max_spider_size`
and requests are bounded in time. Concurrent requests for one URL share one fetch.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urljoin, urlsplit

import aiohttp
import orjson

from starling.config import Config, parse_size
from starling.errors import MatrixError, invalid_param
from starling.locks import SharedTasks
from starling.media.ssrf import IPPolicy, guarded_session, is_blocked_error
from starling.storage.media import MediaStore

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
MAX_URL_LENGTH = 2048
CACHE_MS = 60 * 60 * 1000
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=20, sock_connect=10, sock_read=10)
USER_AGENT = "Starling URL preview (Matrix homeserver)"
_URL_PARTS = ("scheme", "netloc", "path", "query", "fragment", "username", "password", "hostname")


@dataclass(frozen=True, slots=True)
class Fetched:
    url: str
    content_type: str
    charset: str | None
    body: bytes


# Stores fetched image bytes in the media repository for a user:
# (user_id, body, content_type, upload_name) -> (mxc URI, byte size, width, height) or None.
ImageSink = Callable[[str, bytes, str, str | None], Awaitable[tuple[str, int, int, int] | None]]


def blocked() -> MatrixError:
    return MatrixError(403, "M_FORBIDDEN", "URL blocked by the server's URL preview policy")


def fetch_failed(msg: str = "Failed to download content") -> MatrixError:
    return MatrixError(502, "M_UNKNOWN", msg)


class UrlPreviewer:
    def __init__(self, config: Config, store: MediaStore, image_sink: ImageSink) -> None:
        self._enabled = config.url_preview_enabled
        self._verify = not config.use_insecure_ssl_client_just_for_testing_do_not_use
        self._policy = IPPolicy(
            config.url_preview_ip_range_blacklist, config.url_preview_ip_range_whitelist
        )
        self._url_rules = [
            {k: _compile(v) for k, v in entry.items()} for entry in config.url_preview_url_blacklist
        ]
        self._max_size = parse_size(config.max_spider_size)
        self._store = store
        self._image_sink = image_sink
        self._session: aiohttp.ClientSession | None = None
        self._inflight: SharedTasks[str, dict[str, Any]] = SharedTasks()

    @property
    def policy(self) -> IPPolicy:
        return self._policy

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = guarded_session(
                self._policy, FETCH_TIMEOUT, verify_certificates=self._verify
            )
        return self._session

    # --- the endpoint -------------------------------------------------------------

    async def preview(self, user_id: str, url: str) -> dict[str, Any]:
        if not self._enabled:
            raise MatrixError(404, "M_UNRECOGNIZED", "URL previews are disabled on this server")
        parts = self.check_url(url)
        url = parts.geturl()
        now = _now_ms()
        cached = await self._store.get_url_preview(url, now)
        if cached is not None:
            result: dict[str, Any] = orjson.loads(cached)
            return result
        # One client going away must not cancel the fetch others wait for.
        return await self._inflight.run(url, lambda: self._build(user_id, url))

    async def _build(self, user_id: str, url: str) -> dict[str, Any]:
        fetched = await self.fetch(url, accept="text/html,application/xhtml+xml,image/*;q=0.9")
        og: dict[str, Any] = {}
        if fetched.content_type.startswith("image/"):
            await self._attach_image(og, user_id, fetched)
        elif fetched.content_type in ("text/html", "application/xhtml+xml"):
            # Here: html.parser is not imported at start (idle memory).
            from starling.media.opengraph import decode_html, parse_opengraph

            text = await asyncio.get_running_loop().run_in_executor(
                None, decode_html, fetched.body, fetched.charset
            )
            og = await asyncio.get_running_loop().run_in_executor(None, parse_opengraph, text)
            image_url = og.pop("og:image", None)
            for key in ("og:image:width", "og:image:height", "og:image:type", "og:image:url"):
                og.pop(key, None)
            if isinstance(image_url, str):
                await self._fetch_page_image(og, user_id, urljoin(fetched.url, image_url))
        now = _now_ms()
        await self._store.store_url_preview(url, orjson.dumps(og).decode(), now, now + CACHE_MS)
        await self._store.delete_expired_url_previews(now)
        return og

    async def _fetch_page_image(self, og: dict[str, Any], user_id: str, image_url: str) -> None:
        try:
            self.check_url(image_url)
            image = await self.fetch(image_url, accept="image/*")
        except MatrixError as e:
            logger.info("preview image %s not fetched: %s", image_url[:200], e.error)
            return
        if image.content_type.startswith("image/"):
            await self._attach_image(og, user_id, image)

    async def _attach_image(self, og: dict[str, Any], user_id: str, fetched: Fetched) -> None:
        name = urlsplit(fetched.url).path.rsplit("/", 1)[-1] or None
        stored = await self._image_sink(user_id, fetched.body, fetched.content_type, name)
        if stored is None:
            return
        mxc, size, width, height = stored
        og["og:image"] = mxc
        og["og:image:type"] = fetched.content_type
        og["matrix:image:size"] = size
        if width and height:
            og["og:image:width"] = width
            og["og:image:height"] = height

    # --- checks -------------------------------------------------------------------

    def check_url(self, url: str) -> SplitResult:
        """Parse a URL to fetch; 400 when malformed, 403 when the deny lists refuse it."""
        if len(url) > MAX_URL_LENGTH:
            raise invalid_param(f"URL longer than {MAX_URL_LENGTH} characters")
        if any(ord(c) < 0x21 or c == "\x7f" for c in url):
            raise invalid_param("URL contains spaces or control characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise invalid_param("Invalid URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise invalid_param("Only http and https URLs with a host can be previewed")
        host = parts.hostname
        try:
            literal = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            literal = None
        if literal is not None and not self._policy.is_allowed(literal):
            raise blocked()
        if port == 0:
            raise invalid_param("Invalid URL port")
        for rule in self._url_rules:
            if all(_matches(pattern, _part(parts, name)) for name, pattern in rule.items()):
                raise blocked()
        return parts

    # --- fetching -----------------------------------------------------------------

    async def fetch(self, url: str, *, accept: str) -> Fetched:
        """GET a URL through the guard, following redirects by hand, body capped."""
        headers = {"User-Agent": USER_AGENT, "Accept": accept, "Accept-Language": "en"}
        for _hop in range(MAX_REDIRECTS + 1):
            self.check_url(url)
            try:
                async with self._http().get(url, headers=headers, allow_redirects=False) as resp:
                    if resp.status in (301, 302, 303, 307, 308):
                        location = resp.headers.get("Location")
                        if not location:
                            raise fetch_failed("Redirect without a Location")
                        url = urljoin(url, location)
                        continue
                    if resp.status != 200:
                        raise fetch_failed(f"Failed to download content: HTTP {resp.status}")
                    if resp.content_length is not None and resp.content_length > self._max_size:
                        raise MatrixError(502, "M_TOO_LARGE", "Content is too large to preview")
                    body = await self._read_capped(resp)
                    return Fetched(
                        url=str(resp.url),
                        content_type=resp.content_type.lower(),
                        charset=resp.charset,
                        body=body,
                    )
            except MatrixError:
                raise
            except aiohttp.InvalidURL:
                raise invalid_param("Invalid URL") from None
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
                if is_blocked_error(e):
                    raise blocked() from None
                logger.info("URL preview fetch of %s failed: %r", url[:200], e)
                raise fetch_failed() from None
        raise fetch_failed("Too many redirects")

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self._max_size:
                raise MatrixError(502, "M_TOO_LARGE", "Content is too large to preview")
            chunks.append(chunk)
        return b"".join(chunks)


def _compile(pattern: str) -> re.Pattern[str]:
    if pattern.startswith("^"):
        return re.compile(pattern)
    return re.compile(fnmatch.translate(pattern))


def _part(parts: SplitResult, name: str) -> str:
    value = getattr(parts, name, None) if name in _URL_PARTS else None
    return "" if value is None else str(value)


def _matches(pattern: re.Pattern[str], value: str) -> bool:
    return pattern.match(value) is not None


def _now_ms() -> int:
    return int(time.time() * 1000)

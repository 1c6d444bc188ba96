"""The media repository: uploads, downloads, thumbnails, URL previews, and the admin's
quarantine and deletion.

Content is content-addressed on disk (`FileStore`) and described in the database
(`MediaStore`): many media IDs may share one file, which is removed when the last row naming
it goes. Commit and release of one hash are serialised by a per-hash lock, so a file is
never deleted between an upload writing it and the upload's row being inserted.

Media of other servers goes through an optional `RemoteMediaFetcher` (federation plugs in
there; without one, other servers' media is 404 `M_NOT_FOUND`): fetched once per media
(concurrent requests wait on the first), staged to disk under `max_upload_size`, then
cached like local media (quarantine and deletion apply); a miss (not found, unreachable,
too large) is remembered for `REMOTE_MISS_SECONDS`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from starling.config import Config, RateLimit, parse_duration, parse_size
from starling.errors import MatrixError, forbidden, invalid_param, not_found, too_large
from starling.locks import ClusterKeyedLock, KeyedLock
from starling.media.filestore import ContentTooLarge, FileStore, StagedFile
from starling.media.preview import UrlPreviewer
from starling.protocol.identifiers import is_valid_server_name
from starling.ratelimit import TokenBuckets
from starling.storage.media import MediaIdTaken, MediaInfo, MediaStore, NewMedia, ThumbnailInfo

if TYPE_CHECKING:
    from starling.media import thumbnailer
    from starling.storage.postgres import SessionLocks

# (user, content type, upload name, size, sha256, read the bytes) → None allows, a reason
# refuses (server modules' check_media_file_for_spam).
UploadPolicy = Callable[
    [str, str | None, str | None, int, str, Callable[[], Awaitable[bytes]]],
    Awaitable[str | None],
]

logger = logging.getLogger(__name__)

# pg_advisory_lock(classid, objid): the class of media locks (rooms and streams use others).
MEDIA_LOCK_CLASS = 0x534D4431


def _thumbnailer() -> Any:
    """The thumbnailer module, imported on first use: Pillow costs ~3 MiB of resident
    memory that a server nobody asks for thumbnails never needs."""
    from starling.media import thumbnailer

    return thumbnailer


T = TypeVar("T")

MEDIA_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")
MAX_UPLOAD_NAME = 255
MAX_CONTENT_TYPE = 255
DEFAULT_TIMEOUT_MS = 20_000
MAX_TIMEOUT_MS = 60_000
MAX_DECODABLE_REMEMBERED = 10_000
# A remote media its server did not have, or a server that could not be reached, is not
# asked about again for this long (a client retrying, or many clients showing one broken
# image, would otherwise each send a request; a dead server would cost each a timeout).
REMOTE_MISS_SECONDS = 30.0
RETENTION_CHECK_SECONDS = 3600.0
MAX_REMOTE_MISSES = 10_000


def _area(size: tuple[int, int]) -> int:
    return size[0] * size[1]


_CONTENT_TYPE = re.compile(r"[!-~][ -~]*")
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp"}


def not_yet_uploaded() -> MatrixError:
    return MatrixError(504, "M_NOT_YET_UPLOADED", "Content has not yet been uploaded")


@dataclass(frozen=True, slots=True)
class MediaFile:
    """Something to send back: a file on disk and how to describe it."""

    path: Path
    content_type: str
    upload_name: str | None
    length: int


@dataclass(frozen=True, slots=True)
class RemoteMedia:
    content_type: str | None
    upload_name: str | None
    chunks: AsyncIterator[bytes]


class RemoteMediaFetcher(Protocol):
    """Fetches media from its origin server (federation's /media/download)."""

    def fetch(
        self, server_name: str, media_id: str, *, max_bytes: int, timeout_ms: int
    ) -> AbstractAsyncContextManager[RemoteMedia | None]:
        """The media, or None when the origin does not have it; its chunks are read
        while the context is open. Errors are MatrixErrors for the client."""
        ...


def check_media_id(media_id: str) -> None:
    # The spec's media ID alphabet: nothing that could climb out of a directory.
    if not MEDIA_ID.fullmatch(media_id):
        raise not_found("Invalid media ID")


def check_server_name(server_name: str) -> None:
    if not is_valid_server_name(server_name):
        raise invalid_param("Invalid server name")


def clean_content_type(value: str | None) -> str:
    if value is None:
        return "application/octet-stream"
    value = value.strip()
    if not value or len(value) > MAX_CONTENT_TYPE or not _CONTENT_TYPE.fullmatch(value):
        return "application/octet-stream"
    return value


def check_upload_name(name: str | None) -> str | None:
    if name is None or name == "":
        return None
    if len(name) > MAX_UPLOAD_NAME:
        raise invalid_param(f"filename longer than {MAX_UPLOAD_NAME} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise invalid_param("filename contains control characters")
    return name


def _remote_upload_name(name: str | None) -> str | None:
    """Another server's file name, if it is one we would accept (else none)."""
    try:
        return check_upload_name(name)
    except MatrixError:
        return None


class MediaService:
    def __init__(
        self,
        config: Config,
        store: MediaStore,
        files: FileStore,
        remote: RemoteMediaFetcher | None = None,
        clock: Callable[[], float] = time.time,
        buckets: TokenBuckets | None = None,
    ) -> None:
        self._config = config
        self.server_name = config.server_name
        self.store = store
        self.files = files
        self.remote = remote
        self._clock = clock
        self.max_upload_size = config.max_upload_size_bytes
        self.max_image_pixels = parse_size(config.max_image_pixels)
        self._unused_expiry_ms = parse_duration(config.unused_expiration_time)
        self._quotas = [
            (parse_duration(q.time_period), parse_size(q.max_size))
            for q in config.media_upload_limits
        ]
        # Across processes with workers (use_cluster): a file's hash (committing and
        # releasing it: a release on one process must not delete a file another is
        # naming), a user's quota, a remote file being fetched (once, not per process).
        self._locks: ClusterKeyedLock[tuple[str, ...]] = ClusterKeyedLock(
            MEDIA_LOCK_CLASS, "\0".join
        )
        self._thumb_locks: KeyedLock[tuple[str, str, int, int, str, bool]] = KeyedLock()
        self._remote_misses: OrderedDict[tuple[str, str], tuple[float, MatrixError]] = OrderedDict()
        self._uploaded = asyncio.Condition()
        self._upload_policy: UploadPolicy | None = None
        self._buckets = buckets or TokenBuckets()
        burst = parse_size(config.remote_media_download_burst_count)
        # None (a burst of 0): no limit.
        self._download_limit = (
            RateLimit(parse_size(config.remote_media_download_per_second), burst)
            if burst > 0
            else None
        )
        self._image_jobs = asyncio.Semaphore(max(1, os.cpu_count() or 1))
        # Media whose pixels are known to decode (served as their own thumbnail).
        self._decodable: set[tuple[str, str]] = set()
        self.previewer = UrlPreviewer(config, store, self._store_preview_image)
        lifetime = config.media_retention.remote_media_lifetime
        self._remote_lifetime_ms = None if lifetime is None else parse_duration(lifetime)
        self._retention_task: asyncio.Task[None] | None = None

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def start(self) -> None:
        """Background work: purging the remote media cache (`media_retention`)."""
        if self._remote_lifetime_ms is not None and self._retention_task is None:
            self._retention_task = asyncio.create_task(self._retention_loop())

    async def _retention_loop(self) -> None:
        assert self._remote_lifetime_ms is not None
        while True:
            try:
                purged = await self.purge_remote_cache(self._now_ms() - self._remote_lifetime_ms)
                if purged:
                    logger.info("media_retention: purged %d cached remote media", purged)
            except Exception:
                logger.exception("media_retention: purging the remote media cache failed")
            await asyncio.sleep(RETENTION_CHECK_SECONDS)

    async def purge_remote_cache(self, before_ts: int) -> int:
        """Delete other servers' media (and thumbnails) nobody downloaded since
        `before_ts`; how many were deleted. Fetched again if asked for later."""
        purged = 0
        while True:
            batch = await self.store.remote_media_unused_since(self.server_name, before_ts, 500)
            for server_name, media_id in batch:
                if await self.delete_media(server_name, media_id):
                    purged += 1
            if len(batch) < 500:
                return purged

    async def use_cluster(self, connect: Callable[[], Awaitable[SessionLocks]]) -> None:
        """Other processes of the server store media too (workers): lock across them."""
        await self._locks.use_cluster(connect)

    async def close(self) -> None:
        await self._locks.close()
        if self._retention_task is not None:
            self._retention_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._retention_task
            self._retention_task = None
        await self.previewer.close()

    def media_config(self) -> dict[str, Any]:
        return {"m.upload.size": self.max_upload_size}

    async def usage(self, user_id: str) -> dict[str, Any]:
        """MSC4034's storage usage (both the m. and the unstable names), plus each of
        `media_upload_limits` with what the user has spent of it: the quota a client
        shows before an upload is refused."""
        used, files = await self.store.usage(user_id)
        now = self._now_ms()
        limits = [
            {
                "time_period_ms": period_ms,
                "max_size": max_bytes,
                "used": await self.store.uploaded_bytes_since(user_id, now - period_ms),
            }
            for period_ms, max_bytes in self._quotas
        ]
        return {
            "m.storage.used": used,
            "m.storage.files": files,
            "org.matrix.msc4034.storage.used": used,
            "org.matrix.msc4034.storage.files": files,
            "io.starling.upload_limits": limits,
        }

    def _new_media_id(self) -> str:
        return secrets.token_urlsafe(18).replace("-", "a").replace("_", "b")

    # --- storing content ----------------------------------------------------------

    def use_upload_policy(self, policy: UploadPolicy) -> None:
        """Server modules' verdict on an upload (check_media_file_for_spam)."""
        self._upload_policy = policy

    async def _check_upload(
        self,
        user_id: str,
        staged: StagedFile,
        content_type: str | None,
        upload_name: str | None,
    ) -> None:
        """403 (and the staged file gone) when a module refuses the upload."""
        if self._upload_policy is None:
            return

        async def read() -> bytes:
            return await asyncio.to_thread(staged.temp_path.read_bytes)

        try:
            reason = await self._upload_policy(
                user_id, content_type, upload_name, staged.size, staged.sha256, read
            )
        except BaseException:
            await self.files.discard(staged)
            raise
        if reason is not None:
            await self.files.discard(staged)
            raise forbidden(reason)

    async def _stage(
        self, user_id: str, chunks: AsyncIterator[bytes], declared_length: int | None
    ) -> StagedFile:
        if declared_length is not None:
            if declared_length > self.max_upload_size:
                raise too_large(f"Upload larger than the limit of {self.max_upload_size} bytes")
            await self._check_quota(user_id, declared_length)
        try:
            staged = await self.files.stage_stream(chunks, self.max_upload_size)
        except ContentTooLarge:
            raise too_large(
                f"Upload larger than the limit of {self.max_upload_size} bytes"
            ) from None
        return staged

    async def _check_quota(self, user_id: str, adding: int) -> None:
        now = self._now_ms()
        for period_ms, max_bytes in self._quotas:
            used = await self.store.uploaded_bytes_since(user_id, now - period_ms)
            if used + adding > max_bytes:
                raise forbidden("Media upload limit exceeded")

    async def _commit_within_quota(
        self, user_id: str, staged: StagedFile, write_row: Callable[[], Awaitable[T]]
    ) -> T:
        """Check the user's upload quota and write the row in one step per user, so two
        uploads finishing together cannot both pass a check that counts neither.
        With workers the lock is PostgreSQL's too, so it holds across processes."""
        if not self._quotas:
            return await self._commit(staged, write_row)
        async with self._locks(("quota", user_id)):
            try:
                await self._check_quota(user_id, staged.size)
            except BaseException:
                await self.files.discard(staged)
                raise
            return await self._commit(staged, write_row)

    async def _commit(self, staged: StagedFile, write_row: Callable[[], Awaitable[T]]) -> T:
        """Move staged content into the store and write the row naming it, atomically with
        respect to releases of the same hash."""
        async with self._locks(("hash", staged.sha256)):
            await self.files.commit(staged)
            try:
                return await write_row()
            except BaseException:
                if not await self.store.sha256_in_use(staged.sha256):
                    await self.files.delete(staged.sha256)
                raise

    async def _release(self, hashes: list[str]) -> None:
        """Delete the files no row names any more."""
        for sha256 in set(hashes):
            async with self._locks(("hash", sha256)):
                if not await self.store.sha256_in_use(sha256):
                    await self.files.delete(sha256)

    async def upload(
        self,
        user_id: str,
        chunks: AsyncIterator[bytes],
        *,
        content_type: str | None,
        upload_name: str | None,
        declared_length: int | None = None,
    ) -> str:
        """POST /upload: store content under a new media ID; returns the mxc:// URI."""
        upload_name = check_upload_name(upload_name)
        staged = await self._stage(user_id, chunks, declared_length)
        await self._check_upload(user_id, staged, content_type, upload_name)
        media_id = self._new_media_id()
        now = self._now_ms()
        row = NewMedia(
            server_name=self.server_name,
            media_id=media_id,
            user_id=user_id,
            content_type=clean_content_type(content_type),
            upload_name=upload_name,
            media_length=staged.size,
            sha256=staged.sha256,
            created_ts=now,
            authenticated=self._config.enable_authenticated_media,
        )
        await self._commit_within_quota(user_id, staged, lambda: self.store.insert_media(row))
        return f"mxc://{self.server_name}/{media_id}"

    async def create(self, user_id: str) -> tuple[str, int]:
        """POST /create: reserve a media ID; returns (mxc URI, unused_expires_at)."""
        await self._buckets.take("media_create", user_id, self._config.rc_media_create)
        now = self._now_ms()
        await self.store.delete_expired_pending(now)
        pending = await self.store.count_pending(user_id, now)
        if pending >= self._config.max_pending_media_uploads:
            raise MatrixError(
                429,
                "M_LIMIT_EXCEEDED",
                "Too many pending media uploads",
                retry_after_ms=min(self._unused_expiry_ms, 60_000),
            )
        expires = now + self._unused_expiry_ms
        for _ in range(3):
            media_id = self._new_media_id()
            try:
                await self.store.create_pending(
                    self.server_name,
                    media_id,
                    user_id,
                    now,
                    expires,
                    self._config.enable_authenticated_media,
                )
            except MediaIdTaken:
                continue
            return f"mxc://{self.server_name}/{media_id}", expires
        raise MatrixError(500, "M_UNKNOWN", "Could not allocate a media ID")

    async def upload_to(
        self,
        user_id: str,
        server_name: str,
        media_id: str,
        chunks: AsyncIterator[bytes],
        *,
        content_type: str | None,
        upload_name: str | None,
        declared_length: int | None = None,
    ) -> None:
        """PUT /upload/{serverName}/{mediaId}: the content of a created media ID."""
        check_server_name(server_name)
        check_media_id(media_id)
        upload_name = check_upload_name(upload_name)
        if server_name != self.server_name:
            raise not_found("Unknown media ID")
        self._check_pending(await self.store.get_media(server_name, media_id), user_id)
        staged = await self._stage(user_id, chunks, declared_length)
        await self._check_upload(user_id, staged, content_type, upload_name)

        async def fill() -> bool:
            return await self.store.complete_pending(
                server_name,
                media_id,
                content_type=clean_content_type(content_type),
                upload_name=upload_name,
                media_length=staged.size,
                sha256=staged.sha256,
                uploaded_ts=self._now_ms(),
            )

        # Checked again: it may have expired or been filled while the body streamed in.
        try:
            self._check_pending(await self.store.get_media(server_name, media_id), user_id)
        except BaseException:
            await self.files.discard(staged)
            raise
        if not await self._commit_within_quota(user_id, staged, fill):
            await self._release([staged.sha256])
            raise self._overwrite_error()
        async with self._uploaded:
            self._uploaded.notify_all()

    def _check_pending(self, info: MediaInfo | None, user_id: str) -> None:
        if info is None:
            raise not_found("Unknown media ID")
        if info.user_id != user_id:
            raise forbidden("This media ID was created by another user")
        if info.uploaded:
            raise self._overwrite_error()
        if info.unused_expires_at is not None and info.unused_expires_at <= self._now_ms():
            raise not_found("Media ID expired")

    @staticmethod
    def _overwrite_error() -> MatrixError:
        return MatrixError(409, "M_CANNOT_OVERWRITE_MEDIA", "Media already uploaded")

    # --- finding media to serve ---------------------------------------------------

    async def _media_for_serving(
        self,
        server_name: str,
        media_id: str,
        *,
        authenticated: bool,
        timeout_ms: int,
        allow_remote: bool,
        client_ip: str | None,
    ) -> MediaInfo:
        check_server_name(server_name)
        check_media_id(media_id)
        if server_name == self.server_name:
            info = await self._local_media(media_id, timeout_ms, authenticated)
        else:
            # Unauthenticated requests never fetch once the old endpoints are frozen: what
            # they would fetch is new, so not theirs to see (nor theirs to fill the cache
            # with); only what was cached before the freeze is served to them.
            allow_remote = allow_remote and (
                authenticated or not self._config.enable_authenticated_media
            )
            info = await self._remote_media(
                server_name, media_id, allow_remote, timeout_ms, client_ip
            )
        self._check_servable(info, authenticated)
        return info

    def _check_servable(self, info: MediaInfo, authenticated: bool) -> None:
        if info.quarantined_by is not None:
            raise not_found("Media not found")
        if not authenticated and self._config.enable_authenticated_media and info.authenticated:
            # Frozen: media stored since the switch is served only to authenticated requests.
            raise not_found("Media not found")

    async def _local_media(self, media_id: str, timeout_ms: int, authenticated: bool) -> MediaInfo:
        deadline = time.monotonic() + min(max(timeout_ms, 0), MAX_TIMEOUT_MS) / 1000
        while True:
            info = await self.store.get_media(self.server_name, media_id)
            if info is None:
                raise not_found("Media not found")
            self._check_servable(info, authenticated)  # before waiting for an upload
            if info.uploaded:
                return info
            if info.unused_expires_at is not None and info.unused_expires_at <= self._now_ms():
                raise not_found("Media not found")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise not_yet_uploaded()
            # Woken by an upload in this process; the periodic re-check covers the rest.
            async with self._uploaded:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._uploaded.wait(), min(remaining, 1.0))

    async def _remote_media(
        self,
        server_name: str,
        media_id: str,
        allow_remote: bool,
        timeout_ms: int,
        client_ip: str | None,
    ) -> MediaInfo:
        info = await self.store.get_media(server_name, media_id)
        if info is not None and info.uploaded:
            return info
        if self.remote is None or not allow_remote:
            raise not_found("Media not found")
        key = (server_name, media_id)
        async with self._locks(("remote", *key)):
            info = await self.store.get_media(server_name, media_id)
            if info is not None and info.uploaded:
                return info
            miss = self._remote_misses.get(key)
            if miss is not None:
                if time.monotonic() < miss[0]:
                    raise miss[1]
                del self._remote_misses[key]
            limit = self._download_limit if client_ip is not None else None
            if limit is not None and client_ip is not None:
                # What one client address makes us download (Synapse's
                # remote_media_download_*): refused while its allowance is spent; one
                # download may overdraw it.
                await self._buckets.take("remote_media", client_ip, limit)
            try:
                size = await self._fetch_remote(server_name, media_id, timeout_ms)
                if limit is not None and client_ip is not None:
                    await self._buckets.spend("remote_media", client_ip, limit, size - 1)
            except MatrixError as e:
                if e.status in (404, 502):
                    self._remote_misses[key] = (time.monotonic() + REMOTE_MISS_SECONDS, e)
                    while len(self._remote_misses) > MAX_REMOTE_MISSES:
                        self._remote_misses.popitem(last=False)
                raise
        info = await self.store.get_media(server_name, media_id)
        if info is None:
            raise not_found("Media not found")
        return info

    async def _fetch_remote(self, server_name: str, media_id: str, timeout_ms: int) -> int:
        """Fetch another server's media into the cache (the caller holds its lock); its
        size."""
        assert self.remote is not None
        async with self.remote.fetch(
            server_name,
            media_id,
            max_bytes=self.max_upload_size,
            timeout_ms=min(max(timeout_ms, 0), MAX_TIMEOUT_MS),
        ) as fetched:
            if fetched is None:
                raise not_found("Media not found")
            try:
                staged = await self.files.stage_stream(fetched.chunks, self.max_upload_size)
            except ContentTooLarge:
                raise MatrixError(502, "M_TOO_LARGE", "Remote content is too large") from None
        row = NewMedia(
            server_name=server_name,
            media_id=media_id,
            user_id=None,
            content_type=clean_content_type(fetched.content_type),
            upload_name=_remote_upload_name(fetched.upload_name),
            media_length=staged.size,
            sha256=staged.sha256,
            created_ts=self._now_ms(),
            # "New" for the freeze means newly cached (spec: content repository).
            authenticated=self._config.enable_authenticated_media,
        )
        await self._commit(staged, lambda: self.store.insert_media(row))
        return staged.size

    async def _existing_file(self, info: MediaInfo) -> MediaFile:
        assert info.sha256 is not None and info.media_length is not None
        if not await self.files.exists(info.sha256):
            logger.error(
                "media %s/%s: its file %s is missing", info.server_name, info.media_id, info.sha256
            )
            raise not_found("Media not found")
        return MediaFile(
            path=self.files.path_for(info.sha256),
            content_type=info.content_type or "application/octet-stream",
            upload_name=info.upload_name,
            length=info.media_length,
        )

    async def download(
        self,
        server_name: str,
        media_id: str,
        *,
        authenticated: bool,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        allow_remote: bool = True,
        client_ip: str | None = None,
    ) -> MediaFile:
        info = await self._media_for_serving(
            server_name,
            media_id,
            authenticated=authenticated,
            timeout_ms=timeout_ms,
            allow_remote=allow_remote,
            client_ip=client_ip,
        )
        await self.store.touch(server_name, media_id, self._now_ms())
        return await self._existing_file(info)

    # --- thumbnails ---------------------------------------------------------------

    def _choose_box(
        self, width: int, height: int, method: str, image: thumbnailer.ImageInfo
    ) -> tuple[int, int, str]:
        """The thumbnail size that serves a request for width x height of `image`: the
        smallest configured size at least as large as asked whose thumbnail is smaller
        than the image; if none is, the requested size itself, made on the fly (a
        thumbnail as large as the original would be no thumbnail at all)."""
        if self._config.dynamic_thumbnails or not self._config.thumbnail_sizes:
            return width, height, method
        sizes = [s for s in self._config.thumbnail_sizes if s.method == method]
        sizes = sizes or list(self._config.thumbnail_sizes)
        covering = [
            s
            for s in sizes
            if s.width >= width
            and s.height >= height
            and _area(_thumbnailer().output_size(image, s.width, s.height, s.method))
            < image.width * image.height
        ]
        if covering:
            best = min(covering, key=lambda s: (s.width * s.height, s.width))
            return best.width, best.height, best.method
        if any(s.width >= width and s.height >= height for s in sizes):
            return width, height, method
        best = max(sizes, key=lambda s: (s.width * s.height, s.width))
        return best.width, best.height, best.method

    async def _in_executor(self, fn: Callable[..., T], *args: Any) -> T:
        # Image work is CPU-bound: at most one job per core, the rest queue here.
        async with self._image_jobs:
            return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def thumbnail(
        self,
        server_name: str,
        media_id: str,
        width: int,
        height: int,
        method: str,
        *,
        animated: bool,
        authenticated: bool,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        allow_remote: bool = True,
        client_ip: str | None = None,
    ) -> MediaFile:
        if method not in ("crop", "scale"):
            raise invalid_param("method must be crop or scale")
        if width < 1 or height < 1:
            raise invalid_param("width and height must be positive")
        info = await self._media_for_serving(
            server_name,
            media_id,
            authenticated=authenticated,
            timeout_ms=timeout_ms,
            allow_remote=allow_remote,
            client_ip=client_ip,
        )
        original = await self._existing_file(info)
        image = await self._in_executor(_thumbnailer().probe, original.path, self.max_image_pixels)
        await self.store.touch(server_name, media_id, self._now_ms())
        want_animated = animated and image.animated
        if (
            image.width <= width
            and image.height <= height
            and (want_animated or not image.animated)
        ):
            # Smaller than asked for: the original is the best thumbnail (spec), once
            # its pixels are known to decode (media never changes: checked once).
            if (server_name, media_id) not in self._decodable:
                await self._in_executor(_thumbnailer().verify, original.path, self.max_image_pixels)
                if len(self._decodable) >= MAX_DECODABLE_REMEMBERED:
                    self._decodable.clear()
                self._decodable.add((server_name, media_id))
            ext = _EXTENSIONS.get(image.content_type, "bin")
            return MediaFile(original.path, image.content_type, f"thumbnail.{ext}", original.length)
        box_w, box_h, box_method = self._choose_box(width, height, method, image)
        key = (server_name, media_id, box_w, box_h, box_method, want_animated)
        thumb = await self._cached_thumbnail(*key)
        if thumb is None:
            async with self._thumb_locks(key):
                thumb = await self._cached_thumbnail(*key)
                if thumb is None:
                    thumb = await self._generate(
                        server_name,
                        media_id,
                        original.path,
                        box_w,
                        box_h,
                        box_method,
                        want_animated,
                    )
        ext = _EXTENSIONS.get(thumb.content_type, "bin")
        return MediaFile(
            self.files.path_for(thumb.sha256),
            thumb.content_type,
            f"thumbnail.{ext}",
            thumb.media_length,
        )

    async def _cached_thumbnail(
        self, server_name: str, media_id: str, w: int, h: int, method: str, animated: bool
    ) -> ThumbnailInfo | None:
        thumb = await self.store.get_thumbnail(server_name, media_id, w, h, method, animated)
        if thumb is not None and await self.files.exists(thumb.sha256):
            return thumb
        return None

    async def _generate(
        self,
        server_name: str,
        media_id: str,
        source: Path,
        box_w: int,
        box_h: int,
        method: str,
        animated: bool,
    ) -> ThumbnailInfo:
        made = await self._in_executor(
            _thumbnailer().make_thumbnail,
            source,
            box_w,
            box_h,
            method,
            animated,
            self.max_image_pixels,
        )
        staged = await self.files.stage_bytes(made.data)
        thumb = ThumbnailInfo(
            target_width=box_w,
            target_height=box_h,
            method=method,
            animated=animated,
            width=made.width,
            height=made.height,
            content_type=made.content_type,
            media_length=staged.size,
            sha256=staged.sha256,
        )

        async def write_row() -> str | None:
            written, replaced = await self.store.upsert_thumbnail(
                server_name, media_id, thumb, self._now_ms()
            )
            if not written:
                raise not_found("Media not found")  # deleted while the thumbnail was made
            return replaced

        replaced = await self._commit(staged, write_row)
        if replaced is not None and replaced != thumb.sha256:
            await self._release([replaced])
        return thumb

    # --- URL previews -------------------------------------------------------------

    async def preview_url(self, user_id: str, url: str) -> dict[str, Any]:
        return await self.previewer.preview(user_id, url)

    async def _store_preview_image(
        self, user_id: str, body: bytes, content_type: str, name: str | None
    ) -> tuple[str, int, int, int] | None:
        staged = await self.files.stage_bytes(body)
        try:
            image = await self._in_executor(
                _thumbnailer().probe, staged.temp_path, self.max_image_pixels
            )
        except MatrixError:
            await self.files.discard(staged)
            return None
        media_id = self._new_media_id()
        try:
            upload_name = check_upload_name(name)
        except MatrixError:
            upload_name = None
        row = NewMedia(
            server_name=self.server_name,
            media_id=media_id,
            user_id=user_id,
            content_type=image.content_type,
            upload_name=upload_name,
            media_length=staged.size,
            sha256=staged.sha256,
            created_ts=self._now_ms(),
            authenticated=self._config.enable_authenticated_media,
            url_cache=True,
        )
        await self._commit(staged, lambda: self.store.insert_media(row))
        return f"mxc://{self.server_name}/{media_id}", staged.size, image.width, image.height

    # --- admin --------------------------------------------------------------------

    async def get_media_info(self, server_name: str, media_id: str) -> MediaInfo | None:
        return await self.store.get_media(server_name, media_id)

    async def quarantine_media(self, server_name: str, media_id: str, by: str = "admin") -> bool:
        return await self.store.quarantine(server_name, media_id, by)

    async def quarantine_user_media(self, user_id: str, by: str = "admin") -> int:
        return await self.store.quarantine_user(user_id, by)

    async def delete_media(self, server_name: str, media_id: str) -> bool:
        """Delete one media (and its thumbnails); files nothing else names are removed."""
        hashes = await self.store.delete_media(server_name, media_id)
        if hashes is None:
            return False
        await self._release(hashes)
        return True

    async def delete_user_media(self, user_id: str) -> list[str]:
        """Delete every media a user uploaded; returns the deleted media IDs."""
        deleted = []
        for server_name, media_id in await self.store.media_ids_of_user(user_id):
            if await self.delete_media(server_name, media_id):
                deleted.append(media_id)
        return deleted

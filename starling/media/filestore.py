"""Content-addressed files on disk: every stored byte string is named by its SHA-256.

Layout under the media store directory::

    content/ab/cd/abcd…(64 hex digits)   one file per distinct content
    tmp/                                 uploads being written

An upload is streamed into tmp/ while it is hashed and counted (stopping at the size
limit), then renamed into place; identical content ends up as one file. Whether a file may
be deleted is the caller's decision (no database row names it any more); the file store
only moves bytes. Blocking file I/O runs in the default executor so the event loop never
waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

_HEX64 = re.compile(r"[0-9a-f]{64}")
# Bytes gathered before one write to disk: few executor hops, bounded memory.
_WRITE_BATCH = 1024 * 1024
_STALE_TEMP_SECONDS = 24 * 3600

T = TypeVar("T")


class ContentTooLarge(Exception):
    """The content went past the size limit while it was being written."""


@dataclass(frozen=True, slots=True)
class StagedFile:
    """Content written to a temporary file, hashed, not yet in the store."""

    temp_path: Path
    sha256: str
    size: int


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._content = root / "content"
        self._tmp = root / "tmp"

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def setup(self) -> None:
        """Create the directories; drop temporary files a crash left behind (old enough
        that no running upload can own them)."""
        self._content.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - _STALE_TEMP_SECONDS
        for entry in self._tmp.iterdir():
            with contextlib.suppress(OSError):
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    entry.unlink()

    def path_for(self, sha256: str) -> Path:
        if not _HEX64.fullmatch(sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self._content / sha256[:2] / sha256[2:4] / sha256

    async def stage_stream(self, chunks: AsyncIterator[bytes], max_bytes: int) -> StagedFile:
        """Write a stream to a temporary file, hashing it; ContentTooLarge past max_bytes
        (the partial file is removed)."""
        path = self._tmp / secrets.token_hex(16)
        digest = hashlib.sha256()
        size = 0
        f = await self._run(open, path, "xb")
        try:
            pending: list[bytes] = []
            pending_len = 0
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise ContentTooLarge(f"content larger than {max_bytes} bytes")
                digest.update(chunk)
                pending.append(chunk)
                pending_len += len(chunk)
                if pending_len >= _WRITE_BATCH:
                    await self._run(f.write, b"".join(pending))
                    pending, pending_len = [], 0
            if pending:
                await self._run(f.write, b"".join(pending))
            await self._run(f.close)
        except BaseException:
            await self._run(_close_and_unlink, f, path)
            raise
        return StagedFile(path, digest.hexdigest(), size)

    async def stage_bytes(self, data: bytes) -> StagedFile:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.stage_stream(one(), len(data))

    async def commit(self, staged: StagedFile) -> Path:
        """Move staged content into the store (replacing an identical file if present)."""
        return await self._run(self._commit_sync, staged)

    def _commit_sync(self, staged: StagedFile) -> Path:
        dest = self.path_for(staged.sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.temp_path, dest)
        return dest

    async def discard(self, staged: StagedFile) -> None:
        await self._run(_unlink, staged.temp_path)

    async def exists(self, sha256: str) -> bool:
        return await self._run(self.path_for(sha256).is_file)

    async def delete(self, sha256: str) -> None:
        await self._run(_unlink, self.path_for(sha256))


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _close_and_unlink(f: Any, path: Path) -> None:
    try:
        f.close()
    finally:
        _unlink(path)

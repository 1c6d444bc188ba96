"""Encrypted per-user file backup ("your own Dropbox", under the organisation's server).

Files are encrypted on the client with the attachment scheme (AES-CTR, a fresh key per
file, SHA-256 of the ciphertext) and uploaded as media; the index is a series of encrypted
events in a private encrypted room that holds only the user (found again through the
`org.starling.file_backup` account data). Each index event names one file:

    {"path": "photos/cat.jpg", "sha256": "<hex of the plaintext>", "size": 1234,
     "mtime": 1733480000.5, "file": {<EncryptedFile, with url>}}

The newest event for a path wins. A push sends only files whose content changed
(incremental), reuses the uploaded copy of any content already in the backup (deduplicated
by the plaintext's hash), and commits each file as soon as it is uploaded (an interrupted
push resumes where it stopped). A new device reads the index once it has the room's keys,
e.g. after `restore --recovery-key`. The server sees file sizes and upload times, never
names or contents.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from starling_client.api import MatrixError
from starling_client.attachments import AttachmentError, decrypt_attachment, encrypt_attachment
from starling_client.client import Client

ACCOUNT_DATA = "org.starling.file_backup"
INDEX_EVENT = "org.starling.file_backup.file"
ROOM_NAME = "Starling file backup"
QUOTA_ERRORS = ("M_TOO_LARGE", "M_RESOURCE_LIMIT_EXCEEDED", "M_LIMIT_EXCEEDED")


class FileBackupError(Exception):
    pass


@dataclass
class Entry:
    path: str
    sha256: str
    size: int
    mtime: float
    file: dict[str, Any]
    event_id: str = ""

    def to_content(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "size": self.size,
            "mtime": self.mtime,
            "file": self.file,
        }


@dataclass
class PushResult:
    sent: int = 0  # uploaded
    deduplicated: int = 0  # indexed, reusing an upload of the same content
    unchanged: int = 0  # already in the backup as they are
    bytes_sent: int = 0


Progress = Callable[[str, str, int, int], None]  # (path, what, done, total)


def safe_relative(path: str) -> PurePosixPath:
    """An index path as a relative path that stays inside the destination."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or any(p in ("..", "") for p in pure.parts) or "\0" in path:
        raise FileBackupError(f"refusing the unsafe path {path!r} in the backup index")
    return pure


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class FileBackup:
    def __init__(self, client: Client) -> None:
        self.client = client

    async def room(self, *, create: bool) -> str | None:
        data = await self.client.api.get_account_data(self.client.user_id, ACCOUNT_DATA)
        room_id = data.get("room_id") if data else None
        if isinstance(room_id, str):
            return room_id
        if not create:
            return None
        room_id = await self.client.create_room(name=ROOM_NAME, encrypted=True)
        await self.client.api.set_account_data(
            self.client.user_id, ACCOUNT_DATA, {"room_id": room_id}
        )
        return room_id

    async def index(self) -> dict[str, Entry]:
        """The newest entry per path, read from the room's history (decrypted)."""
        room_id = await self.room(create=False)
        if room_id is None:
            return {}
        entries: dict[str, Entry] = {}
        undecryptable = 0
        token: str | None = None
        for _ in range(10_000):
            page = await self.client.api.messages(room_id, limit=100, from_token=token)
            chunk = page.get("chunk") or []
            for event in chunk:
                if not isinstance(event, dict) or event.get("type") != "m.room.encrypted":
                    continue
                if event.get("sender") != self.client.user_id:
                    continue  # only our own devices write the index
                message = self.client.decrypt_event(room_id, event)
                if message.error is not None:
                    undecryptable += 1
                    continue
                if message.type != INDEX_EVENT:
                    continue
                entry = self._entry(message.content, message.event_id)
                if entry is not None and entry.path not in entries:
                    entries[entry.path] = entry
            token = page.get("end")
            if not chunk or not isinstance(token, str):
                break
        if undecryptable and not entries:
            raise FileBackupError(
                f"{undecryptable} index entries cannot be decrypted on this device: "
                "restore the key backup first ('restore --recovery-key KEY')"
            )
        return entries

    @staticmethod
    def _entry(content: dict[str, Any], event_id: str) -> Entry | None:
        try:
            path = str(safe_relative(str(content["path"])))
            return Entry(
                path,
                str(content["sha256"]),
                int(content["size"]),
                float(content.get("mtime", 0)),
                dict(content["file"]),
                event_id,
            )
        except (KeyError, TypeError, ValueError, FileBackupError):
            return None

    async def push(self, directory: Path, progress: Progress | None = None) -> PushResult:
        if not await asyncio.to_thread(directory.is_dir):
            raise FileBackupError(f"{directory} is not a directory")
        room_id = await self.room(create=True)
        assert room_id is not None
        index = await self.index()
        by_hash = {e.sha256: e for e in index.values()}
        files = await asyncio.to_thread(
            lambda: sorted(p for p in directory.rglob("*") if p.is_file() and not p.is_symlink())
        )
        result = PushResult()
        for number, path in enumerate(files, 1):
            rel = path.relative_to(directory).as_posix()
            stat = await asyncio.to_thread(path.stat)
            sha = await asyncio.to_thread(_sha256_file, path)
            known = index.get(rel)
            if known is not None and known.sha256 == sha:
                result.unchanged += 1
                if progress:
                    progress(rel, "unchanged", number, len(files))
                continue
            same = by_hash.get(sha)
            if same is not None:
                file_info = same.file
                result.deduplicated += 1
                what = "deduplicated"
            else:
                data = await asyncio.to_thread(path.read_bytes)
                if hashlib.sha256(data).hexdigest() != sha:
                    raise FileBackupError(f"{rel} changed while it was being backed up")
                ciphertext, file_info = await asyncio.to_thread(encrypt_attachment, data)
                try:
                    file_info["url"] = await self.client.api.upload(
                        ciphertext, "application/octet-stream"
                    )
                except MatrixError as e:
                    if e.errcode in QUOTA_ERRORS or e.status == 413:
                        raise FileBackupError(
                            f"the server refused {rel} ({len(data)} bytes): {e.error or e.errcode}"
                            " — the media quota or upload size limit was reached; "
                            f"{result.sent} files were backed up before it"
                        ) from e
                    raise
                result.sent += 1
                result.bytes_sent += len(data)
                what = "sent"
            entry = Entry(rel, sha, stat.st_size, stat.st_mtime, file_info)
            entry.event_id = await self.client.send_message(
                room_id, entry.to_content(), event_type=INDEX_EVENT
            )
            index[rel] = entry
            by_hash.setdefault(sha, entry)
            if progress:
                progress(rel, what, number, len(files))
        return result

    async def pull(
        self,
        destination: Path,
        prefix: str | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Download, decrypt and check every file (under `prefix`) into `destination`."""
        index = await self.index()
        under = None if prefix is None else prefix.strip("/")
        wanted = sorted(
            (
                e
                for p, e in index.items()
                if under is None or under == "" or p == under or p.startswith(under + "/")
            ),
            key=lambda e: e.path,
        )
        if prefix is not None and not wanted:
            raise FileBackupError(f"nothing in the backup under {prefix!r}")
        root = await asyncio.to_thread(destination.absolute)
        for number, entry in enumerate(wanted, 1):
            # safe_relative refused absolute paths and '..', so this stays under root.
            target = root.joinpath(*safe_relative(entry.path).parts)
            url = entry.file.get("url")
            if not isinstance(url, str):
                raise FileBackupError(f"{entry.path}: the index entry has no file URL")
            ciphertext = await self.client.api.download(url)
            try:
                data = await asyncio.to_thread(decrypt_attachment, ciphertext, entry.file)
            except AttachmentError as e:
                raise FileBackupError(f"{entry.path}: {e}") from e
            if hashlib.sha256(data).hexdigest() != entry.sha256:
                raise FileBackupError(f"{entry.path}: the content does not match its hash")
            await asyncio.to_thread(_write, target, data, entry.mtime)
            if progress:
                progress(entry.path, "restored", number, len(wanted))
        return len(wanted)


def _write(target: Path, data: bytes, mtime: float) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".starling-part")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    if mtime:
        os.utime(target, (mtime, mtime))

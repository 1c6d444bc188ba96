"""Encrypted per-user file backup ("your own Dropbox", under the organisation's server).

Files are encrypted on the client with the attachment scheme (AES-CTR, a fresh key per
file, SHA-256 of the ciphertext) and uploaded as media — a file larger than the part size
in several parts, each its own attachment, streamed from and to the disk a MiB at a time; the index is a series of encrypted
events in a private encrypted room that holds only the user (found again through the
`org.starling.file_backup` account data). Each index event names one file:

    {"path": "photos/cat.jpg", "sha256": "<hex of the plaintext>", "size": 1234,
     "mtime": 1733480000.5, "file": {<EncryptedFile, with url>}}

or, for a file stored in parts, `"parts": [{"size": n, "file": {<EncryptedFile>}}, ...]`
instead of `file`.

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
import hmac
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from starling_client.api import MatrixError
from starling_client.attachments import (
    AttachmentEncryptor,
    AttachmentError,
    FileKey,
    ctr_decryptor,
    parse_encrypted_file,
)
from starling_client.client import Client

ACCOUNT_DATA = "org.starling.file_backup"
INDEX_EVENT = "org.starling.file_backup.file"
ROOM_NAME = "Starling file backup"
QUOTA_ERRORS = ("M_TOO_LARGE", "M_RESOURCE_LIMIT_EXCEEDED", "M_LIMIT_EXCEEDED")


class FileBackupError(Exception):
    pass


# Files are encrypted and uploaded in parts of at most this size (less when the server's
# `m.upload.size` is smaller), each part with its own key: a large file is never held in
# memory (it is read, encrypted and sent 1 MiB at a time) and an interrupted push resumes
# at the first part not uploaded yet.
PART_SIZE = 32 << 20
PIECE = 1 << 20  # read, encrypt, send and write in pieces of this size
MIN_PART_SIZE = 1 << 20


@dataclass
class Entry:
    path: str
    sha256: str
    size: int
    mtime: float
    file: dict[str, Any] | None  # the EncryptedFile of a file stored as one part
    event_id: str = ""
    parts: list[dict[str, Any]] = field(default_factory=list)  # [{"size", "file"}] otherwise

    def pieces(self) -> list[tuple[int, dict[str, Any]]]:
        """(size, EncryptedFile) of each stored part, in order."""
        if self.file is not None:
            return [(self.size, self.file)]
        return [(int(p["size"]), dict(p["file"])) for p in self.parts]

    def to_content(self) -> dict[str, Any]:
        content: dict[str, Any] = {
            "path": self.path,
            "sha256": self.sha256,
            "size": self.size,
            "mtime": self.mtime,
        }
        if self.file is not None:
            content["file"] = self.file
        else:
            content["parts"] = self.parts
        return content


@dataclass
class PushResult:
    sent: int = 0  # uploaded
    deduplicated: int = 0  # indexed, reusing an upload of the same content
    unchanged: int = 0  # already in the backup as they are
    bytes_sent: int = 0
    resumed_parts: int = 0  # parts an earlier, interrupted push had uploaded already


Progress = Callable[[str, str, int, int], None]  # (path, what, done, total)


def safe_relative(path: str) -> PurePosixPath:
    """An index path as a relative path that stays inside the destination."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or any(p in ("..", "") for p in pure.parts) or "\0" in path:
        raise FileBackupError(f"refusing the unsafe path {path!r} in the backup index")
    return pure


def _hash_file(path: Path, part_size: int) -> tuple[str, list[str]]:
    """The SHA-256 of the whole file and of each part (hex), reading 1 MiB at a time."""
    whole = hashlib.sha256()
    parts: list[str] = []
    with path.open("rb") as f:
        while True:
            part = hashlib.sha256()
            left = part_size
            while left:
                piece = f.read(min(PIECE, left))
                if not piece:
                    break
                whole.update(piece)
                part.update(piece)
                left -= len(piece)
            if left == part_size and parts:
                break
            parts.append(part.hexdigest())
            if left:
                break
    return whole.hexdigest(), parts


def _read_at(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


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
            entry = Entry(
                path,
                str(content["sha256"]),
                int(content["size"]),
                float(content.get("mtime", 0)),
                dict(content["file"]) if "file" in content else None,
                event_id,
                [] if "file" in content else [dict(p) for p in content["parts"]],
            )
            pieces = entry.pieces()
        except (KeyError, TypeError, ValueError, FileBackupError):
            return None
        if entry.size < 0 or sum(size for size, _ in pieces) != entry.size:
            return None
        return entry

    async def part_size(self) -> int:
        """PART_SIZE, or less when the server's `m.upload.size` is smaller."""
        limit = (await self.client.api.media_config()).get("m.upload.size")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            return max(MIN_PART_SIZE, min(PART_SIZE, limit))
        return PART_SIZE

    async def push(self, directory: Path, progress: Progress | None = None) -> PushResult:
        if not await asyncio.to_thread(directory.is_dir):
            raise FileBackupError(f"{directory} is not a directory")
        room_id = await self.room(create=True)
        assert room_id is not None
        index = await self.index()
        by_hash = {e.sha256: e for e in index.values()}
        part_size = await self.part_size()
        files = await asyncio.to_thread(
            lambda: sorted(p for p in directory.rglob("*") if p.is_file() and not p.is_symlink())
        )
        result = PushResult()
        for number, path in enumerate(files, 1):
            rel = path.relative_to(directory).as_posix()
            stat = await asyncio.to_thread(path.stat)
            sha, part_hashes = await asyncio.to_thread(_hash_file, path, part_size)
            known = index.get(rel)
            if known is not None and known.sha256 == sha:
                result.unchanged += 1
                if progress:
                    progress(rel, "unchanged", number, len(files))
                continue
            same = by_hash.get(sha)
            if same is not None:
                entry = Entry(rel, sha, same.size, stat.st_mtime, same.file, parts=same.parts)
                result.deduplicated += 1
                what = "deduplicated"
            else:
                pieces = await self._upload_parts(
                    path, rel, sha, part_hashes, part_size, result, progress, (number, len(files))
                )
                if len(pieces) == 1:
                    entry = Entry(rel, sha, pieces[0]["size"], stat.st_mtime, pieces[0]["file"])
                else:
                    entry = Entry(rel, sha, sum(p["size"] for p in pieces), stat.st_mtime, None)
                    entry.parts = pieces
                result.sent += 1
                what = "sent"
            entry.event_id = await self.client.send_message(
                room_id, entry.to_content(), event_type=INDEX_EVENT
            )
            self.client.store.put_secret(_partial_key(sha), None)
            index[rel] = entry
            by_hash.setdefault(sha, entry)
            if progress:
                progress(rel, what, number, len(files))
        return result

    async def _upload_parts(
        self,
        path: Path,
        rel: str,
        sha: str,
        part_hashes: list[str],
        part_size: int,
        result: PushResult,
        progress: Progress | None,
        position: tuple[int, int],
    ) -> list[dict[str, Any]]:
        """Encrypt and upload a file part by part, streaming each from the disk; the parts
        already uploaded by an interrupted push of the same content (kept, sealed, in the
        local store) are not sent again."""
        store = self.client.store
        saved = store.get_secret(_partial_key(sha))
        done: list[dict[str, Any]] = []
        if saved is not None:
            record = json.loads(saved)
            if record.get("part_size") == part_size:
                done = list(record.get("parts", []))[: len(part_hashes)]
                result.resumed_parts += len(done)
        for k in range(len(done), len(part_hashes)):
            offset = k * part_size
            size = await asyncio.to_thread(path.stat)
            length = max(0, min(part_size, size.st_size - offset))
            encryptor = AttachmentEncryptor()
            plain_hash = hashlib.sha256()

            async def pieces(
                offset: int = offset,
                length: int = length,
                encryptor: AttachmentEncryptor = encryptor,
                plain_hash: Any = plain_hash,
            ) -> AsyncIterator[bytes]:
                sent = 0
                while sent < length:
                    piece = await asyncio.to_thread(
                        _read_at, path, offset + sent, min(PIECE, length - sent)
                    )
                    if not piece:
                        break
                    plain_hash.update(piece)
                    sent += len(piece)
                    yield encryptor.update(piece)
                tail = encryptor.finalize()
                if tail:
                    yield tail

            try:
                url = await self.client.api.upload_stream(
                    pieces(), length, "application/octet-stream"
                )
            except MatrixError as e:
                if e.errcode in QUOTA_ERRORS or e.status == 413:
                    raise FileBackupError(
                        f"the server refused {rel} ({length} bytes): {e.error or e.errcode}"
                        " — the media quota or upload size limit was reached; "
                        f"{result.sent} files were backed up before it"
                    ) from e
                raise
            if plain_hash.hexdigest() != part_hashes[k]:
                raise FileBackupError(f"{rel} changed while it was being backed up")
            info = encryptor.info()
            info["url"] = url
            done.append({"size": length, "file": info})
            result.bytes_sent += length
            store.put_secret(_partial_key(sha), json.dumps({"part_size": part_size, "parts": done}))
            if progress and len(part_hashes) > 1:
                progress(rel, f"part {k + 1}/{len(part_hashes)}", *position)
        return done

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
            if await asyncio.to_thread(_already_there, target, entry):
                if progress:
                    progress(entry.path, "unchanged", number, len(wanted))
                continue
            await self._pull_one(entry, target)
            if progress:
                progress(entry.path, "restored", number, len(wanted))
        return len(wanted)

    async def _pull_one(self, entry: Entry, target: Path) -> None:
        """Download each part into a temporary file, check its ciphertext hash, then decrypt
        it into the file being restored, 1 MiB at a time; the whole file's plaintext hash is
        checked before it replaces `target`."""
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".starling-part")
        cipher_tmp = target.with_name(target.name + ".starling-cipher")
        whole = hashlib.sha256()
        try:
            with await asyncio.to_thread(tmp.open, "wb") as out:
                for size, info in entry.pieces():
                    url = info.get("url")
                    if not isinstance(url, str):
                        raise FileBackupError(f"{entry.path}: the index entry has no file URL")
                    try:
                        key = parse_encrypted_file(info)
                    except AttachmentError as e:
                        raise FileBackupError(f"{entry.path}: {e}") from e
                    cipher_hash = hashlib.sha256()
                    with await asyncio.to_thread(cipher_tmp.open, "wb") as sink_file:

                        async def sink(
                            piece: bytes, f: Any = sink_file, h: Any = cipher_hash
                        ) -> None:
                            h.update(piece)
                            await asyncio.to_thread(f.write, piece)

                        got = await self.client.api.download_stream(url, sink, max_bytes=size)
                    if got != size or not hmac.compare_digest(cipher_hash.digest(), key.sha256):
                        raise FileBackupError(
                            f"{entry.path}: the file's SHA-256 does not match: it was changed"
                        )
                    await asyncio.to_thread(_decrypt_file, cipher_tmp, out, key, whole)
            if whole.hexdigest() != entry.sha256:
                raise FileBackupError(f"{entry.path}: the content does not match its hash")
            await asyncio.to_thread(os.replace, tmp, target)
            if entry.mtime:
                await asyncio.to_thread(os.utime, target, (entry.mtime, entry.mtime))
        finally:
            for leftover in (tmp, cipher_tmp):
                await asyncio.to_thread(leftover.unlink, missing_ok=True)


def _partial_key(sha: str) -> str:
    return f"file_backup_partial:{sha}"


def _decrypt_file(source: Path, out: Any, key: FileKey, whole: Any) -> None:
    """Decrypt a checked ciphertext file (AES-CTR, the attachment scheme) into `out`."""
    decryptor = ctr_decryptor(key)
    with source.open("rb") as f:
        for piece in iter(lambda: f.read(PIECE), b""):
            plain = decryptor.update(piece)
            whole.update(plain)
            out.write(plain)
    plain = decryptor.finalize()
    whole.update(plain)
    out.write(plain)


def _already_there(target: Path, entry: Entry) -> bool:
    """The file is already restored as it is in the backup (a pull that resumes)."""
    try:
        if not target.is_file() or target.stat().st_size != entry.size:
            return False
    except OSError:
        return False
    digest = hashlib.sha256()
    with target.open("rb") as f:
        for piece in iter(lambda: f.read(PIECE), b""):
            digest.update(piece)
    return digest.hexdigest() == entry.sha256

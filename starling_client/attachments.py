"""Encrypted attachments as the spec defines them ("Sending encrypted attachments"): a fresh
256-bit AES key and a 64-bit random IV per file, AES-CTR with the low 64 bits of the counter
block starting at zero, the SHA-256 of the ciphertext, and the key as a JWK — the
`EncryptedFile` object (`v2`) that goes into `file` / `thumbnail_file` of a message.

Also the small bits of media handling the client needs: image thumbnails (Pillow, bounded)
and the duration of an Ogg/Opus voice message (read from the Ogg pages, no decoder)."""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from starling_client.encoding import b64decode, b64encode, urlsafe_b64encode

CHUNK = 1 << 20
MAX_IMAGE_PIXELS = 50_000_000
THUMBNAIL_SIZE = (800, 600)


class AttachmentError(ValueError):
    """An attachment that must not be used: bad metadata, or a hash that does not match."""


def _cipher(key: bytes, iv: bytes) -> Cipher[modes.CTR]:
    return Cipher(algorithms.AES(key), modes.CTR(iv))


class AttachmentEncryptor:
    """Encrypts a file chunk by chunk (`update`), then gives the `EncryptedFile` metadata
    without `url` (`info`)."""

    def __init__(self) -> None:
        self.key = os.urandom(32)
        self.iv = os.urandom(8) + b"\x00" * 8
        self._enc = _cipher(self.key, self.iv).encryptor()
        self._sha = hashlib.sha256()

    def update(self, data: bytes) -> bytes:
        out = self._enc.update(data)
        self._sha.update(out)
        return out

    def finalize(self) -> bytes:
        out = self._enc.finalize()
        self._sha.update(out)
        return out

    def info(self) -> dict[str, Any]:
        return {
            "v": "v2",
            "key": {
                "kty": "oct",
                "key_ops": ["encrypt", "decrypt"],
                "alg": "A256CTR",
                "k": urlsafe_b64encode(self.key),
                "ext": True,
            },
            "iv": b64encode(self.iv),
            "hashes": {"sha256": b64encode(self._sha.digest())},
        }


def encrypt_attachment(plaintext: bytes) -> tuple[bytes, dict[str, Any]]:
    """The ciphertext and its `EncryptedFile` metadata (add `url` after uploading)."""
    enc = AttachmentEncryptor()
    ciphertext = enc.update(plaintext) + enc.finalize()
    return ciphertext, enc.info()


@dataclass(frozen=True)
class FileKey:
    key: bytes
    iv: bytes
    sha256: bytes


def parse_encrypted_file(info: Any) -> FileKey:
    """Check an `EncryptedFile` object and take out its key, IV and hash."""
    if not isinstance(info, dict):
        raise AttachmentError("EncryptedFile is not an object")
    if info.get("v") != "v2":
        raise AttachmentError(f"unsupported EncryptedFile version {info.get('v')!r}")
    jwk = info.get("key")
    if not isinstance(jwk, dict) or jwk.get("kty") != "oct" or jwk.get("alg") != "A256CTR":
        raise AttachmentError("the key is not an A256CTR octet JWK")
    ops = jwk.get("key_ops")
    if not isinstance(ops, list) or "decrypt" not in ops:
        raise AttachmentError("the key may not be used to decrypt")
    hashes = info.get("hashes")
    sha = hashes.get("sha256") if isinstance(hashes, dict) else None
    try:
        key = b64decode(str(jwk.get("k")))
        iv = b64decode(str(info.get("iv")))
        digest = b64decode(sha) if isinstance(sha, str) else b""
    except ValueError as e:
        raise AttachmentError(f"bad base64 in EncryptedFile: {e}") from e
    if len(key) != 32 or len(iv) != 16 or len(digest) != 32:
        raise AttachmentError("key, IV or SHA-256 of the wrong length")
    return FileKey(key, iv, digest)


def ctr_decryptor(file_key: FileKey) -> Any:
    """A streaming decryptor (`update`, `finalize`) for a file whose hash was checked."""
    return _cipher(file_key.key, file_key.iv).decryptor()


def decrypt_attachment(ciphertext: bytes, info: Any) -> bytes:
    """The plaintext, after checking the ciphertext's SHA-256 (before any decryption)."""
    file_key = parse_encrypted_file(info)
    if not hmac.compare_digest(hashlib.sha256(ciphertext).digest(), file_key.sha256):
        raise AttachmentError("the file's SHA-256 does not match: it was changed")
    dec = _cipher(file_key.key, file_key.iv).decryptor()
    return dec.update(ciphertext) + dec.finalize()


# ---- images -------------------------------------------------------------------------------


@dataclass
class ImageInfo:
    width: int
    height: int
    thumbnail: bytes  # JPEG or PNG
    thumbnail_mimetype: str
    thumbnail_width: int
    thumbnail_height: int


def image_info(data: bytes) -> ImageInfo | None:
    """Dimensions and a thumbnail of an image, or None when Pillow cannot read it (or it is
    too large to decode safely)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                return None
            img.thumbnail(THUMBNAIL_SIZE)
            has_alpha = img.mode in ("RGBA", "LA", "P")
            out = io.BytesIO()
            if has_alpha:
                img.convert("RGBA").save(out, "PNG")
                mimetype = "image/png"
            else:
                img.convert("RGB").save(out, "JPEG", quality=80)
                mimetype = "image/jpeg"
            return ImageInfo(width, height, out.getvalue(), mimetype, img.width, img.height)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


# ---- Ogg/Opus -----------------------------------------------------------------------------


def ogg_opus_duration_ms(data: bytes) -> int | None:
    """The duration of an Ogg/Opus stream: the last page's granule position less the
    OpusHead pre-skip, at 48 kHz. None when this is not Ogg/Opus."""
    if not data.startswith(b"OggS"):
        return None
    head = data.find(b"OpusHead")
    if head < 0 or head + 12 > len(data):
        return None
    pre_skip = int(struct.unpack_from("<H", data, head + 10)[0])
    last = data.rfind(b"OggS")
    if last < 0 or last + 14 > len(data):
        return None
    granule = int(struct.unpack_from("<q", data, last + 6)[0])
    if granule < 0:
        return None
    return max(0, (granule - pre_skip) * 1000 // 48000)

"""Encrypted attachments against the spec's format, with matrix-nio's implementation as an
independent oracle both ways; tampering is refused before decryption; image thumbnails and
Ogg/Opus durations."""

from __future__ import annotations

import base64
import io
import struct

import pytest
from nio.crypto.attachments import decrypt_attachment as nio_decrypt
from nio.crypto.attachments import encrypt_attachment as nio_encrypt
from PIL import Image

from starling_client.attachments import (
    AttachmentEncryptor,
    AttachmentError,
    decrypt_attachment,
    encrypt_attachment,
    image_info,
    ogg_opus_duration_ms,
)

DATA = bytes(range(256)) * 300 + b"tail"


def test_format_is_the_specs_encrypted_file() -> None:
    ciphertext, info = encrypt_attachment(DATA)
    assert set(info) == {"v", "key", "iv", "hashes"}
    assert info["v"] == "v2"
    assert info["key"]["kty"] == "oct" and info["key"]["alg"] == "A256CTR"
    assert info["key"]["ext"] is True and info["key"]["key_ops"] == ["encrypt", "decrypt"]
    k = info["key"]["k"]
    assert "=" not in k and "+" not in k and "/" not in k  # unpadded URL-safe base64
    assert len(base64.urlsafe_b64decode(k + "=")) == 32
    iv = base64.b64decode(info["iv"] + "==")
    assert len(iv) == 16 and iv[8:] == b"\x00" * 8  # the counter half starts at zero
    assert "=" not in info["iv"] and "=" not in info["hashes"]["sha256"]
    assert len(ciphertext) == len(DATA) and ciphertext != DATA
    # A fresh key and IV each time.
    _, again = encrypt_attachment(DATA)
    assert again["key"]["k"] != k and again["iv"] != info["iv"]


def test_nio_decrypts_ours_and_we_decrypt_nios() -> None:
    ciphertext, info = encrypt_attachment(DATA)
    assert nio_decrypt(ciphertext, info["key"]["k"], info["hashes"]["sha256"], info["iv"]) == DATA
    theirs, keys = nio_encrypt(DATA)
    assert decrypt_attachment(theirs, {**keys, "v": "v2"}) == DATA


def test_chunked_encryption_matches_whole() -> None:
    enc = AttachmentEncryptor()
    pieces = [enc.update(DATA[i : i + 1000]) for i in range(0, len(DATA), 1000)]
    ciphertext = b"".join(pieces) + enc.finalize()
    assert decrypt_attachment(ciphertext, enc.info()) == DATA


def test_tampering_and_bad_metadata_are_refused() -> None:
    ciphertext, info = encrypt_attachment(DATA)
    flipped = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    with pytest.raises(AttachmentError, match="SHA-256"):
        decrypt_attachment(flipped, info)
    for bad in (
        {**info, "v": "v1"},
        {**info, "key": {**info["key"], "alg": "A128CTR"}},
        {**info, "key": {**info["key"], "key_ops": ["encrypt"]}},
        {**info, "iv": "AAAA"},
        {**info, "key": {**info["key"], "k": "!!"}},
        {**info, "hashes": {}},
        "not an object",
    ):
        with pytest.raises(AttachmentError):
            decrypt_attachment(ciphertext, bad)


def test_image_thumbnail() -> None:
    out = io.BytesIO()
    Image.new("RGB", (1600, 1200), (200, 30, 30)).save(out, "PNG")
    info = image_info(out.getvalue())
    assert info is not None
    assert (info.width, info.height) == (1600, 1200)
    assert (info.thumbnail_width, info.thumbnail_height) == (800, 600)
    assert info.thumbnail_mimetype == "image/jpeg"
    with Image.open(io.BytesIO(info.thumbnail)) as thumb:
        assert thumb.size == (800, 600)
    assert image_info(b"not an image") is None


def ogg_page(granule: int, payload: bytes, seq: int) -> bytes:
    header = b"OggS" + bytes([0, 2 if seq == 0 else 0]) + struct.pack("<qIII", granule, 1, seq, 0)
    return header + bytes([1, len(payload)]) + payload


def test_ogg_opus_duration() -> None:
    head = (
        b"OpusHead" + bytes([1, 1]) + struct.pack("<H", 312) + struct.pack("<I", 48000) + b"\0\0\0"
    )
    data = (
        ogg_page(0, head, 0)
        + ogg_page(0, b"OpusTags", 1)
        + ogg_page(312 + 48000 * 3 + 24000, b"x", 2)
    )
    assert ogg_opus_duration_ms(data) == 3500
    assert ogg_opus_duration_ms(b"RIFF....WAVE") is None
    assert ogg_opus_duration_ms(b"OggS") is None

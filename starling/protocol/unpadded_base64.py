"""Unpadded base64, standard and URL-safe (spec: Appendices > Unpadded Base64)."""

from __future__ import annotations

import base64
import binascii


def encode_base64(data: bytes, urlsafe: bool = False) -> str:
    encoded = base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)
    return encoded.rstrip(b"=").decode("ascii")


def decode_base64(text: str) -> bytes:
    """Decode standard or URL-safe base64, with or without padding.

    Raises ValueError on anything that is not base64.
    """
    if not isinstance(text, str):
        raise ValueError("base64 input must be a string")
    stripped = text.rstrip("=")
    if len(stripped) % 4 == 1:
        raise ValueError("invalid base64 length")
    padded = stripped + "=" * (-len(stripped) % 4)
    alt = b"-_" if ("-" in padded or "_" in padded) else None
    try:
        return base64.b64decode(padded.encode("ascii"), altchars=alt, validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise ValueError(f"invalid base64: {e}") from None

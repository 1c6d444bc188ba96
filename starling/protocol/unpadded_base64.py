"""Unpadded base64, standard and URL-safe (spec: Appendices > Unpadded Base64).

Owns the one encoder and the one decoder every other module uses for keys, signatures,
hashes and hash-based IDs. Encoding never pads. Decoding follows the spec's "SHOULD
accept input with or without padding" and also takes the URL-safe alphabet, so callers
need not know which one a peer used; anything else is a ValueError.
"""

from __future__ import annotations

import base64
import binascii

_STANDARD_ONLY = frozenset("+/")
_URLSAFE_ONLY = frozenset("-_")


def encode_base64(data: bytes, urlsafe: bool = False) -> str:
    """Unpadded base64 of `data`; URL-safe alphabet (`-` and `_`) if `urlsafe`."""
    encoded = base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)
    return encoded.rstrip(b"=").decode("ascii")


def decode_base64(text: str) -> bytes:
    """Decode standard or URL-safe base64, with or without padding.

    Raises ValueError on anything that is not base64, including a mix of the two
    alphabets and characters outside them.
    """
    if not isinstance(text, str):
        raise ValueError("base64 input must be a string")
    stripped = text.rstrip("=")
    if len(stripped) % 4 == 1:
        raise ValueError("invalid base64 length")
    urlsafe = not _URLSAFE_ONLY.isdisjoint(stripped)
    if urlsafe and not _STANDARD_ONLY.isdisjoint(stripped):
        raise ValueError("invalid base64: mixes the standard and URL-safe alphabets")
    padded = stripped + "=" * (-len(stripped) % 4)
    try:
        raw = padded.encode("ascii")
        return base64.b64decode(raw, altchars=b"-_" if urlsafe else None, validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise ValueError(f"invalid base64: {e}") from None

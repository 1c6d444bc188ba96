"""The CoAP numbers of Starling's low-bandwidth transport (MSC3079 and our own), shared by
server and client (pure)."""

from __future__ import annotations

FEATURE = "org.matrix.msc3079.low_bandwidth"  # the /versions key (unstable prefix)
NOISE_FEATURE = "org.starling.noise"  # our Noise parameters inside it
OPTION_ACCESS_TOKEN = 256  # MSC3079: the access token, sticky for the session
OPTION_CBOR_VERSION = 257  # integer keys wanted in answers (version 1)
# Starling's: uint 1 = deflate bodies for this session (opt-in). From the range the CoAP
# option registry reserves for experiments (65000-65535; even: elective), as 258 is
# RFC 7967's No-Response.
OPTION_DEFLATE = 65000
SYNC_PATH = "/_matrix/client/v3/sync"


def http_status(code: int) -> int:
    """CoAP response code (class << 5 | detail) → HTTP status (RFC 8075 §7's reverse)."""
    cls, detail = divmod(int(code), 32)
    return 200 if cls == 2 else cls * 100 + detail

"""Coverage-guided fuzzing of the parsers with atheris (libFuzzer for Python), by hand.

    .venv/bin/pip install atheris==3.0.0
    .venv/bin/python fuzz/atheris_targets.py TARGET [libFuzzer flags, e.g. -max_total_time=600]
    make fuzz-atheris TARGET=pdu SECONDS=600

With no corpus directory among the flags, the run starts from a copy of fuzz/seeds/TARGET
in a temporary directory and uses the dictionary fuzz/json.dict.

TARGET is one of: canonical_json, pdu, x_matrix, filter, tokens. Each feeds the fuzzer's
bytes to the same entry points as the hypothesis properties in tests/fuzz/ and fails on
any exception other than the one that entry point declares. A crash leaves its input in
crash-<hash>; replay it by passing that file instead of flags. Not part of CI (`make fuzz`
runs the bounded hypothesis suite for longer instead).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from starling.directory.service import _parse_token as parse_directory_token
    from starling.errors import MatrixError
    from starling.protocol.canonical_json import (
        CanonicalJsonError,
        encode_canonical_json,
        parse_json_lenient,
        parse_json_strict,
    )
    from starling.protocol.event_format import EventFormatError, parse_pdu
    from starling.protocol.event_signing import EventSigningError, required_signing_servers
    from starling.protocol.hashing import EventHashError, check_content_hash
    from starling.protocol.redaction import RedactionError, redact
    from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS, get_room_version
    from starling.protocol.signing import SigningKey
    from starling.protocol.x_matrix import XMatrixError, parse_header, verify_request
    from starling.search.service import SearchToken
    from starling.sync.filtering import parse_filter_json, parse_sync_filter
    from starling.sync.tokens import SyncToken, parse_room_position

VERSIONS = sorted(KNOWN_ROOM_VERSIONS, key=int)
KEY = SigningKey(b"\x03" * 32, "k1")


def canonical_json(data: bytes) -> None:
    for parse in (parse_json_strict, parse_json_lenient):
        try:
            value = parse(data)
        except CanonicalJsonError:
            continue
        if parse is parse_json_strict:
            assert parse_json_strict(encode_canonical_json(value)) == value


def pdu(data: bytes) -> None:
    if not data:
        return
    rv = get_room_version(VERSIONS[data[0] % len(VERSIONS)])
    parse = parse_json_strict if rv.strict_canonical_json else parse_json_lenient
    try:
        value = parse(data[1:])
        if not isinstance(value, dict):
            return
        parse_pdu(value, rv)
    except (CanonicalJsonError, EventFormatError):
        return
    for step in (
        check_content_hash,
        lambda p: required_signing_servers(p, rv),
        lambda p: redact(p, rv),
    ):
        with contextlib.suppress(EventHashError, EventSigningError, RedactionError):
            step(value)


def x_matrix(data: bytes) -> None:
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))
    try:
        auth = parse_header(text)
        verify_request(
            auth,
            KEY.verify_key,
            method="GET",
            uri="/_matrix/federation/v1/version",
            our_server_name="dest.example",
        )
    except XMatrixError:
        pass


def filter_(data: bytes) -> None:
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))
    try:
        f = parse_sync_filter(parse_filter_json(text))
    except MatrixError:
        return
    f.timeline.matches("m.room.message", "@a:b", "!r:b", {"url": "x"})


def tokens(data: bytes) -> None:
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))
    int64 = range(-(2**63), 2**63)
    for parse in (
        lambda t: SyncToken.parse(t).events,
        parse_room_position,
        lambda t: SearchToken.parse(t).value,
        lambda t: -parse_directory_token(t)[1][0],
    ):
        with contextlib.suppress(MatrixError):
            assert parse(text) in int64


TARGETS: dict[str, Callable[[bytes], None]] = {
    "canonical_json": canonical_json,
    "pdu": pdu,
    "x_matrix": x_matrix,
    "filter": filter_,
    "tokens": tokens,
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer flags]")
    target = TARGETS[sys.argv[1]]
    flags = sys.argv[2:]
    here = Path(__file__).resolve().parent
    if not any(not f.startswith("-") for f in flags):
        corpus = Path(tempfile.mkdtemp(prefix=f"starling-fuzz-{sys.argv[1]}-"))
        shutil.copytree(here / "seeds" / sys.argv[1], corpus, dirs_exist_ok=True)
        flags = [f"-dict={here / 'json.dict'}", *flags, str(corpus)]
    atheris.Setup([sys.argv[0], *flags], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

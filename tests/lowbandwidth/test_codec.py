"""MSC3079's CBOR layer and path enums: the proposal's own example round-trips exactly."""

from __future__ import annotations

import pytest

from starling.protocol.lowbandwidth import codec, noise

MSC_JSON = {
    "type": "m.room.message",
    "content": {"msgtype": "m.text", "body": "Hello World"},
    "sender": "@alice:localhost",
    "room_id": "!foo:localhost",
    "unsigned": {"bool_value": True, "null_value": None},
}
MSC_CBOR = bytes.fromhex(
    "a5026e6d2e726f6f6d2e6d65737361676503a2181b6b48656c6c6f20576f726c64181c666d2e7465787405"
    "6e21666f6f3a6c6f63616c686f7374067040616c6963653a6c6f63616c686f737409a26a626f6f6c5f7661"
    "6c7565f56a6e756c6c5f76616c7565f6"
)


def test_msc_example_round_trips() -> None:
    assert codec.encode(MSC_JSON) == MSC_CBOR
    assert codec.decode(MSC_CBOR) == MSC_JSON


def test_string_key_wins_and_numeric_strings_stay() -> None:
    raw = codec.cbor2.dumps({8: 1, "origin_server_ts": 2, "8": 3})
    assert codec.decode(raw) == {"origin_server_ts": 2, "8": 3}


@pytest.mark.parametrize(
    "raw, errcode",
    [
        (b"\xa5\x02", "M_NOT_JSON"),
        (b"\xff", "M_NOT_JSON"),
        (codec.cbor2.dumps({"x": 1.5}), "M_BAD_JSON"),
        (codec.cbor2.dumps({999: 1}), "M_BAD_JSON"),
        (codec.cbor2.dumps(b"bytes"), "M_BAD_JSON"),
        (b"\x81" * 200 + b"\x00", "M_BAD_JSON"),
    ],
)
def test_bad_cbor_refused(raw: bytes, errcode: str) -> None:
    with pytest.raises(codec.CodecError) as e:
        codec.decode(raw)
    assert e.value.errcode == errcode


def test_path_enums() -> None:
    segments = ["9", "!7mqP7DYBUOmwAweF:localhost", "m.room.message", "$.AAABeH6obLU"]
    path = codec.expand_path(segments)
    assert path == (
        "/_matrix/client/v3/rooms/%217mqP7DYBUOmwAweF%3Alocalhost/send/m.room.message/"
        "%24.AAABeH6obLU"
    )
    assert codec.compress_path(path) == segments
    assert codec.compress_path("/_matrix/client/r0/sync") == ["7"]
    assert codec.expand_path(["7"]) == "/_matrix/client/v3/sync"
    with pytest.raises(codec.CodecError):
        codec.expand_path(["9", "only-one"])
    assert codec.expand_path(["_matrix", "client", "v3", "account", "whoami"]) == (
        "/_matrix/client/v3/account/whoami"
    )


def test_noise_replay_window_and_tamper() -> None:
    key = noise.generate_private_key()
    initiator = noise.Initiator(noise.public_key(key))
    server, response = noise.respond(key, initiator.init)
    client = initiator.finish(response)
    first, second = client.seal(b"one"), client.seal(b"two")
    assert server.open(second) == b"two"  # reordered: still accepted once
    assert server.open(first) == b"one"
    for replay in (first, second):
        with pytest.raises(noise.NoiseError):
            server.open(replay)
    tampered = bytearray(client.seal(b"three"))
    tampered[-1] ^= 1
    with pytest.raises(noise.NoiseError):
        server.open(bytes(tampered))
    wrong = noise.Initiator(noise.public_key(noise.generate_private_key()))
    with pytest.raises(noise.NoiseError):
        noise.respond(key, wrong.init)


def test_noise_datagram_overhead_and_spent_counter() -> None:
    key = noise.generate_private_key()
    initiator = noise.Initiator(noise.public_key(key))
    server, response = noise.respond(key, initiator.init)
    client = initiator.finish(response)
    sealed = client.seal(b"coap")
    assert len(sealed) == 4 + 23  # kind, session ID, counter's low 16 bits, 16-byte tag
    assert server.open(sealed) == b"coap"
    # The last counter a session may use, then the session is spent.
    client._counter = noise.MAX_COUNTER
    server._window.highest = noise.MAX_COUNTER - 3  # the receiver was nearly there
    assert server.open(client.seal(b"last")) == b"last"
    with pytest.raises(noise.NoiseError):
        client.seal(b"one too many")


def test_noise_counter_rebuilt_from_its_low_bits() -> None:
    """Only the counter's low 16 bits travel; the receiver takes the nearest counter with
    those bits: across a wrap, reordered, after a run of losses. A datagram too far
    behind is refused (replay window), and one whose counter was guessed wrong fails
    authentication rather than being accepted."""
    assert noise.full_counter(0xFFFF, -1) == 0xFFFF
    assert noise.full_counter(0x0002, 0xFFFE) == 0x10002  # wrapped forwards
    assert noise.full_counter(0xFFFD, 0x10003) == 0xFFFD  # reordered behind a wrap
    assert noise.full_counter(0x1234, 5 * 65536 + 0x1000) == 5 * 65536 + 0x1234
    key = noise.generate_private_key()
    initiator = noise.Initiator(noise.public_key(key))
    server, response = noise.respond(key, initiator.init)
    client = initiator.finish(response)
    client._counter = 65536 - 3
    assert server.open(client.seal(b"first")) == b"first"  # nothing lower to mistake it for
    sealed = [client.seal(bytes([i])) for i in range(8)]  # across the 16-bit wrap
    for datagram in [*sealed[4:], *sealed[:4]]:  # reordered
        assert len(server.open(datagram)) == 1
    for datagram in sealed:
        with pytest.raises(noise.NoiseError):
            server.open(datagram)  # replayed
    client._counter += 40_000  # a gap past half the 16-bit space: guessed wrong
    with pytest.raises(noise.NoiseError):
        server.open(client.seal(b"lost"))
    assert server._window.highest == 65536 + 5  # forgeries and failures never move it


def test_block_follow_ups_leave_out_the_session_options() -> None:
    from aiocoap import CON, GET, Message
    from aiocoap.numbers.optionnumbers import OptionNumber
    from aiocoap.optiontypes import BlockOption, OpaqueOption

    from starling.protocol.lowbandwidth.coap import OPTION_ACCESS_TOKEN
    from starling_client.lowbandwidth import _without_session_options

    def request(block: int) -> bytes:
        message = Message(code=GET, mtype=CON, uri_path=["7"], mid=7, token=b"\x01")
        message.opt.uri_query = ["timeout=0"]
        message.opt.add_option(OpaqueOption(OptionNumber(OPTION_ACCESS_TOKEN), b"t" * 40))
        message.opt.block2 = BlockOption.BlockwiseTuple(block, False, 6)
        return bytes(message.encode())

    first, follow_up = request(0), request(3)
    assert _without_session_options(first) == first  # block 0 carries them (sticky)
    stripped = _without_session_options(follow_up)
    assert len(stripped) <= len(follow_up) - 40
    decoded = Message.decode(stripped)
    assert decoded.opt.get_option(OptionNumber(OPTION_ACCESS_TOKEN)) == ()
    assert decoded.opt.block2.block_number == 3 and decoded.mid == 7
    assert list(decoded.opt.uri_query) == ["timeout=0"] and decoded.token == b"\x01"


def test_packed_sync_tokens() -> None:
    token = (
        "s450~account_data.0~device_lists.97~peeks.0~presence.0~receipts.0~to_device.0"
        "~typing.1796580062738~unread_counts.450"
    )
    packed = codec.pack_token(token)
    assert packed is not None and len(packed) < len(token) / 2
    assert codec.unpack_token(packed) == token
    assert codec.pack_token("s1") is None  # not shorter: sent as it is
    for bad in ("!!!", "AAAA", codec.pack_token("x" * 5000) or ""):
        with pytest.raises(codec.CodecError) as e:
            codec.unpack_token(bad)
        assert e.value.errcode == "M_INVALID_PARAM"

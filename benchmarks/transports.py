"""Bytes on the wire (issue #16): the same client flow over HTTPS+JSON, the WebSocket (over
TLS) and low-bandwidth CoAP+CBOR+Noise; and delivery latency of a message to a WebSocket
client versus a long-polling /sync client.

    .venv/bin/python -m benchmarks.transports              # SQLite, writes benchmarks/results/
    .venv/bin/python -m benchmarks.transports --no-write --messages 5

One in-process Homeserver (SQLite, presence off so every answer is deterministic) with a
TLS client listener and the low-bandwidth listener. For each transport a fresh user
`bob` is set up over HTTP, unmeasured: 10 rooms created by `alice`, named, with two
messages each, which bob joined. Then, measured:

1. **login**: for HTTPS and the WebSocket a new TLS connection and POST /login (the
   WebSocket's login is HTTP too); the WebSocket then opens its socket (counted in
   "connect"); for CoAP the Noise handshake and login over CoAP.
2. **initial sync** of the 10 rooms (the same /sync answer on every transport).
3. **send** x N: bob sends a message and receives its remote echo by sync (clients must).
   "request only" is the send request and its answer alone.
4. **receive** x N: alice sends (unmeasured, over HTTP); bob's sync brings it: an HTTP
   long-poll, a pushed WebSocket frame, a CoAP Observe notification (RFC 7641: bob
   registered once, with the initial sync as its first answer).

Bytes are what the client's link carries at the IP layer. TCP: a relay in front of the
TLS listener counts the payload (TLS records included), and the kernel's TCP_INFO on its
client-facing socket counts every segment both ways (SYN, pure ACKs, retransmissions),
each with IPv4 (20) and TCP (20 + 12 of timestamps when negotiated) headers; the relay's
MSS is clamped to 1460 (a 1500-byte MTU) so segmentation is a real link's, not
loopback's 64 KiB. UDP: the CoAP client counts every datagram it sends and receives
(CoAP retransmissions included), each with 28 bytes of IPv4+UDP headers. Link-layer
framing is not counted; neither is closing the connection after the flow.
Loops are bounded: N messages (default 20), each wait at most 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import socket
import ssl
import statistics
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.machine import ROOT, cpu_model, git_commit
from starling.app import Homeserver
from starling.config import load_config_dict
from starling.generate_config import write_self_signed_certificate
from starling.protocol.lowbandwidth import noise
from starling.protocol.signing import SigningKey
from starling_client.api import Api
from starling_client.lowbandwidth import LowBandwidthClient

SERVER_NAME = "localhost"
PASSWORD = "benchmark password"
ROOMS = 10
WAIT_S = 30.0


IPV4_HEADER = 20
UDP_HEADER = 8
TCP_HEADER = 20
TCP_TIMESTAMPS = 12  # the timestamp option, padded: on every segment once negotiated
TCP_SYN_OPTIONS = 20  # MSS, SACK-permitted, timestamps, window scale (Linux's SYN)
NOISE_OVERHEAD = noise.HEADER.size + noise.TAG_LENGTH  # on every data datagram
ETHERNET_MSS = 1460  # a 1500-byte MTU: what a real link would segment at
# struct tcp_info (linux/tcp.h) offsets of the fields read here
_TCPI_OPTIONS = 5
_TCPI_TOTAL_RETRANS = 100
_TCPI_SEGS_OUT = 136
_TCPI_SEGS_IN = 140
_TCPI_BYTES_RETRANS = 208
_TCPI_SIZE = 216
_TCPI_OPT_TIMESTAMPS = 1


def tcp_counters(sock: Any) -> tuple[int, int, int, bool]:
    """(segments out, segments in, bytes retransmitted, timestamps on) of a live TCP
    socket, from the kernel's TCP_INFO (Linux ≥ 4.19)."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCPI_SIZE)
    if len(raw) < _TCPI_SIZE:
        raise RuntimeError("TCP_INFO too short: this benchmark needs Linux >= 4.19")
    segs_out, segs_in = struct.unpack_from("=II", raw, _TCPI_SEGS_OUT)
    (retrans_bytes,) = struct.unpack_from("=Q", raw, _TCPI_BYTES_RETRANS)
    return segs_out, segs_in, retrans_bytes, bool(raw[_TCPI_OPTIONS] & _TCPI_OPT_TIMESTAMPS)


class Relay:
    """A TCP relay in front of the server that counts what the client's link carries:
    TCP payload (TLS records included) each way, and, from the kernel's TCP_INFO on the
    client-facing socket, every segment both ways (handshake, pure ACKs, FINs,
    retransmissions) with its IPv4 and TCP headers. The listening socket's MSS is
    clamped to Ethernet's 1460, so large answers are cut into segments as on a real
    link rather than loopback's 64 KiB."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = 0
        self.down = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self.sockets: list[Any] = []
        self.closed_headers = 0  # header bytes of connections already gone

    @property
    def payload(self) -> int:
        return self.up + self.down

    @property
    def headers(self) -> int:
        """IPv4+TCP header bytes of every segment so far (retransmitted payload too)."""
        return self.closed_headers + sum(self._headers(s) for s in self.sockets)

    @staticmethod
    def _headers(sock: Any) -> int:
        try:
            segs_out, segs_in, retrans, timestamps = tcp_counters(sock)
        except OSError:
            return 0
        per_segment = IPV4_HEADER + TCP_HEADER + (TCP_TIMESTAMPS if timestamps else 0)
        syn_extra = 2 * (TCP_SYN_OPTIONS - (TCP_TIMESTAMPS if timestamps else 0))
        return (segs_out + segs_in) * per_segment + syn_extra + retrans

    @property
    def total(self) -> int:
        return self.payload + self.headers

    async def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, ETHERNET_MSS)
        listener.bind(("127.0.0.1", 0))
        self.server = await asyncio.start_server(self._handle, sock=listener)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        self.sockets.append(sock)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            try:
                while data := await src.read(65536):
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                if not up:
                    # The last reading of this connection (its closing FIN exchange is
                    # outside every measured phase).
                    self.closed_headers += self._headers(sock)
                    self.sockets.remove(sock)
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@dataclass
class Result:
    name: str
    phases: dict[str, int] = field(default_factory=dict)
    send_request_only: list[int] = field(default_factory=list)
    sends: list[int] = field(default_factory=list)
    receives: list[int] = field(default_factory=list)
    payload: int = 0  # the whole flow without IP/TCP/UDP headers (the old method)
    datagrams: int = 0  # CoAP: datagrams of the whole flow (each pays IPv4+UDP and Noise)
    cold_send: tuple[int, int] = (0, 0)  # one send on a new connection: (IP layer, payload)


class Meter:
    def __init__(self, read: Callable[[], int]) -> None:
        self.read = read
        self.mark = read()

    def take(self) -> int:
        now = self.read()
        used, self.mark = now - self.mark, now
        return used


def texts(sync: dict[str, Any]) -> list[str]:
    out = []
    for room in sync.get("rooms", {}).get("join", {}).values():
        for event in room.get("timeline", {}).get("events", []):
            if event.get("type") == "m.room.message":
                out.append(str(event["content"].get("body")))
    return out


async def setup_user(http: Api, alice: Api, name: str) -> tuple[str, list[str]]:
    """bob_<name> joined to 10 fresh rooms with a name and two messages each."""
    answer = await http.request(
        "POST",
        "/_matrix/client/v3/register",
        {"username": name, "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
        auth=False,
    )
    bob = Api(http.homeserver, str(answer["access_token"]), transport="http")
    rooms = []
    for i in range(ROOMS):
        room_id = await alice.create_room({"name": f"Room {i}", "invite": [answer["user_id"]]})
        for j in range(2):
            await alice.send(room_id, "m.room.message", {"msgtype": "m.text", "body": f"m{j}"})
        await bob.join(room_id)
        rooms.append(room_id)
    await bob.close()
    await http.close()
    return name, rooms


async def wait_for(
    get_sync: Callable[[str], Any], since: str, body: str
) -> tuple[str, dict[str, Any]]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        sync = await get_sync(since)
        since = sync.get("next_batch", since)
        if body in texts(sync):
            return since, sync
    raise TimeoutError(f"{body!r} never arrived")


async def run_http(
    base: str, https: str, alice: Api, name: str, n: int, relay: Relay, ws: bool
) -> Result:
    _, rooms = await setup_user(Api(base, transport="http"), alice, name)
    result = Result("WebSocket (TLS)" if ws else "HTTPS+JSON")
    meter = Meter(lambda: relay.total)
    payload = Meter(lambda: relay.payload)
    bob = Api(https, transport="auto" if ws else "http")
    connector = aiohttp.TCPConnector(ssl=False)
    bob._session = aiohttp.ClientSession(connector=connector)
    login = await bob.login(name, PASSWORD, "bench")
    result.phases["login"] = meter.take()
    bob.access_token = str(login["access_token"])
    if ws:
        await bob._carrier()
        assert bob.transport is not None, "the WebSocket was not chosen"
        result.phases["connect"] = meter.take()
    initial = await bob.sync(None, 0)
    result.phases["initial sync"] = meter.take()
    since = str(initial["next_batch"])

    async def sync(since: str) -> dict[str, Any]:
        return await bob.sync(since, 30_000)

    for i in range(n):
        body = f"from bob {i}"
        await bob.send(rooms[0], "m.room.message", {"msgtype": "m.text", "body": body})
        result.send_request_only.append(meter.read() - meter.mark)
        since, _ = await wait_for(sync, since, body)
        result.sends.append(meter.take())
    for i in range(n):
        body = f"from alice {i}"
        await alice.send(rooms[i % ROOMS], "m.room.message", {"msgtype": "m.text", "body": body})
        since, _ = await wait_for(sync, since, body)
        result.receives.append(meter.take())
    result.payload = payload.take()
    await bob.close()
    if not ws:
        # matrix-org's FOSDEM 2019 measure: one message sent on a new connection.
        await asyncio.sleep(0.3)  # the closed connection's FIN exchange is not counted
        meter.take()
        payload.take()
        cold = Api(https, str(login["access_token"]), transport="http")
        cold._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False))
        await cold.send(rooms[0], "m.room.message", {"msgtype": "m.text", "body": "test"})
        result.cold_send = (meter.take(), payload.take())
        await cold.close()
    return result


async def run_coap(base: str, alice: Api, name: str, n: int, port: int, key: bytes) -> Result:
    _, rooms = await setup_user(Api(base, transport="http"), alice, name)
    result = Result("CoAP+CBOR+Noise")
    bob = await LowBandwidthClient.connect("127.0.0.1", port, key)

    def wire() -> int:
        datagrams = bob.datagrams_sent + bob.datagrams_received
        return bob.bytes_sent + bob.bytes_received + datagrams * (IPV4_HEADER + UDP_HEADER)

    meter = Meter(wire)
    meter.mark = 0  # the handshake is part of login
    payload = Meter(lambda: bob.bytes_sent + bob.bytes_received)
    payload.mark = 0
    status, login = await bob.request(
        "POST",
        "/_matrix/client/v3/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": name},
            "password": PASSWORD,
        },
    )
    assert status == 200, login
    bob.access_token = login["access_token"]
    result.phases["login"] = meter.take()
    # /sync by CoAP Observe: the registration's first answer is the initial sync, then
    # the server pushes each new /sync answer (no request per sync).
    stream = bob.observe_sync()
    initial = await anext(stream)
    result.phases["initial sync"] = meter.take()
    since = str(initial["next_batch"])

    async def sync(since: str) -> dict[str, Any]:
        return await asyncio.wait_for(anext(stream), WAIT_S)

    for i in range(n):
        body = f"from bob {i}"
        path = f"/_matrix/client/v3/rooms/{rooms[0]}/send/m.room.message/t{i}"
        status, _ = await bob.request("PUT", path, {"msgtype": "m.text", "body": body})
        assert status == 200
        result.send_request_only.append(meter.read() - meter.mark)
        since, _ = await wait_for(sync, since, body)
        result.sends.append(meter.take())
    for i in range(n):
        body = f"from alice {i}"
        await alice.send(rooms[i % ROOMS], "m.room.message", {"msgtype": "m.text", "body": body})
        since, _ = await wait_for(sync, since, body)
        result.receives.append(meter.take())
    result.payload = payload.take()
    result.datagrams = bob.datagrams_sent + bob.datagrams_received
    await stream.aclose()
    await bob.close()
    # matrix-org's FOSDEM 2019 measure: one message sent on a new connection (a Noise
    # handshake, then the send carrying the token and session options).
    cold = await LowBandwidthClient.connect("127.0.0.1", port, key)
    cold.access_token = bob.access_token
    status, _ = await cold.request(
        "PUT",
        f"/_matrix/client/v3/rooms/{rooms[0]}/send/m.room.message/cold",
        {"msgtype": "m.text", "body": "test"},
    )
    assert status == 200
    datagrams = cold.datagrams_sent + cold.datagrams_received
    cold_payload = cold.bytes_sent + cold.bytes_received
    result.cold_send = (cold_payload + datagrams * (IPV4_HEADER + UDP_HEADER), cold_payload)
    await cold.close()
    return result


async def latency(base: str, alice: Api, n: int) -> dict[str, list[float]]:
    """Milliseconds from alice's send returning to bob holding the message."""
    out: dict[str, list[float]] = {}
    for mode in ("websocket", "http"):
        _, rooms = await setup_user(Api(base, transport="http"), alice, f"lat_{mode}")
        bob = Api(base, transport="auto" if mode == "websocket" else "http")
        login = await bob.login(f"lat_{mode}", PASSWORD, "bench")
        bob.access_token = str(login["access_token"])
        since = str((await bob.sync(None, 0))["next_batch"])

        async def bob_sync(since: str, bob: Api = bob) -> dict[str, Any]:
            return await bob.sync(since, 30_000)

        samples = []
        for i in range(n):
            body = f"lat {i}"
            poll = asyncio.create_task(wait_for(bob_sync, since, body))
            await asyncio.sleep(0.05)  # bob is waiting before alice sends
            await alice.send(rooms[0], "m.room.message", {"msgtype": "m.text", "body": body})
            sent = time.perf_counter()
            since, _ = await poll
            samples.append((time.perf_counter() - sent) * 1000)
        out[mode] = samples
        await bob.close()
    return out


async def main(n: int, write: bool) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="starling-transports-"))
    (workdir / "signing.key").write_text(SigningKey.generate().to_key_file_line() + "\n")
    write_self_signed_certificate(SERVER_NAME, workdir / "tls.crt", workdir / "tls.key")
    config = load_config_dict(
        {
            "server_name": SERVER_NAME,
            "listeners": [
                {"port": 0, "resources": [{"names": ["client"]}]},
                {"port": 0, "tls": True, "resources": [{"names": ["client"]}]},
            ],
            "database": {"name": "sqlite3", "args": {"database": str(workdir / "hs.db")}},
            "media_store_path": str(workdir / "media"),
            "signing_key_path": str(workdir / "signing.key"),
            "tls_certificate_path": str(workdir / "tls.crt"),
            "tls_private_key_path": str(workdir / "tls.key"),
            "enable_registration": True,
            "enable_registration_without_verification": True,
            "presence": {"enabled": False},
            "rc_message": {"per_second": 10000, "burst_count": 10000},
            "rc_registration": {"per_second": 10000, "burst_count": 10000},
            "rc_login": {
                "address": {"per_second": 10000, "burst_count": 10000},
                "account": {"per_second": 10000, "burst_count": 10000},
                "failed_attempts": {"per_second": 10000, "burst_count": 10000},
            },
            "rc_joins": {
                "local": {"per_second": 10000, "burst_count": 10000},
                "remote": {"per_second": 10000, "burst_count": 10000},
            },
            "rc_joins_per_room": {"per_second": 10000, "burst_count": 10000},
            "rc_invites": {
                "per_room": {"per_second": 10000, "burst_count": 10000},
                "per_user": {"per_second": 10000, "burst_count": 10000},
                "per_issuer": {"per_second": 10000, "burst_count": 10000},
            },
            "low_bandwidth": {"port": 0, "noise_key_path": str(workdir / "noise.key")},
        },
        environ={},
        config_dir=str(workdir),
    )
    hs = await Homeserver.start(config)
    relay: Relay | None = None
    try:
        plain_port = hs.runners[0].addresses[0][1]
        tls_port = hs.runners[1].addresses[0][1]
        base = f"http://127.0.0.1:{plain_port}"
        relay = Relay(tls_port)
        await relay.start()
        https = f"https://127.0.0.1:{relay.port}"
        alice = Api(base, transport="http")
        reg = await alice.request(
            "POST",
            "/_matrix/client/v3/register",
            {"username": "alice", "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
            auth=False,
        )
        alice.access_token = str(reg["access_token"])
        async with aiohttp.ClientSession() as s, s.get(base + "/_matrix/client/versions") as r:
            versions = await r.json()
        noise_info = versions["org.matrix.msc3079.low_bandwidth"]["org.starling.noise"]
        key = base64.b64decode(noise_info["public_key"] + "=")
        results = [
            await run_http(base, https, alice, "bob_https", n, relay, ws=False),
            await run_http(base, https, alice, "bob_ws", n, relay, ws=True),
            await run_coap(base, alice, "bob_coap", n, int(noise_info["port"]), key),
        ]
        lat = await latency(base, alice, n)
        await alice.close()
    finally:
        if relay is not None:
            await relay.stop()
        await hs.stop()
    report = render(results, lat, n)
    print(report)
    if write:
        out = ROOT / "benchmarks" / "results"
        out.mkdir(exist_ok=True)
        path = out / f"transports-{datetime.now(UTC):%Y%m%d-%H%M%S}.md"
        path.write_text(report)
        print(f"written to {path}")


def render(results: list[Result], lat: dict[str, list[float]], n: int) -> str:
    base = results[0]

    def total(r: Result) -> int:
        return sum(r.phases.values()) + sum(r.sends) + sum(r.receives)

    lines = [
        f"# Bytes on the wire per transport ({datetime.now(UTC):%Y-%m-%d}, commit "
        f"{git_commit()}, {cpu_model()})",
        "",
        f"Flow: login, initial sync of {ROOMS} rooms, send {n} messages (each with its "
        f"echo by sync), receive {n}. Bytes on the client's link: IPv4+TCP headers of "
        "every segment (handshake, ACKs, retransmissions; MSS 1460) with the TCP payload "
        "incl. TLS, or IPv4+UDP headers of every datagram (retransmissions too) with the "
        "UDP payload incl. Noise. Link-layer framing (Ethernet, radio) is not counted.",
        "",
        "| | " + " | ".join(r.name for r in results) + " |",
        "|---|" + "---:|" * len(results),
    ]
    phases = ["login", "connect", "initial sync"]
    for phase in phases:
        lines.append(
            f"| {phase} | " + " | ".join(str(r.phases.get(phase, 0)) for r in results) + " |"
        )
    rows: list[tuple[str, Callable[[Result], float]]] = [
        ("send: request only (median)", lambda r: statistics.median(r.send_request_only)),
        ("send + echo sync (median)", lambda r: statistics.median(r.sends)),
        ("receive: one sync (median)", lambda r: statistics.median(r.receives)),
        ("whole flow", lambda r: float(total(r))),
        ("whole flow, payload only (no IP/TCP/UDP headers)", lambda r: float(r.payload)),
    ]
    for label, fn in rows:
        lines.append(f"| {label} | " + " | ".join(f"{fn(r):.0f}" for r in results) + " |")
    lines.append(
        "| HTTPS÷this (whole flow, IP layer) | "
        + " | ".join(f"{total(base) / total(r):.1f}x" for r in results)
        + " |"
    )
    lines.append(
        "| HTTPS÷this (whole flow, payload only) | "
        + " | ".join(f"{base.payload / r.payload:.1f}x" for r in results)
        + " |"
    )
    colds = [r for r in results if r.cold_send[0]]
    for label, index in (("IP layer", 0), ("payload only", 1)):
        lines.append(
            f"| one send on a new connection, {label} | "
            + " | ".join(str(r.cold_send[index]) if r.cold_send[0] else "-" for r in results)
            + " |"
        )
    if colds:
        lines.append(
            "| HTTPS÷this (one send on a new connection, IP layer / payload) | "
            + " | ".join(
                f"{base.cold_send[0] / r.cold_send[0]:.1f}x / "
                f"{base.cold_send[1] / r.cold_send[1]:.1f}x"
                if r.cold_send[0]
                else "-"
                for r in results
            )
            + " |"
        )
    lines.append(
        "| HTTPS÷this (per receive) | "
        + " | ".join(
            f"{statistics.median(base.receives) / statistics.median(r.receives):.1f}x"
            for r in results
        )
        + " |"
    )
    for r in results:
        if r.datagrams:
            framing = r.datagrams * (IPV4_HEADER + UDP_HEADER + NOISE_OVERHEAD)
            target = total(base) / 30
            lines += [
                "",
                f"Floor ({r.name}): the flow took {r.datagrams} datagrams; their IPv4+UDP "
                f"({IPV4_HEADER + UDP_HEADER}) and Noise ({NOISE_OVERHEAD}) framing alone "
                f"is {framing} bytes, before any CoAP or body. 30x fewer than HTTPS's "
                f"{total(base)} would be {target:.0f} bytes in all: "
                f"{target / r.datagrams:.0f} bytes a datagram with this many datagrams.",
            ]
    lines += [
        "",
        f"Delivery latency, alice's send returned → bob has the message ({n} samples, ms):",
        "",
        "| client | median | max |",
        "|---|---:|---:|",
    ]
    for mode, samples in lat.items():
        label = "WebSocket (pushed sync)" if mode == "websocket" else "HTTP long-poll /sync"
        lines.append(f"| {label} | {statistics.median(samples):.1f} | {max(samples):.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20, help="messages sent and received")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    ssl.create_default_context()  # fail early if ssl is missing
    asyncio.run(main(max(1, min(args.messages, 200)), not args.no_write))

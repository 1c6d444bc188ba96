"""Real multi-server federation tests: N `starling serve` processes over TLS on loopback.

Each server is set up exactly as the external harness does it (issue 9, "How it is run by
others"): `starling generate-config --server-name localhost:PORT --data-dir D --http-port C
--federation-port F --tls-cert CERT --tls-key KEY --open-registration --no-rate-limit`,
then `federation_verify_certificates: false`, `ip_range_blacklist: []` and
`trusted_key_servers: []` appended to D/starling.yaml, then `starling serve -c
D/starling.yaml` in its own process group, stopped with SIGTERM and restartable on the
same data directory (same key, users, tokens, rooms).

The certificates come from a throwaway test CA (`make_test_pki`), valid for `localhost`,
127.0.0.1 and ::1, so a test can also turn verification on with
`federation_custom_ca_list: [ca]`. With `proxy=True` the server name's port is a TCP
forwarder in the test process in front of the federation port (the server name's port is
not the listener's), as behind a real proxy.

Usage:

    async with federation_servers(tmp_path, 2, engine=engine) as (a, b):
        alice = await a.register("alice")
        status, body = await a.client_request("GET", "/_matrix/client/v3/...", alice.token)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from starling.protocol.signing import SigningKey
from tests.support.dbfixtures import fresh_database_url

STARLING = [sys.executable, "-m", "starling.cli"]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- a test PKI --------------------------------------------------------------------------


@dataclass(frozen=True)
class TestPKI:
    ca_cert: Path
    cert: Path  # leaf for localhost, 127.0.0.1, ::1 (chain: leaf + CA)
    key: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def make_test_pki(directory: Path, hostnames: Sequence[str] = ("localhost",)) -> TestPKI:
    """A CA and a leaf certificate it signed for `hostnames`, 127.0.0.1 and ::1."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Starling test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = TestPKI(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    pki.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    )
    _write_key(leaf_key, pki.key)
    return pki


# --- a TCP forwarder (the proxy in front of a federation port) ---------------------------


class TcpForwarder:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target_port>, in this event loop."""

    def __init__(self, port: int, target_port: int) -> None:
        self.port = port
        self.target_port = target_port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(OSError, RuntimeError):
                    dst.close()

        tasks = [
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.gather(*tasks)
        finally:
            self._tasks.difference_update(tasks)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await self._server.wait_closed()
            self._server = None


# --- one server --------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    user_id: str
    token: str
    device_id: str


@dataclass
class FederatedServer:
    label: str
    data_dir: Path
    client_port: int
    federation_port: int
    name_port: int  # the port in the server name (the proxy's, or the federation port)
    engine: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    # The proxy in front of the federation port (proxy=True): stopping it cuts the server
    # off from every other server's requests (a netsplit), starting it again heals that.
    forwarder: TcpForwarder | None = field(default=None, repr=False)
    _session: aiohttp.ClientSession | None = field(default=None, repr=False)

    @property
    def server_name(self) -> str:
        return f"localhost:{self.name_port}"

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def federation_url(self) -> str:
        return f"https://127.0.0.1:{self.federation_port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "starling.yaml"

    def signing_key(self) -> SigningKey:
        config = yaml.safe_load(self.config_path.read_text())
        return SigningKey.from_key_file((self.data_dir / config["signing_key_path"]).read_text())

    def log_tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    # --- lifecycle ---

    def start(self) -> None:
        """Start `starling serve` (blocking until the client API answers)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*STARLING, "serve", "-c", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.label} exited early:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.client_port), timeout=1):
                    pass
                with socket.create_connection(("127.0.0.1", self.federation_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"{self.label} did not start in time:\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM the server's process group and wait; SIGKILL if it lingers. Returns
        its exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT)
            except ProcessLookupError:
                pass
        return proc.returncode

    async def restart(self) -> None:
        await asyncio.to_thread(self.stop)
        await asyncio.to_thread(self.start)

    # --- client API ---

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def client_request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = orjson.dumps(body) if body is not None else None
        async with self._http().request(
            method,
            self.client_url + path,
            headers=headers,
            data=data,
            params=params,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            raw = await resp.read()
            try:
                return resp.status, orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                return resp.status, raw

    async def register(self, localpart: str | None = None, password: str = "pw-" + "x" * 8) -> User:
        """Register through the client API (the m.login.dummy flow)."""
        localpart = localpart or f"u{secrets.token_hex(4)}"
        body: dict[str, Any] = {
            "username": localpart,
            "password": password,
            "auth": {"type": "m.login.dummy"},
        }
        status, resp = await self.client_request("POST", "/_matrix/client/v3/register", None, body)
        if status == 401 and isinstance(resp, dict) and "session" in resp:
            body["auth"]["session"] = resp["session"]
            status, resp = await self.client_request(
                "POST", "/_matrix/client/v3/register", None, body
            )
        assert status == 200, (status, resp)
        return User(resp["user_id"], resp["access_token"], resp["device_id"])

    async def create_room(self, user: User, **body: Any) -> str:
        status, resp = await self.client_request(
            "POST", "/_matrix/client/v3/createRoom", user.token, body
        )
        assert status == 200, (status, resp)
        room_id: str = resp["room_id"]
        return room_id

    async def send_message(self, user: User, room_id: str, text: str) -> str:
        status, resp = await self.client_request(
            "PUT",
            f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{secrets.token_hex(8)}",
            user.token,
            {"msgtype": "m.text", "body": text},
        )
        assert status == 200, (status, resp)
        event_id: str = resp["event_id"]
        return event_id

    async def join(self, user: User, room: str, via: Sequence[str] = ()) -> str:
        """POST /join/{roomIdOrAlias}?via=...; returns the room ID."""
        from urllib.parse import quote

        query = "&".join(f"via={quote(v, safe='')}" for v in via)
        status, resp = await self.client_request(
            "POST",
            f"/_matrix/client/v3/join/{quote(room, safe='')}" + (f"?{query}" if query else ""),
            user.token,
            {},
        )
        assert status == 200, (status, resp)
        room_id: str = resp["room_id"]
        return room_id

    async def invite(self, user: User, room_id: str, target: str) -> None:
        status, resp = await self.client_request(
            "POST", f"/_matrix/client/v3/rooms/{room_id}/invite", user.token, {"user_id": target}
        )
        assert status == 200, (status, resp)

    async def state(self, user: User, room_id: str) -> list[dict[str, Any]]:
        status, resp = await self.client_request(
            "GET", f"/_matrix/client/v3/rooms/{room_id}/state", user.token
        )
        assert status == 200, (status, resp)
        events: list[dict[str, Any]] = resp
        return events

    async def messages(self, user: User, room_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The newest `limit` events of the room, newest first (GET /messages dir=b)."""
        status, resp = await self.client_request(
            "GET",
            f"/_matrix/client/v3/rooms/{room_id}/messages",
            user.token,
            params={"dir": "b", "limit": str(limit)},
        )
        assert status == 200, (status, resp)
        chunk: list[dict[str, Any]] = resp["chunk"]
        return chunk

    # --- federation API (unsigned; signed requests: `signed_request` below) ---

    async def federation_get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        async with self._http().get(
            self.federation_url + path,
            headers={"Host": self.server_name, **(headers or {})},
            ssl=False,
            timeout=aiohttp.ClientTimeout(total=30),
        ) as resp:
            raw = await resp.read()
            return resp.status, orjson.loads(raw) if raw else None


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 30.0, what: str = "condition"
) -> None:
    """Poll `check` until it returns true; AssertionError after `timeout` seconds (a
    hang guard, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        await asyncio.sleep(0.1)


def _generate(
    server: FederatedServer,
    pki: TestPKI,
    database_arg: str,
    extra_config: dict[str, Any],
    verify_certificates: bool,
) -> None:
    generated = subprocess.run(
        [
            *STARLING,
            "generate-config",
            "--server-name",
            server.server_name,
            "--data-dir",
            str(server.data_dir),
            "--http-port",
            str(server.client_port),
            "--federation-port",
            str(server.federation_port),
            "--database",
            database_arg,
            "--tls-cert",
            str(pki.cert),
            "--tls-key",
            str(pki.key),
            "--open-registration",
            "--no-rate-limit",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert generated.returncode == 0, generated.stderr
    appended: dict[str, Any] = {
        "federation_verify_certificates": False,
        "ip_range_blacklist": [],
        "trusted_key_servers": [],
        # the two-server tests list each other's room directories
        "allow_public_rooms_over_federation": True,
    }
    if verify_certificates:
        appended["federation_verify_certificates"] = True
        appended["federation_custom_ca_list"] = [str(pki.ca_cert)]
    appended.update(extra_config)
    with open(server.config_path, "a", encoding="utf-8") as f:
        f.write("\n" + yaml.safe_dump(appended, sort_keys=False))


@asynccontextmanager
async def federation_servers(
    tmp_path: Path,
    count: int,
    *,
    engine: str = "sqlite",
    proxy: Sequence[bool] | bool = False,
    extra_config: dict[str, Any] | None = None,
    verify_certificates: bool = False,
) -> AsyncIterator[list[FederatedServer]]:
    """Start `count` servers (SQLite or PostgreSQL, a fresh database each), yield them,
    stop them all (SIGTERM) and drop their databases. `verify_certificates` makes them
    verify each other's certificates against the test CA (instead of the external
    harness's `federation_verify_certificates: false`)."""
    pki = make_test_pki(tmp_path / "pki")
    proxies = [proxy] * count if isinstance(proxy, bool) else list(proxy)
    async with AsyncExitStack() as stack:
        servers: list[FederatedServer] = []
        for i in range(count):
            label = "abcdefghijklmnopqrstuvwxyz"[i]
            url = await stack.enter_async_context(fresh_database_url(engine, tmp_path / label))
            (tmp_path / label).mkdir(parents=True, exist_ok=True)
            federation_port = free_port()
            name_port = free_port() if proxies[i] else federation_port
            server = FederatedServer(
                label=label,
                data_dir=tmp_path / label / "data",
                client_port=free_port(),
                federation_port=federation_port,
                name_port=name_port,
                engine=engine,
                log=tmp_path / label / "server.log",
            )
            if proxies[i]:
                forwarder = TcpForwarder(name_port, federation_port)
                await forwarder.start()
                server.forwarder = forwarder
                stack.push_async_callback(forwarder.stop)
            database_arg = "sqlite" if engine == "sqlite" else url
            await asyncio.to_thread(
                _generate, server, pki, database_arg, extra_config or {}, verify_certificates
            )
            stack.push_async_callback(server.close)
            stack.push_async_callback(asyncio.to_thread, server.stop)
            servers.append(server)
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in servers))
        yield servers


async def signed_request(
    target: FederatedServer,
    method: str,
    path: str,
    *,
    origin: str,
    key: SigningKey,
    destination: str | None = None,
    body: Any = None,
    header: str | None = None,
    sent_body: Any = None,
) -> tuple[int, Any]:
    """A federation request to `target` signed (X-Matrix) as `origin` with `key`, for
    `destination` (default: the target's name). `header` replaces the Authorization
    header outright; `sent_body` is sent instead of the signed `body`."""
    from starling.protocol.x_matrix import sign_request

    destination = destination or target.server_name
    authorization = header or sign_request(
        key, method=method, uri=path, origin=origin, destination=destination, content=body
    )
    async with target._http().request(
        method,
        target.federation_url + path,
        headers={"Host": target.server_name, "Authorization": authorization},
        data=orjson.dumps(sent_body if sent_body is not None else body)
        if body is not None or sent_body is not None
        else None,
        ssl=False,
        timeout=aiohttp.ClientTimeout(total=60),
    ) as resp:
        raw = await resp.read()
        return resp.status, orjson.loads(raw) if raw else None

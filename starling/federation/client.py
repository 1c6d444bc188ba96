"""The outbound federation HTTP client: signed JSON requests to other homeservers.

`FederationClient.get_json/put_json/post_json(destination, path, ...)`:
* refuses destinations outside `federation_domain_whitelist` and this server itself;
* resolves the destination (`discovery`), then tries each target in order: HTTPS to the
  target's host and port with the `Host` header and certificate name the spec gives,
  certificates verified against the system's CAs (or `federation_custom_ca_list`) unless
  `federation_verify_certificates` is off or the server matches
  `federation_certificate_verification_whitelist`;
* every socket is checked against `ip_range_blacklist`/`ip_range_whitelist` on the exact
  address being connected to;
* signs every request with X-Matrix, including `destination`;
* bounds time (`timeout`), the response size and the JSON nesting depth;
* sends once more on a new connection when a pooled keep-alive connection turns out to
  have been closed by the server (any method; aiohttp alone retries only idempotent ones).

Errors: `FederationError(status, errcode, message)` when the server answered with an error
or an unusable body, `FederationUnreachable(destination, reason)` when it did not answer.

`path` is sent as given, so it must already be percent-encoded: build it with
`federation_path("/_matrix/federation/v1/event/{}", event_id)`.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver
from yarl import URL

from starling import __version__
from starling.config import Config
from starling.federation.discovery import (
    WELL_KNOWN_MAX_BYTES,
    DiscoveryError,
    DnsPythonSrvResolver,
    ServerResolver,
    SrvResolver,
    Target,
    WellKnownResponse,
    split_server_name,
)
from starling.federation.errors import FederationDenied, FederationError, FederationUnreachable
from starling.federation.ip_ranges import IPRangePolicy, guarded_socket_factory, is_blocked_error
from starling.metrics import Counter, Histogram
from starling.protocol.canonical_json import (
    CanonicalJsonError,
    encode_canonical_json_lenient,
    nested_within,
)
from starling.protocol.signing import SigningKey
from starling.protocol.x_matrix import XMatrixError, sign_request

logger = logging.getLogger(__name__)

# Largest response body read by default (a send_join answer for a big room is large).
DEFAULT_MAX_RESPONSE_BYTES = 100 * 1024 * 1024
# Deepest JSON nesting accepted in a response.
MAX_RESPONSE_JSON_DEPTH = 100
WELL_KNOWN_TIMEOUT = 10.0
WELL_KNOWN_MAX_REDIRECTS = 5

Query = Mapping[str, str | int | Sequence[str]]

OUTBOUND_REQUESTS = Counter(
    "starling_federation_client_requests_total",
    "Federation requests sent, by method and outcome (2xx, 4xx, 5xx, unreachable, denied).",
    ["method", "outcome"],
)
OUTBOUND_SECONDS = Histogram(
    "starling_federation_client_request_duration_seconds",
    "Time from resolving a destination to its answer (or to giving up), by method.",
    ["method"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def federation_path(template: str, *args: str) -> str:
    """`template` with each `{}` replaced by the percent-encoded argument."""
    return template.format(*(quote(a, safe="") for a in args))


def _encode_query(query: Query | None) -> str:
    if not query:
        return ""
    pairs: list[tuple[str, str]] = []
    for key, value in query.items():
        if isinstance(value, (str, int)):
            pairs.append((key, str(value)))
        else:
            pairs.extend((key, v) for v in value)
    return urlencode(pairs, quote_via=quote, safe="")


def build_ssl_contexts(config: Config) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(verifying context, non-verifying context) for federation connections."""
    if config.federation_custom_ca_list:
        # Synapse's meaning: the custom list replaces the system's CAs.
        verifying = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        for path in config.federation_custom_ca_list:
            verifying.load_verify_locations(cafile=str(config.resolve_path(path)))
    else:
        verifying = ssl.create_default_context()
    verifying.minimum_version = ssl.TLSVersion.TLSv1_2
    insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    return verifying, insecure


class FederationClient:
    def __init__(
        self,
        config: Config,
        signing_key: SigningKey,
        *,
        srv_resolver: SrvResolver | None = None,
        host_resolver: AbstractResolver | None = None,
        well_known_port: int = 443,
    ) -> None:
        self._server_name = config.server_name
        self._key = signing_key
        self._whitelist = (
            None
            if config.federation_domain_whitelist is None
            else frozenset(config.federation_domain_whitelist)
        )
        self._verify = config.federation_verify_certificates
        self._no_verify_globs = [
            g.lower() for g in config.federation_certificate_verification_whitelist
        ]
        self._verifying_ctx, self._insecure_ctx = build_ssl_contexts(config)
        self._policy = IPRangePolicy(config.ip_range_blacklist, config.ip_range_whitelist)
        self._host_resolver = host_resolver
        self._well_known_port = well_known_port
        self._session: aiohttp.ClientSession | None = None
        self.resolver = ServerResolver(
            srv_resolver or DnsPythonSrvResolver(), self._fetch_well_known
        )

    @property
    def server_name(self) -> str:
        return self._server_name

    # --- the contract --------------------------------------------------------------------

    async def get_json(
        self,
        destination: str,
        path: str,
        query: Query | None = None,
        *,
        timeout: float = 60.0,
        max_size: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> Any:
        return await self._request("GET", destination, path, query, None, timeout, max_size)

    async def put_json(
        self,
        destination: str,
        path: str,
        body: Any,
        *,
        query: Query | None = None,
        timeout: float = 60.0,
        max_size: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> Any:
        return await self._request("PUT", destination, path, query, body, timeout, max_size)

    async def post_json(
        self,
        destination: str,
        path: str,
        body: Any,
        *,
        query: Query | None = None,
        timeout: float = 60.0,
        max_size: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> Any:
        return await self._request("POST", destination, path, query, body, timeout, max_size)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- policy --------------------------------------------------------------------------

    def is_destination_allowed(self, destination: str) -> bool:
        """federation_domain_whitelist (None: everyone)."""
        return self._whitelist is None or destination in self._whitelist

    def _check_destination(self, destination: str) -> None:
        if destination == self._server_name:
            raise FederationDenied(destination, "will not send federation requests to itself")
        if not self.is_destination_allowed(destination):
            raise FederationDenied(destination, "not in federation_domain_whitelist")

    def _ssl_for(self, server_name: str, tls_name: str) -> ssl.SSLContext:
        if not self._verify:
            return self._insecure_ctx
        for name in (split_server_name(server_name)[0], tls_name.lower()):
            if any(fnmatch.fnmatchcase(name, g) for g in self._no_verify_globs):
                return self._insecure_ctx
        return self._verifying_ctx

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=self._host_resolver,
                socket_factory=guarded_socket_factory(self._policy),
                limit=200,
                limit_per_host=10,
                ttl_dns_cache=60,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": f"Starling/{__version__}"},
                trust_env=False,
                max_line_size=16 * 1024,
                max_field_size=16 * 1024,
                json_serialize=lambda v: orjson.dumps(v).decode(),
            )
        return self._session

    async def _fetch_well_known(self, hostname: str) -> WellKnownResponse:
        """GET https://<hostname>/.well-known/matrix/server, redirects followed (bounded),
        through the same IP range rules and certificate checks as every request."""
        url = URL.build(
            scheme="https",
            host=hostname,
            port=None if self._well_known_port == 443 else self._well_known_port,
            path="/.well-known/matrix/server",
        )
        async with self._get_session().get(
            url,
            ssl=self._ssl_for(hostname, hostname),
            timeout=aiohttp.ClientTimeout(total=WELL_KNOWN_TIMEOUT),
            allow_redirects=True,
            max_redirects=WELL_KNOWN_MAX_REDIRECTS,
        ) as resp:
            if resp.url.scheme != "https":  # redirected off HTTPS: not trusted
                return WellKnownResponse(status=400, body=b"", cache_control=None)
            try:
                body = await _read_bounded(resp, WELL_KNOWN_MAX_BYTES)
            except _TooLarge:
                return WellKnownResponse(status=413, body=b"", cache_control=None)
            return WellKnownResponse(resp.status, body, resp.headers.get("Cache-Control"))

    # --- requests ------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        destination: str,
        path: str,
        query: Query | None,
        body: Any,
        timeout: float,
        max_size: int,
    ) -> Any:
        if not path.startswith("/_matrix/"):
            raise ValueError(f"federation path must start with /_matrix/: {path!r}")
        outcome = "unreachable"
        start = time.perf_counter()
        try:
            result = await self._request_inner(
                method, destination, path, query, body, timeout, max_size
            )
            outcome = "2xx"
            return result
        except FederationDenied:
            outcome = "denied"
            raise
        except FederationError as e:
            outcome = f"{e.status // 100}xx"
            raise
        finally:
            OUTBOUND_REQUESTS.labels(method, outcome).inc()
            if outcome != "denied":
                OUTBOUND_SECONDS.labels(method).observe(time.perf_counter() - start)

    async def _request_inner(
        self,
        method: str,
        destination: str,
        path: str,
        query: Query | None,
        body: Any,
        timeout: float,
        max_size: int,
    ) -> Any:
        targets, query_string, headers, data = await self._prepare(
            method, destination, path, query, body, timeout
        )
        failures: list[str] = []
        for target in targets:
            # A pooled keep-alive connection the server has since closed fails at once
            # ("server disconnected"): that one attempt is made again, on a new connection.
            for attempt in range(2):
                try:
                    status, raw = await self._send(
                        method,
                        destination,
                        target,
                        path,
                        query_string,
                        headers,
                        data,
                        timeout,
                        max_size,
                    )
                except _Unreachable as e:
                    if e.stale_connection and attempt == 0:
                        continue
                    failures.append(f"{target.host}:{target.port}: {e}")
                    break
                return _parse_response(destination, status, raw)
            if failures and failures[-1].endswith(_TIMED_OUT):
                break
        raise FederationUnreachable(destination, "; ".join(failures) or "no target")

    async def _prepare(
        self,
        method: str,
        destination: str,
        path: str,
        query: Query | None,
        body: Any,
        timeout: float,
    ) -> tuple[list[Target], str, dict[str, str], bytes | None]:
        """Policy, discovery and the X-Matrix signature: (targets, query string, headers,
        body bytes) of a request about to be sent."""
        self._check_destination(destination)
        try:
            targets = await asyncio.wait_for(self.resolver.resolve(destination), timeout)
        except DiscoveryError as e:
            raise FederationUnreachable(destination, f"cannot resolve: {e}") from None
        except TimeoutError:
            raise FederationUnreachable(destination, "timed out resolving") from None
        query_string = _encode_query(query)
        uri = path + ("?" + query_string if query_string else "")
        try:
            authorization = sign_request(
                self._key,
                method=method,
                uri=uri,
                origin=self._server_name,
                destination=destination,
                content=body,
            )
            data = encode_canonical_json_lenient(body) if body is not None else None
        except (XMatrixError, CanonicalJsonError) as e:
            raise ValueError(f"cannot send this request body: {e}") from None
        headers = {"Authorization": authorization}
        if data is not None:
            headers["Content-Type"] = "application/json"
        return list(targets), query_string, headers, data

    @asynccontextmanager
    async def stream_get(
        self,
        destination: str,
        path: str,
        query: Query | None = None,
        *,
        timeout: float,
        total_timeout: float,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A signed GET whose answer (any status) is read by the caller, for bodies too big
        to hold in memory (media). `timeout` bounds resolving, connecting and each wait
        for data; `total_timeout` the whole exchange. Redirects are not followed."""
        if not path.startswith("/_matrix/"):
            raise ValueError(f"federation path must start with /_matrix/: {path!r}")
        targets, query_string, headers, _ = await self._prepare(
            "GET", destination, path, query, None, timeout
        )
        session = self._get_session()
        failures: list[str] = []
        response: aiohttp.ClientResponse | None = None
        start = time.perf_counter()
        for target in targets:
            for attempt in range(2):
                try:
                    response = await session.get(
                        _target_url(target, path, query_string),
                        headers={**headers, "Host": target.host_header},
                        ssl=self._ssl_for(destination, target.tls_name),
                        server_hostname=target.sni,
                        timeout=aiohttp.ClientTimeout(
                            total=total_timeout, sock_connect=timeout, sock_read=timeout
                        ),
                        allow_redirects=False,
                    )
                except TimeoutError:
                    failures.append(f"{target.host}:{target.port}: {_TIMED_OUT}")
                except aiohttp.ServerDisconnectedError as e:
                    if attempt == 0:
                        continue  # a pooled connection the server had closed: once more
                    failures.append(f"{target.host}:{target.port}: {type(e).__name__}")
                except (aiohttp.ClientError, OSError, ssl.SSLError) as e:
                    reason = "address refused by ip_range_blacklist"
                    if not is_blocked_error(e):
                        reason = f"{type(e).__name__}: {e}"
                    failures.append(f"{target.host}:{target.port}: {reason}")
                break
            if response is not None or (failures and failures[-1].endswith(_TIMED_OUT)):
                break
        if response is None:
            OUTBOUND_REQUESTS.labels("GET", "unreachable").inc()
            raise FederationUnreachable(destination, "; ".join(failures) or "no target")
        OUTBOUND_REQUESTS.labels("GET", f"{response.status // 100}xx").inc()
        OUTBOUND_SECONDS.labels("GET").observe(time.perf_counter() - start)
        try:
            yield response
        finally:
            response.release()

    @asynccontextmanager
    async def stream_url(
        self, url: str, *, timeout: float, total_timeout: float, max_redirects: int = 5
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """An unsigned GET of a URL another server pointed us to (a media `Location`),
        redirects followed (bounded), every connection under `ip_range_blacklist` and
        certificate checks as for federation."""
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise FederationUnreachable(url[:200], "not an http(s) URL")
        try:
            response = await self._get_session().get(
                parsed,
                ssl=self._ssl_for(parsed.host, parsed.host) if parsed.scheme == "https" else False,
                timeout=aiohttp.ClientTimeout(
                    total=total_timeout, sock_connect=timeout, sock_read=timeout
                ),
                allow_redirects=True,
                max_redirects=max_redirects,
            )
        except TimeoutError:
            raise FederationUnreachable(parsed.host, _TIMED_OUT) from None
        except (aiohttp.ClientError, OSError, ssl.SSLError) as e:
            if is_blocked_error(e):
                raise FederationUnreachable(
                    parsed.host, "address refused by ip_range_blacklist"
                ) from None
            raise FederationUnreachable(parsed.host, f"{type(e).__name__}: {e}") from None
        try:
            yield response
        finally:
            response.release()

    async def _send(
        self,
        method: str,
        destination: str,
        target: Target,
        path: str,
        query_string: str,
        headers: dict[str, str],
        data: bytes | None,
        timeout: float,
        max_size: int,
    ) -> tuple[int, bytes]:
        url = _target_url(target, path, query_string)
        session = self._get_session()
        try:
            async with session.request(
                method,
                url,
                headers={**headers, "Host": target.host_header},
                data=data,
                ssl=self._ssl_for(destination, target.tls_name),
                server_hostname=target.sni,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                raw = await _read_bounded(resp, max_size)
                return resp.status, raw
        except TimeoutError:
            raise _Unreachable(_TIMED_OUT) from None
        except _TooLarge:
            raise FederationError(502, None, f"response larger than {max_size} bytes") from None
        except aiohttp.ServerDisconnectedError as e:
            raise _Unreachable(f"{type(e).__name__}: {e}", stale_connection=True) from None
        except (aiohttp.ClientError, OSError, ssl.SSLError) as e:
            if is_blocked_error(e):
                raise _Unreachable("address refused by ip_range_blacklist") from None
            raise _Unreachable(f"{type(e).__name__}: {e}") from None


_TIMED_OUT = "timed out"


def _target_url(target: Target, path: str, query_string: str) -> URL:
    return URL.build(
        scheme="https",
        # With encoded=True yarl takes the host as written: an IPv6 one needs brackets.
        host=f"[{target.host}]" if ":" in target.host else target.host,
        port=target.port,
        path=path,
        query_string=query_string,
        encoded=True,
    )


class _Unreachable(Exception):
    def __init__(self, reason: str, *, stale_connection: bool = False) -> None:
        super().__init__(reason)
        self.stale_connection = stale_connection


class _TooLarge(Exception):
    pass


async def _read_bounded(resp: aiohttp.ClientResponse, max_size: int) -> bytes:
    if resp.content_length is not None and resp.content_length > max_size:
        raise _TooLarge()
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        total += len(chunk)
        if total > max_size:
            raise _TooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_response(destination: str, status: int, raw: bytes) -> Any:
    try:
        value = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        value = _NOT_JSON
    if value is not _NOT_JSON and not nested_within(value, MAX_RESPONSE_JSON_DEPTH):
        raise FederationError(status, None, f"{destination} answered JSON nested too deeply")
    if 200 <= status < 300:
        if value is _NOT_JSON or value is None:
            raise FederationError(status, None, f"{destination} answered without JSON")
        return value
    errcode: str | None = None
    message = f"{destination} answered {status}"
    if isinstance(value, dict):
        if isinstance(value.get("errcode"), str):
            errcode = value["errcode"]
        if isinstance(value.get("error"), str):
            message = value["error"][:1000]
    raise FederationError(status, errcode, message, body=value if isinstance(value, dict) else None)


_NOT_JSON = object()

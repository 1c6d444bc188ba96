"""HTTP calls to identity servers (spec: identity-service-api, v2).

The identity server is named by the client (`id_server`: a host with an optional port,
as the spec says, always reached over HTTPS), and key-validity URLs come from room state
that any inviter wrote, so every connection goes through `ip_range_blacklist` (the
address guard checks the exact address connected to) and answers are size-bounded.
Requests to an identity server about a user's binding carry that user's identity-server
access token; unbind requests are signed by this homeserver (X-Matrix), as the spec asks.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import aiohttp
import orjson

from starling.address_guard import AddressPolicy, guarded_socket_factory
from starling.errors import MatrixError, invalid_param
from starling.protocol.identifiers import is_valid_server_name
from starling.protocol.signing import SigningKey
from starling.protocol.unpadded_base64 import encode_base64
from starling.protocol.x_matrix import sign_request

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 15.0
MAX_ANSWER_BYTES = 64 * 1024


class IdentityServerError(Exception):
    """The identity server could not be reached or gave an unusable answer."""


def check_id_server(id_server: Any) -> str:
    """A client's `id_server`: a server name (host[:port]), never a URL or a path."""
    if not isinstance(id_server, str) or not is_valid_server_name(id_server):
        raise invalid_param("'id_server' must be a host name with an optional port")
    return id_server


def lookup_hash(medium: str, address: str, pepper: str) -> str:
    """The v2 lookup hash of a 3PID (identity-service-api "sha256" algorithm)."""
    digest = hashlib.sha256(f"{address} {medium} {pepper}".encode()).digest()
    return encode_base64(digest, urlsafe=True)


class IdentityServerClient:
    def __init__(
        self,
        server_name: str,
        signing_key: SigningKey,
        *,
        address_policy: AddressPolicy | None,
        verify_certificates: bool = True,
    ) -> None:
        self._server_name = server_name
        self._signing_key = signing_key
        self._policy = address_policy
        self._verify = verify_certificates
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            factory = (
                guarded_socket_factory(self._policy, "ip_range_blacklist")
                if self._policy is not None
                else None
            )
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(socket_factory=factory, ssl=self._verify),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(
        self,
        method: str,
        url: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """(status, parsed JSON or None); IdentityServerError when there is no answer."""
        data = orjson.dumps(body) if body is not None else None
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        try:
            async with self._get_session().request(
                method, url, data=data, params=params, headers=all_headers, allow_redirects=False
            ) as resp:
                raw = await resp.content.read(MAX_ANSWER_BYTES + 1)
                if len(raw) > MAX_ANSWER_BYTES:
                    raise IdentityServerError(f"{url}: answer too large")
                try:
                    parsed = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    parsed = None
                return resp.status, parsed
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            raise IdentityServerError(f"{url}: {e}") from e

    @staticmethod
    def _bearer(token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def bind(
        self, id_server: str, id_access_token: str, sid: str, client_secret: str, mxid: str
    ) -> dict[str, Any]:
        """POST /_matrix/identity/v2/3pid/bind; the identity server's signed association.
        Its refusal is passed on with its own status and error code."""
        status, answer = await self._request(
            "POST",
            f"https://{id_server}/_matrix/identity/v2/3pid/bind",
            body={"sid": sid, "client_secret": client_secret, "mxid": mxid},
            headers=self._bearer(id_access_token),
        )
        if status != 200 or not isinstance(answer, dict):
            raise _passed_on(status, answer, "The identity server refused the binding")
        return answer

    async def unbind(self, id_server: str, mxid: str, medium: str, address: str) -> bool:
        """POST /_matrix/identity/v2/3pid/unbind, signed by this server: True when the
        identity server unbound it (or never had it: 404), False when it does not support
        unbinding (Synapse's "no-support"). IdentityServerError when unreachable."""
        path = "/_matrix/identity/v2/3pid/unbind"
        body = {"mxid": mxid, "threepid": {"medium": medium, "address": address}}
        auth = sign_request(
            self._signing_key,
            method="POST",
            uri=path,
            origin=self._server_name,
            destination=id_server,
            content=body,
        )
        status, _ = await self._request(
            "POST", f"https://{id_server}{path}", body=body, headers={"Authorization": auth}
        )
        if status in (200, 404):
            return True
        if status in (400, 405, 501):
            return False
        raise IdentityServerError(f"{id_server}: unbind answered HTTP {status}")

    async def lookup(
        self, id_server: str, id_access_token: str | None, medium: str, address: str
    ) -> str | None:
        """The Matrix ID the identity server has for a 3PID (v2 hashed lookup), or None."""
        headers = self._bearer(id_access_token)
        base = f"https://{id_server}/_matrix/identity/v2"
        status, details = await self._request("GET", f"{base}/hash_details", headers=headers)
        if status != 200 or not isinstance(details, dict):
            raise _passed_on(status, details, "The identity server refused the lookup")
        algorithms = details.get("algorithms")
        pepper = details.get("lookup_pepper")
        if not isinstance(algorithms, list) or not isinstance(pepper, str):
            raise IdentityServerError(f"{id_server}: bad hash_details answer")
        if "sha256" in algorithms:
            wanted = lookup_hash(medium, address, pepper)
            body = {"addresses": [wanted], "algorithm": "sha256", "pepper": pepper}
        elif "none" in algorithms:
            wanted = f"{address} {medium}"
            body = {"addresses": [wanted], "algorithm": "none", "pepper": pepper}
        else:
            raise IdentityServerError(f"{id_server}: no lookup algorithm in common")
        status, answer = await self._request("POST", f"{base}/lookup", body=body, headers=headers)
        if status != 200 or not isinstance(answer, dict):
            raise _passed_on(status, answer, "The identity server refused the lookup")
        mappings = answer.get("mappings")
        found = mappings.get(wanted) if isinstance(mappings, dict) else None
        return found if isinstance(found, str) else None

    async def store_invite(
        self, id_server: str, id_access_token: str | None, invite: dict[str, Any]
    ) -> dict[str, Any]:
        """POST /_matrix/identity/v2/store-invite: token, public keys and display name."""
        status, answer = await self._request(
            "POST",
            f"https://{id_server}/_matrix/identity/v2/store-invite",
            body=invite,
            headers=self._bearer(id_access_token),
        )
        if status != 200 or not isinstance(answer, dict):
            raise _passed_on(status, answer, "The identity server refused the invite")
        return answer

    async def key_is_valid(self, key_validity_url: str, public_key: str) -> bool:
        """GET {key_validity_url}?public_key=...: whether the identity server still
        vouches for the key. Only https URLs are asked (anyone who may invite writes
        them into room state)."""
        if not key_validity_url.startswith("https://"):
            return False
        status, answer = await self._request(
            "GET", key_validity_url, params={"public_key": public_key}
        )
        return status == 200 and isinstance(answer, dict) and answer.get("valid") is True


def _passed_on(status: int, answer: Any, default: str) -> Exception:
    """The identity server's refusal, as a Matrix error for the client, or an
    IdentityServerError when it gave no usable answer."""
    if 400 <= status < 500 and isinstance(answer, dict):
        errcode = answer.get("errcode")
        error = answer.get("error")
        return MatrixError(
            status if status in (400, 401, 403, 404) else 400,
            errcode if isinstance(errcode, str) and errcode.startswith("M_") else "M_UNKNOWN",
            error if isinstance(error, str) else default,
        )
    return IdentityServerError(f"identity server answered HTTP {status}")

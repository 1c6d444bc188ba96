"""A thin async wrapper over the Client-Server API endpoints the client uses (aiohttp)."""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from starling_client.transport import Transport, TransportLost, choose_transport

API = "/_matrix/client/v3"


class MatrixError(Exception):
    """An error answer from the homeserver (or no answer at all: status 0)."""

    def __init__(
        self, status: int, errcode: str, error: str, body: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{errcode}: {error} (HTTP {status})" if status else error)
        self.status = status
        self.errcode = errcode
        self.error = error
        self.body = body  # the whole error answer (a 401's interactive-auth flows)


def _decode(raw: bytes) -> Any:
    """A response body: its JSON, or (not JSON) the start of its text."""
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return raw[:200].decode(errors="replace")


def _error(status: int, answer: Any) -> MatrixError:
    """The MatrixError of an error answer (a Matrix error object, or anything else)."""
    if isinstance(answer, dict):
        errcode, error = answer.get("errcode", "M_UNKNOWN"), answer.get("error", "")
        return MatrixError(status, str(errcode), str(error), answer)
    return MatrixError(status, "M_UNKNOWN", str(answer))


def _answer(status: int, answer: Any) -> dict[str, Any]:
    """The JSON object of a success, or the MatrixError of anything else."""
    if status >= 400 or not isinstance(answer, dict):
        raise _error(status, answer)
    return answer


def _mxc_parts(mxc: str) -> tuple[str, str]:
    """(server name, media ID) of an mxc:// URI."""
    if not mxc.startswith("mxc://") or mxc.count("/") != 3:
        raise MatrixError(0, "M_INVALID_PARAM", f"not an mxc:// URI: {mxc!r}")
    server, media_id = mxc[len("mxc://") :].split("/", 1)
    return server, media_id


def _q(value: str) -> str:
    return quote(value, safe="")


class Api:
    def __init__(
        self,
        homeserver: str,
        access_token: str | None = None,
        *,
        timeout_s: float = 60.0,
        transport: str = "auto",
    ) -> None:
        self.homeserver = homeserver.rstrip("/")
        self.access_token = access_token
        self._session: aiohttp.ClientSession | None = None
        self._timeout_s = timeout_s
        # Transport hook (starling_client/transport.py): "auto" carries authenticated
        # JSON requests and /sync over the WebSocket when /versions offers it; "coap"
        # over low-bandwidth CoAP+CBOR+Noise when offered (else as "auto"); "http"
        # never leaves HTTP. Chosen once, before the first authenticated request.
        self.transport_choice = transport
        self.transport: Transport | None = None
        self._txn = itertools.count()
        self._txn_prefix = f"{int(time.time() * 1000)}.{os.getpid()}"

    async def close(self) -> None:
        if self.transport is not None:
            await self.transport.close()
            self.transport = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def txn_id(self) -> str:
        return f"{self._txn_prefix}.{next(self._txn)}"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"} if self.access_token else {}

    def _unreachable(self, e: Exception) -> MatrixError:
        return MatrixError(0, "M_CONNECTION", f"cannot reach {self.homeserver}: {e}")

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        data: bytes | None = None,
        content_type: str | None = None,
        timeout_s: float | None = None,
        auth: bool = True,
    ) -> dict[str, Any]:
        session = self._http()
        if auth and self.access_token and data is None and path.startswith("/_matrix/client/"):
            carrier = await self._carrier()
            if carrier is not None:
                full = f"{path}?{urlencode(params)}" if params else path
                try:
                    status, answer = await carrier.request(
                        method, full, body, timeout_s or self._timeout_s
                    )
                except TransportLost as e:
                    raise MatrixError(
                        e.status, e.errcode, f"{type(self.transport).__name__}: {e}"
                    ) from e
                except TimeoutError as e:
                    raise MatrixError(
                        0, "M_CONNECTION", f"{type(self.transport).__name__}: {e}"
                    ) from e
                return _answer(status, answer)
        headers = self._auth_headers() if auth else {}
        if data is not None:
            headers["Content-Type"] = content_type or "application/octet-stream"
            payload: bytes | None = data
        elif body is not None:
            headers["Content-Type"] = "application/json"
            payload = json.dumps(body).encode("utf-8")
        else:
            payload = None
        try:
            async with session.request(
                method,
                self.homeserver + path,
                data=payload,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s or self._timeout_s),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as e:
            raise self._unreachable(e) from e
        return _answer(status, _decode(raw))

    async def _carrier(self) -> Transport | None:
        """The transport for authenticated JSON requests, chosen on first use."""
        if self.transport_choice in ("auto", "coap") and self.access_token:
            coap = self.transport_choice == "coap"
            self.transport_choice = "chosen"
            self.transport = await choose_transport(
                self._http(), self.homeserver, self.access_token, coap=coap
            )
        return self.transport

    async def get_bytes(self, path: str, *, timeout_s: float | None = None) -> bytes:
        try:
            async with self._http().get(
                self.homeserver + path,
                headers=self._auth_headers(),
                timeout=aiohttp.ClientTimeout(total=timeout_s or self._timeout_s),
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise _error(resp.status, _decode(raw))
                return raw
        except (aiohttp.ClientError, TimeoutError) as e:
            raise self._unreachable(e) from e

    # ---- accounts ---------------------------------------------------------------------

    async def login(
        self, user: str, password: str, device_name: str, device_id: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
            "initial_device_display_name": device_name,
        }
        if device_id:
            body["device_id"] = device_id
        return await self.request("POST", f"{API}/login", body, auth=False)

    async def logout(self) -> None:
        await self.request("POST", f"{API}/logout", {})

    # ---- sync and rooms ---------------------------------------------------------------

    async def sync(self, since: str | None, timeout_ms: int) -> dict[str, Any]:
        # A sync that must answer at once (timeout 0) is one request on the socket
        # (transport.py `_sync_now`): the stream cannot tell "nothing new" from "not
        # pushed yet" without waiting.
        carrier = await self._carrier()
        if carrier is not None:
            try:
                status, answer = await carrier.sync(since, timeout_ms)
            except TransportLost as e:
                raise MatrixError(
                    e.status, e.errcode, f"{type(self.transport).__name__}: {e}"
                ) from e
            return _answer(status, answer)
        params = {"timeout": str(timeout_ms)}
        if since:
            params["since"] = since
        return await self.request(
            "GET", f"{API}/sync", params=params, timeout_s=timeout_ms / 1000 + 30
        )

    async def create_room(self, body: dict[str, Any]) -> str:
        answer = await self.request("POST", f"{API}/createRoom", body)
        return str(answer["room_id"])

    async def join(self, room: str) -> str:
        answer = await self.request("POST", f"{API}/join/{_q(room)}", {})
        return str(answer["room_id"])

    async def leave(self, room_id: str) -> None:
        await self.request("POST", f"{API}/rooms/{_q(room_id)}/leave", {})

    async def invite(self, room_id: str, user_id: str) -> None:
        await self.request("POST", f"{API}/rooms/{_q(room_id)}/invite", {"user_id": user_id})

    async def members(self, room_id: str) -> list[dict[str, Any]]:
        answer = await self.request("GET", f"{API}/rooms/{_q(room_id)}/members")
        chunk = answer.get("chunk")
        return [e for e in chunk if isinstance(e, dict)] if isinstance(chunk, list) else []

    async def state(self, room_id: str) -> list[dict[str, Any]]:
        raw = await self.get_bytes(f"{API}/rooms/{_q(room_id)}/state")
        events = json.loads(raw)
        return [e for e in events if isinstance(e, dict)] if isinstance(events, list) else []

    async def messages(
        self, room_id: str, *, limit: int = 50, from_token: str | None = None
    ) -> dict[str, Any]:
        params = {"dir": "b", "limit": str(limit)}
        if from_token:
            params["from"] = from_token
        return await self.request("GET", f"{API}/rooms/{_q(room_id)}/messages", params=params)

    async def send(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        path = f"{API}/rooms/{_q(room_id)}/send/{_q(event_type)}/{_q(self.txn_id())}"
        answer = await self.request("PUT", path, content)
        return str(answer["event_id"])

    async def send_to_device(self, event_type: str, messages: dict[str, dict[str, Any]]) -> None:
        path = f"{API}/sendToDevice/{_q(event_type)}/{_q(self.txn_id())}"
        await self.request("PUT", path, {"messages": messages})

    # ---- keys -------------------------------------------------------------------------

    async def keys_upload(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", f"{API}/keys/upload", body)

    async def keys_query(self, users: list[str]) -> dict[str, Any]:
        return await self.request(
            "POST", f"{API}/keys/query", {"device_keys": {u: [] for u in users}}
        )

    async def keys_claim(self, one_time_keys: dict[str, dict[str, str]]) -> dict[str, Any]:
        return await self.request("POST", f"{API}/keys/claim", {"one_time_keys": one_time_keys})

    async def upload_signing_keys(self, body: dict[str, Any], user_id: str, password: str) -> None:
        """`/keys/device_signing/upload`, answering the user-interactive authentication the
        server asks for with the account password (`m.login.password`)."""
        path = f"{API}/keys/device_signing/upload"
        try:
            await self.request("POST", path, body)
            return
        except MatrixError as e:
            if e.status != 401 or not isinstance(e.body, dict) or "session" not in e.body:
                raise
            session = e.body["session"]
        auth = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user_id},
            "password": password,
            "session": session,
        }
        await self.request("POST", path, {**body, "auth": auth})

    async def upload_signatures(self, signed: dict[str, dict[str, Any]]) -> None:
        """`/keys/signatures/upload`; a failure for any key is an error."""
        answer = await self.request("POST", f"{API}/keys/signatures/upload", signed)
        failures = answer.get("failures")
        if isinstance(failures, dict) and failures:
            raise MatrixError(400, "M_INVALID_SIGNATURE", f"signatures refused: {failures}")

    # ---- account data and key backup ----------------------------------------------------

    async def get_account_data(self, user_id: str, event_type: str) -> dict[str, Any] | None:
        try:
            return await self.request(
                "GET", f"{API}/user/{_q(user_id)}/account_data/{_q(event_type)}"
            )
        except MatrixError as e:
            if e.status == 404:
                return None
            raise

    async def set_account_data(
        self, user_id: str, event_type: str, content: dict[str, Any]
    ) -> None:
        await self.request(
            "PUT", f"{API}/user/{_q(user_id)}/account_data/{_q(event_type)}", content
        )

    async def backup_version(self) -> dict[str, Any] | None:
        try:
            return await self.request("GET", f"{API}/room_keys/version")
        except MatrixError as e:
            if e.status == 404:
                return None
            raise

    async def create_backup_version(self, algorithm: str, auth_data: dict[str, Any]) -> str:
        answer = await self.request(
            "POST", f"{API}/room_keys/version", {"algorithm": algorithm, "auth_data": auth_data}
        )
        return str(answer["version"])

    async def put_room_keys(self, version: str, rooms: dict[str, Any]) -> dict[str, Any]:
        return await self.request(
            "PUT", f"{API}/room_keys/keys", {"rooms": rooms}, params={"version": version}
        )

    async def get_room_keys(self, version: str) -> dict[str, Any]:
        return await self.request("GET", f"{API}/room_keys/keys", params={"version": version})

    # ---- media ------------------------------------------------------------------------

    async def upload(self, data: bytes, content_type: str, filename: str | None = None) -> str:
        params = {"filename": filename} if filename else None
        answer = await self.request(
            "POST",
            "/_matrix/media/v3/upload",
            params=params,
            data=data,
            content_type=content_type,
            timeout_s=600,
        )
        return str(answer["content_uri"])

    async def download(self, mxc: str) -> bytes:
        server, media_id = _mxc_parts(mxc)
        return await self.get_bytes(
            f"/_matrix/client/v1/media/download/{_q(server)}/{_q(media_id)}", timeout_s=600
        )

    async def _optional_object(self, path: str, absent: tuple[int, ...]) -> dict[str, Any]:
        """A JSON object read over plain HTTP (media endpoints are not carried by the
        WebSocket); empty when the server answers with a status in `absent` or no
        object."""
        try:
            raw = await self.get_bytes(path)
        except MatrixError as e:
            if e.status in absent:
                return {}
            raise
        answer = _decode(raw)
        return answer if isinstance(answer, dict) else {}

    async def media_config(self) -> dict[str, Any]:
        """The server's media limits (`m.upload.size`); empty if it does not say."""
        return await self._optional_object("/_matrix/client/v1/media/config", (404, 405))

    async def media_usage(self) -> dict[str, Any]:
        """What the user stores on the server and their upload quotas (MSC4034's usage;
        Starling adds `io.starling.upload_limits`); empty if the server does not say."""
        return await self._optional_object(
            "/_matrix/media/unstable/org.matrix.msc4034/usage", (400, 404, 405)
        )

    async def upload_stream(
        self, chunks: AsyncIterator[bytes], size: int, content_type: str
    ) -> str:
        """Upload `size` bytes given piece by piece (never held whole in memory)."""
        headers = {
            "Content-Type": content_type,
            "Content-Length": str(size),
            **self._auth_headers(),
        }
        try:
            async with self._http().post(
                self.homeserver + "/_matrix/media/v3/upload",
                data=chunks,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=600),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as e:
            raise self._unreachable(e) from e
        answer = _answer(status, _decode(raw))
        if "content_uri" not in answer:
            raise _error(status, answer)
        return str(answer["content_uri"])

    async def download_stream(
        self, mxc: str, sink: Callable[[bytes], Awaitable[None]], *, max_bytes: int
    ) -> int:
        """Download a file piece by piece into `sink`; refuses more than `max_bytes`.
        Returns the number of bytes."""
        server, media_id = _mxc_parts(mxc)
        url = f"{self.homeserver}/_matrix/client/v1/media/download/{_q(server)}/{_q(media_id)}"
        total = 0
        try:
            async with self._http().get(
                url,
                headers=self._auth_headers(),
                timeout=aiohttp.ClientTimeout(total=None, sock_read=600),
            ) as resp:
                if resp.status >= 400:
                    raise _error(resp.status, _decode(await resp.content.read(65536)))
                async for piece in resp.content.iter_chunked(1 << 20):
                    total += len(piece)
                    if total > max_bytes:
                        raise MatrixError(0, "M_TOO_LARGE", f"{mxc} is larger than expected")
                    await sink(piece)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise self._unreachable(e) from e
        return total

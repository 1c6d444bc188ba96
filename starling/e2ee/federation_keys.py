"""Our users' keys for other servers (Server-Server API > End-to-End Encryption), and
theirs for our clients.

Answering: `GET /user/devices/{userId}` (every device of a local user, with its keys
when it has uploaded some, and the user's master and self-signing keys),
`POST /user/keys/query` and `POST /user/keys/claim`. Only our own users are answered:
anyone else named in a request is left out. User-signing keys never leave the server.

Asking: `RemoteKeys` implements `e2ee.keys.RemoteKeyQuerier` over the federation
client, with the client's timeout. What another server answers is only taken for its
own users, and a device's keys only when they name that user and device (a server
cannot hand out keys under someone else's name).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import quote

from starling.e2ee.keys import E2eKeyService
from starling.errors import MatrixError, bad_json
from starling.protocol.identifiers import is_valid_user_id
from starling.storage.accounts import AccountStore

QUERY_PATH = "/_matrix/federation/v1/user/keys/query"
CLAIM_PATH = "/_matrix/federation/v1/user/keys/claim"
DEVICES_PATH = "/_matrix/federation/v1/user/devices/{}"
# The shortest and longest a client may make us wait for another server.
MIN_TIMEOUT_MS = 1_000
MAX_TIMEOUT_MS = 60_000


def _server(user_id: str) -> str:
    return user_id.split(":", 1)[1]


class FederationKeyServer:
    def __init__(
        self,
        server_name: str,
        keys: E2eKeyService,
        accounts: AccountStore,
        outbound_head: Callable[[str], Awaitable[int | None]],
    ) -> None:
        self._server_name = server_name
        self._keys = keys
        self._accounts = accounts
        # The stream_id of the last m.device_list_update sent for a user: the next one's
        # prev_id, so a server that resynced from this answer can follow on.
        self._outbound_head = outbound_head

    def _ours(self, user_id: Any) -> bool:
        return (
            isinstance(user_id, str)
            and is_valid_user_id(user_id)
            and _server(user_id) == self._server_name
        )

    async def query(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /_matrix/federation/v1/user/keys/query"""
        wanted = body.get("device_keys")
        if not isinstance(wanted, dict):
            raise bad_json("'device_keys' must be an object")
        local = {u: d for u, d in wanted.items() if self._ours(u)}
        result = await self._keys.query("", local)
        return {
            "device_keys": result["device_keys"],
            "master_keys": result["master_keys"],
            "self_signing_keys": result["self_signing_keys"],
        }

    async def claim(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /_matrix/federation/v1/user/keys/claim"""
        wanted = body.get("one_time_keys")
        if not isinstance(wanted, dict):
            raise bad_json("'one_time_keys' must be an object")
        local = {u: d for u, d in wanted.items() if self._ours(u)}
        result = await self._keys.claim(local)
        return {"one_time_keys": result["one_time_keys"]}

    async def devices(self, user_id: str) -> dict[str, Any]:
        """GET /_matrix/federation/v1/user/devices/{userId}"""
        if not self._ours(user_id):
            raise MatrixError(403, "M_FORBIDDEN", "That user is not on this server")
        # Read before the devices: an update made meanwhile is then both in this answer
        # and sent after it (applied twice, harmlessly), never in neither.
        stream_id = await self._outbound_head(user_id) or 0
        listed = await self._accounts.list_devices(user_id)
        result = await self._keys.query("", {user_id: []})
        keyed = result["device_keys"].get(user_id, {})
        devices = []
        for device in sorted(listed, key=lambda d: d.device_id):
            entry: dict[str, Any] = {"device_id": device.device_id}
            keys = keyed.get(device.device_id)
            if keys is not None:
                entry["keys"] = {k: v for k, v in keys.items() if k != "unsigned"}
            if device.display_name is not None:
                entry["device_display_name"] = device.display_name
            devices.append(entry)
        out: dict[str, Any] = {
            "user_id": user_id,
            "stream_id": stream_id,
            "devices": devices,
        }
        if user_id in result["master_keys"]:
            out["master_key"] = result["master_keys"][user_id]
        if user_id in result["self_signing_keys"]:
            out["self_signing_key"] = result["self_signing_keys"][user_id]
        return out


class JsonPoster(Protocol):
    async def post_json(
        self, destination: str, path: str, body: Any, *, timeout: float = 60.0
    ) -> Any: ...

    async def get_json(self, destination: str, path: str, *, timeout: float = 60.0) -> Any: ...


def _timeout_s(timeout_ms: int) -> float:
    return max(MIN_TIMEOUT_MS, min(timeout_ms, MAX_TIMEOUT_MS)) / 1000


class RemoteKeys:
    """e2ee.keys.RemoteKeyQuerier and the device-list cache's DeviceFetcher over
    federation."""

    def __init__(self, client: JsonPoster) -> None:
        self._client = client

    async def user_devices(self, user_id: str, timeout: float) -> Any:
        """GET /user/devices/{userId} on the user's server (the caller checks the
        answer)."""
        return await self._client.get_json(
            _server(user_id), DEVICES_PATH.format(quote(user_id, safe="")), timeout=timeout
        )

    async def query_keys(
        self, server_name: str, device_keys: Mapping[str, list[str]], timeout_ms: int
    ) -> dict[str, Any]:
        answer = await self._client.post_json(
            server_name,
            QUERY_PATH,
            {"device_keys": dict(device_keys)},
            timeout=_timeout_s(timeout_ms),
        )
        if not isinstance(answer, dict):
            raise ValueError(f"{server_name} answered /user/keys/query with garbage")
        out: dict[str, Any] = {}
        devices = answer.get("device_keys")
        if isinstance(devices, dict):
            out["device_keys"] = {
                user_id: {
                    device_id: keys
                    for device_id, keys in by_device.items()
                    if isinstance(keys, dict)
                    and keys.get("user_id") == user_id
                    and keys.get("device_id") == device_id
                }
                for user_id, by_device in devices.items()
                if user_id in device_keys and isinstance(by_device, dict)
            }
        for section in ("master_keys", "self_signing_keys"):
            got = answer.get(section)
            if isinstance(got, dict):
                out[section] = {
                    user_id: key
                    for user_id, key in got.items()
                    if user_id in device_keys
                    and isinstance(key, dict)
                    and key.get("user_id") == user_id
                }
        return out

    async def claim_keys(
        self, server_name: str, one_time_keys: Mapping[str, Mapping[str, str]], timeout_ms: int
    ) -> dict[str, Any]:
        answer = await self._client.post_json(
            server_name,
            CLAIM_PATH,
            {"one_time_keys": {u: dict(d) for u, d in one_time_keys.items()}},
            timeout=_timeout_s(timeout_ms),
        )
        if not isinstance(answer, dict):
            raise ValueError(f"{server_name} answered /user/keys/claim with garbage")
        got = answer.get("one_time_keys")
        if not isinstance(got, dict):
            return {"one_time_keys": {}}
        return {
            "one_time_keys": {
                user_id: {
                    device_id: keys
                    for device_id, keys in by_device.items()
                    if device_id in one_time_keys[user_id] and isinstance(keys, dict)
                }
                for user_id, by_device in got.items()
                if user_id in one_time_keys and isinstance(by_device, dict)
            }
        }

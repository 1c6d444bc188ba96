"""Device keys, one-time keys and fallback keys: upload, query and claim.

Spec: client-server-api "End-to-End Encryption" > Key management API (/keys/upload,
/keys/query, /keys/claim). Users on other servers are asked through a `RemoteKeyQuerier`
(federation, later); without one they are reported in `failures` by server name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import orjson

from starling.e2ee.device_lists import DeviceListTracker
from starling.e2ee.validation import (
    check_device_keys,
    check_one_time_keys,
    unsigned_part,
)
from starling.errors import MatrixError, bad_json, invalid_param
from starling.protocol.identifiers import is_valid_user_id
from starling.storage.e2e_keys import ClaimKey, E2eKeyStore, StoredSignature
from starling.storage.e2ee_writes import DeviceChange, E2eeWrites

# Most one-time (or fallback) keys in one upload, and unclaimed per device: clients keep
# ~50 and upload in small batches; this bounds what one device can make us store.
MAX_KEYS_PER_UPLOAD = 200
MAX_UNCLAIMED_KEYS = 1000
# Most users in one /keys/query and (user, device) pairs in one /keys/claim.
MAX_QUERY_USERS = 5000
MAX_CLAIMS = 5000
# Rounds of re-claiming keys that were locked by concurrent claimers (PostgreSQL).
CLAIM_ROUNDS = 3

CROSS_SIGNING_TYPES = ("master", "self_signing", "user_signing")


class RemoteKeyQuerier(Protocol):
    """Fetches keys of users on another server (federation /user/keys/query and
    /user/keys/claim). Returns the remote response body; raises on failure."""

    async def query_keys(
        self, server_name: str, device_keys: Mapping[str, list[str]], timeout_ms: int
    ) -> dict[str, Any]: ...

    async def claim_keys(
        self, server_name: str, one_time_keys: Mapping[str, Mapping[str, str]], timeout_ms: int
    ) -> dict[str, Any]: ...


class CachedRemoteKeys(Protocol):
    """The cache of remote users' device lists (e2ee.remote_device_lists)."""

    async def cached_keys(
        self, users: Mapping[str, list[str]], wait_s: float = 0.0
    ) -> tuple[dict[str, Any], dict[str, list[str]]]: ...


# How long a query waits for the remote cache's resync of a user sharing a room with
# ours that it is not caching yet (as Synapse resyncs then); then it asks their server.
QUERY_RESYNC_WAIT_S = 5.0


def _now_ms() -> int:
    return int(time.time() * 1000)


def server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1]


def _failure(exc: Exception | None) -> dict[str, Any]:
    if exc is None:
        return {"status": 503, "message": "Federation is not available"}
    if isinstance(exc, MatrixError):
        return {"status": exc.status, "errcode": exc.errcode, "message": exc.error}
    return {"status": 503, "message": str(exc) or type(exc).__name__}


def add_signatures(obj: dict[str, Any], signatures: Iterable[StoredSignature]) -> dict[str, Any]:
    """A copy of a key object with stored signatures merged into its ``signatures``."""
    merged: dict[str, dict[str, str]] = {
        signer: dict(sigs) for signer, sigs in (obj.get("signatures") or {}).items()
    }
    for sig in signatures:
        merged.setdefault(sig.user_id, {})[sig.key_id] = sig.signature
    out = dict(obj)
    if merged:
        out["signatures"] = merged
    return out


def _signed_part(key_json: str) -> Any:
    """A stored one-time key without its signatures: a string key is itself."""
    key = orjson.loads(key_json)
    return unsigned_part(key) if isinstance(key, dict) else key


def master_public_key(key_json: Mapping[str, Any]) -> str | None:
    keys = key_json.get("keys")
    if isinstance(keys, dict) and len(keys) == 1:
        (value,) = keys.values()
        return value if isinstance(value, str) else None
    return None


class E2eKeyService:
    def __init__(
        self,
        server_name: str,
        writes: E2eeWrites,
        store: E2eKeyStore,
        device_lists: DeviceListTracker,
        *,
        remote: RemoteKeyQuerier | None = None,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self._server_name = server_name
        self._writes = writes
        self._store = store
        self._device_lists = device_lists
        self.remote = remote
        self.remote_cache: CachedRemoteKeys | None = None
        self._clock_ms = clock_ms

    # -- POST /keys/upload

    async def upload(
        self, user_id: str, device_id: str | None, body: dict[str, Any]
    ) -> dict[str, Any]:
        if device_id is None:
            raise invalid_param("Uploading keys needs an access token bound to a device")
        new_device_keys: str | None = None
        if "device_keys" in body:
            new_device_keys = check_device_keys(body["device_keys"], user_id, device_id)
        one_time = check_one_time_keys(
            body.get("one_time_keys") or {}, fallback=False, max_keys=MAX_KEYS_PER_UPLOAD
        )
        fallback = check_one_time_keys(
            body.get("fallback_keys") or {}, fallback=True, max_keys=MAX_KEYS_PER_UPLOAD
        )
        audience = await self._device_lists.audience(user_id) if new_device_keys else set()
        now = self._clock_ms()

        def check_one_time(stored_keys: Mapping[tuple[str, str], str]) -> None:
            for algorithm, key_id, key_json in one_time:
                existing_key = stored_keys.get((algorithm, key_id))
                if existing_key != key_json and (
                    existing_key is None or _signed_part(existing_key) != _signed_part(key_json)
                ):
                    raise invalid_param(
                        f"One-time key {algorithm}:{key_id} already exists with another value"
                    )

        def check_counts(counts: Mapping[str, int]) -> None:
            if one_time and sum(counts.values()) > MAX_UNCLAIMED_KEYS:
                raise MatrixError(
                    400,
                    "M_RESOURCE_LIMIT_EXCEEDED",
                    f"A device may hold at most {MAX_UNCLAIMED_KEYS} unclaimed one-time keys",
                )

        # New identity keys replace a device's old ones, as in Synapse (the spec does not
        # forbid it, and SyTest's device-list tests rely on it): the change reaches every
        # observer as a device-list update, and clients refuse a known device whose
        # ed25519 key changed (their TOFU check).
        ids, counts = await self._writes.upload_keys(
            user_id,
            device_id,
            new_device_keys,
            one_time,
            fallback,
            now,
            check_one_time=check_one_time,
            check_counts=check_counts,
        )
        if ids is not None:
            self._device_lists.announce(
                DeviceChange([user_id], device_ids=[device_id]), ids, notify=audience
            )
        return {"one_time_key_counts": counts}

    # -- POST /keys/query

    async def query(
        self, requester: str, device_keys: Any, timeout_ms: int = 10_000
    ) -> dict[str, Any]:
        if not isinstance(device_keys, dict):
            raise bad_json("'device_keys' must be an object")
        if len(device_keys) > MAX_QUERY_USERS:
            raise invalid_param(f"At most {MAX_QUERY_USERS} users may be queried at once")
        wanted: dict[str, list[str]] = {}
        for user_id, devices in device_keys.items():
            if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
                raise bad_json("'device_keys' values must be lists of device IDs")
            if is_valid_user_id(user_id):
                wanted[user_id] = devices
        local = {u: d for u, d in wanted.items() if server_of(u) == self._server_name}
        remote: dict[str, dict[str, list[str]]] = {}
        for user_id, devices in wanted.items():
            if user_id not in local:
                remote.setdefault(server_of(user_id), {})[user_id] = devices
        result: dict[str, Any] = {
            "device_keys": {},
            "failures": {},
            "master_keys": {},
            "self_signing_keys": {},
            "user_signing_keys": {},
        }
        if local:
            await self._query_local(requester, local, result)
        # Every server at once, each within the timeout; one that fails is in `failures`.
        await asyncio.gather(
            *(self._query_remote(s, users, timeout_ms, result) for s, users in remote.items())
        )
        if requester and remote:
            await self._add_own_signatures(requester, result)
        return result

    async def _add_own_signatures(self, requester: str, result: dict[str, Any]) -> None:
        """The requester's own signatures (their user-signing key's) on other servers'
        users' master keys: stored here, seen only by them."""
        masters: dict[str, Any] = result["master_keys"]
        others = [u for u in masters if server_of(u) != self._server_name]
        if not others:
            return
        for sig in await self._store.get_signatures(others):
            key = masters.get(sig.target_user_id)
            if (
                sig.user_id == requester
                and isinstance(key, dict)
                and master_public_key(key) == sig.target_key_id
            ):
                masters[sig.target_user_id] = add_signatures(key, [sig])

    async def _query_local(
        self, requester: str, wanted: dict[str, list[str]], result: dict[str, Any]
    ) -> None:
        signatures: dict[tuple[str, str], list[StoredSignature]] = {}
        for sig in await self._store.get_signatures(wanted):
            signatures.setdefault((sig.target_user_id, sig.target_key_id), []).append(sig)
        devices_out: dict[str, dict[str, Any]] = result["device_keys"]
        for user_id in wanted:
            devices_out[user_id] = {}
        for row in await self._store.get_device_keys_for_users(wanted):
            only = wanted[row.user_id]
            if only and row.device_id not in only:
                continue
            # Signatures on a device that count are its owner's (self-signing key).
            own = [
                s
                for s in signatures.get((row.user_id, row.device_id), ())
                if s.user_id == row.user_id
            ]
            keys = add_signatures(orjson.loads(row.key_json), own)
            # `unsigned` is the server's (a client's own is not passed on); always there,
            # as in Synapse, even without a display name.
            keys["unsigned"] = (
                {"device_display_name": row.display_name} if row.display_name is not None else {}
            )
            devices_out[row.user_id][row.device_id] = keys
        cross = await self._store.get_cross_signing_keys(wanted, CROSS_SIGNING_TYPES)
        for user_id, keys_by_type in cross.items():
            for key_type, key_json in keys_by_type.items():
                if key_type == "user_signing" and user_id != requester:
                    continue
                key = orjson.loads(key_json)
                if key_type == "master":
                    public = master_public_key(key)
                    # The owner's device signatures, and the requester's own (user-signing
                    # key) signature; other users' signatures are theirs alone.
                    visible = [
                        s
                        for s in signatures.get((user_id, public or ""), ())
                        if s.user_id in (user_id, requester)
                    ]
                    key = add_signatures(key, visible)
                result[f"{key_type}_keys"][user_id] = key

    async def _query_remote(
        self,
        server_name: str,
        users: dict[str, list[str]],
        timeout_ms: int,
        result: dict[str, Any],
    ) -> None:
        if self.remote_cache is not None:
            cached, users = await self.remote_cache.cached_keys(
                users, min(QUERY_RESYNC_WAIT_S, timeout_ms / 2000)
            )
            for section, by_user in cached.items():
                result[section].update(by_user)
            if not users:
                return
        if self.remote is None:
            result["failures"][server_name] = _failure(None)
            return
        try:
            answer = await self.remote.query_keys(server_name, users, timeout_ms)
        except Exception as e:
            result["failures"][server_name] = _failure(e)
            return
        for section in ("device_keys", "master_keys", "self_signing_keys"):
            got = answer.get(section)
            if isinstance(got, dict):
                for user_id, value in got.items():
                    if user_id in users:
                        result[section][user_id] = value

    # -- POST /keys/claim

    async def claim(self, one_time_keys: Any, timeout_ms: int = 10_000) -> dict[str, Any]:
        if not isinstance(one_time_keys, dict):
            raise bad_json("'one_time_keys' must be an object")
        claims: list[ClaimKey] = []
        remote: dict[str, dict[str, dict[str, str]]] = {}
        for user_id, devices in one_time_keys.items():
            if not isinstance(devices, dict) or not all(
                isinstance(d, str) and isinstance(a, str) for d, a in devices.items()
            ):
                raise bad_json("'one_time_keys' must map users to {device ID: algorithm}")
            if not is_valid_user_id(user_id):
                continue
            if server_of(user_id) != self._server_name:
                remote.setdefault(server_of(user_id), {})[user_id] = devices
                continue
            claims.extend((user_id, device_id, alg) for device_id, alg in devices.items())
        if len(claims) + sum(len(d) for u in remote.values() for d in u.values()) > MAX_CLAIMS:
            raise invalid_param(f"At most {MAX_CLAIMS} keys may be claimed at once")
        claimed = await self._claim_local(claims)
        out: dict[str, Any] = {}
        for (user_id, device_id, _), (key_id, key_json) in claimed.items():
            out.setdefault(user_id, {}).setdefault(device_id, {})[key_id] = orjson.loads(key_json)
        failures: dict[str, Any] = {}
        for server_name, users in remote.items():
            if self.remote is None:
                failures[server_name] = _failure(None)
                continue
            try:
                answer = await self.remote.claim_keys(server_name, users, timeout_ms)
            except Exception as e:
                failures[server_name] = _failure(e)
                continue
            got = answer.get("one_time_keys")
            if isinstance(got, dict):
                out.update({u: v for u, v in got.items() if u in users})
        return {"one_time_keys": out, "failures": failures}

    async def _claim_local(self, claims: Sequence[ClaimKey]) -> dict[ClaimKey, tuple[str, str]]:
        """One key per claim: the oldest one-time key, else the fallback key. Result
        values are ``("<algorithm>:<key_id>", key_json)``."""
        out: dict[ClaimKey, tuple[str, str]] = {}
        pending = list(dict.fromkeys(claims))
        for _ in range(CLAIM_ROUNDS):
            if not pending:
                break
            got = await self._store.claim_one_time_keys(pending)
            for claim, (key_id, key_json) in got.items():
                out[claim] = (f"{claim[2]}:{key_id}", key_json)
            missing = [c for c in pending if c not in got]
            # Skipped only because a concurrent claim held the row lock? Try again.
            still_there = await self._store.has_one_time_keys(missing)
            pending = [c for c in missing if c in still_there]
        fallback_claims = [c for c in dict.fromkeys(claims) if c not in out]
        for claim, (key_id, key_json) in (
            await self._store.claim_fallback_keys(fallback_claims)
        ).items():
            out[claim] = (f"{claim[2]}:{key_id}", key_json)
        return out

    # -- GET /keys/changes

    async def changes(self, user_id: str, since: int, upto: int) -> dict[str, list[str]]:
        found = await self._device_lists.changes(user_id, since, upto)
        return {"changed": found.changed, "left": found.left}

    # -- devices created and deleted (AccountService device listener)

    async def devices_changed(self, user_id: str, device_ids: Sequence[str], deleted: bool) -> None:
        """New devices are announced; deleted ones lose their keys and to-device inbox."""
        if not device_ids:
            return
        audience = await self._device_lists.audience(user_id)
        ids = await self._writes.devices_changed(user_id, device_ids, deleted)
        self._device_lists.announce(
            DeviceChange([user_id], device_ids=device_ids), ids, notify=audience, deleted=deleted
        )

    # -- sync: per-device key counts

    async def key_counts(self, user_id: str, device_id: str) -> tuple[dict[str, int], list[str]]:
        return await self._store.key_counts(user_id, device_id)

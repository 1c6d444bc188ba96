"""Cross-signing: the master, self-signing and user-signing keys, and signatures on keys.

Spec: client-server-api "Cross-signing" (/keys/device_signing/upload,
/keys/signatures/upload). `upload_by_request` decides when replacing keys needs
user-interactive authentication (the spec's rule); the auth itself is the caller's
callback (it needs the request).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson

from starling.e2ee.device_lists import DeviceListTracker
from starling.e2ee.keys import CROSS_SIGNING_TYPES, master_public_key
from starling.e2ee.validation import (
    canonical,
    check_cross_signing_key,
    check_signature,
    device_verify_key,
    invalid_signature,
    unsigned_part,
    verify_key_for,
)
from starling.errors import MatrixError, bad_json, forbidden, missing_param, not_found
from starling.protocol.signing import VerifyKey
from starling.storage.accounts import AccountStore
from starling.storage.e2e_keys import E2eKeyStore, StoredSignature
from starling.storage.e2ee_writes import DeviceChange, E2eeWrites

_BODY_KEYS = {
    "master": "master_key",
    "self_signing": "self_signing_key",
    "user_signing": "user_signing_key",
}
MAX_SIGNED_OBJECTS = 1000


RemoteMasterKeys = Callable[[str, Sequence[str]], Awaitable[Mapping[str, Any]]]
"""(requester, users) -> their master keys as /keys/query gives them (other servers'
users: from the device-list cache or their server)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _verify_key_of(key: Mapping[str, Any]) -> tuple[str, VerifyKey] | None:
    public = master_public_key(key)
    if public is None:
        return None
    key_id = f"ed25519:{public}"
    return key_id, verify_key_for(key_id, public)


class CrossSigningService:
    def __init__(
        self,
        writes: E2eeWrites,
        store: E2eKeyStore,
        accounts: AccountStore,
        device_lists: DeviceListTracker,
        *,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self._writes = writes
        self._store = store
        self._accounts = accounts
        self._device_lists = device_lists
        self._clock_ms = clock_ms
        # Master keys of users whose keys are not stored here (set by the composition
        # root once federation exists): a user may sign another server's user's key.
        self.remote_master_keys: RemoteMasterKeys | None = None

    async def _current(self, user_id: str) -> dict[str, str]:
        found = await self._store.get_cross_signing_keys([user_id], CROSS_SIGNING_TYPES)
        return found.get(user_id, {})

    async def needs_auth(self, user_id: str, body: Mapping[str, Any]) -> bool:
        """UIA is needed to replace an existing master key setup with anything new."""
        current = await self._current(user_id)
        if "master" not in current:
            return False
        return not self._all_known(current, body)

    async def is_noop(self, user_id: str, body: Mapping[str, Any]) -> bool:
        """Every key given is exactly the stored one: the upload is a retry."""
        current = await self._current(user_id)
        given = [k for k in _BODY_KEYS.values() if body.get(k) is not None]
        return bool(given) and self._all_known(current, body)

    @staticmethod
    def _all_known(current: Mapping[str, str], body: Mapping[str, Any]) -> bool:
        for key_type, field in _BODY_KEYS.items():
            given = body.get(field)
            if given is None:
                continue
            stored = current.get(key_type)
            try:
                if stored is None or canonical(given) != stored:
                    return False
            except MatrixError:
                return False
        return True

    # -- POST /keys/device_signing/upload

    async def upload_by_request(
        self,
        user_id: str,
        body: Mapping[str, Any],
        authenticate: Callable[[], Awaitable[object]],
    ) -> None:
        """A client's upload: a retry of the stored keys changes nothing (and needs no
        auth); replacing an existing master key setup runs `authenticate` (the caller's
        user-interactive auth) first; then the keys are stored."""
        if await self.is_noop(user_id, body):
            return
        if await self.needs_auth(user_id, body):
            await authenticate()
        await self.upload_keys(user_id, body)

    async def upload_keys(self, user_id: str, body: Mapping[str, Any]) -> None:
        current = await self._current(user_id)
        new: dict[str, tuple[str, str]] = {}
        master = body.get("master_key")
        if master is not None:
            master_id, master_public, master_key = check_cross_signing_key(
                master, user_id, "master"
            )
            new["master"] = (master_public, canonical(master))
        elif "master" in current:
            found = _verify_key_of(orjson.loads(current["master"]))
            if found is None:
                raise MatrixError(500, "M_UNKNOWN", "The stored master key is unusable")
            master_id, master_key = found
        else:
            raise missing_param("No master key available: upload one with the others")
        for key_type in ("self_signing", "user_signing"):
            obj = body.get(_BODY_KEYS[key_type])
            if obj is None:
                continue
            _, public, _ = check_cross_signing_key(obj, user_id, key_type)
            check_signature(obj, user_id, master_id, master_key)
            new[key_type] = (public, canonical(obj))
        if not new:
            return
        device_ids = {d.device_id for d in await self._accounts.list_devices(user_id)}
        if any(public in device_ids for public, _ in new.values()):
            raise forbidden("A cross-signing key's public key is one of your device IDs")
        public_change = [t for t in new if t != "user_signing" and current.get(t) != new[t][1]]
        private_change = (
            "user_signing" in new and current.get("user_signing") != new["user_signing"][1]
        )
        audience = await self._device_lists.audience(user_id) if public_change else set()
        changes: list[tuple[DeviceChange, set[str]]] = []
        if public_change:
            changes.append((DeviceChange([user_id]), audience))
        if private_change:
            # Only the user sees their user-signing key.
            changes.append((DeviceChange([user_id], observer=user_id), set()))
        positions = await self._writes.set_cross_signing_keys(
            user_id, new, self._clock_ms(), [c for c, _ in changes]
        )
        for (change, notify), ids in zip(changes, positions, strict=True):
            self._device_lists.announce(change, ids, notify=notify)

    # -- POST /keys/signatures/upload

    async def upload_signatures(self, user_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if sum(len(v) if isinstance(v, dict) else 1 for v in body.values()) > MAX_SIGNED_OBJECTS:
            raise MatrixError(
                400,
                "M_INVALID_PARAM",
                f"At most {MAX_SIGNED_OBJECTS} objects may be signed at once",
            )
        for target_user, objects in body.items():
            if not isinstance(objects, dict):
                raise bad_json(f"Signatures for {target_user} must be an object of key objects")
        users = list(body)
        cross = await self._store.get_cross_signing_keys(
            set(users) | {user_id}, CROSS_SIGNING_TYPES
        )
        unknown = [u for u in users if u != user_id and "master" not in cross.get(u, {})]
        if unknown and self.remote_master_keys is not None:
            for target, key in (await self.remote_master_keys(user_id, unknown)).items():
                if target in unknown and isinstance(key, dict):
                    try:
                        cross.setdefault(target, {})["master"] = canonical(unsigned_part(key))
                    except MatrixError:
                        continue  # not signable: "not their master key" below
        mine = cross.get(user_id, {})
        devices: dict[str, dict[str, Any]] = {}
        if user_id in body:
            for row in await self._store.get_device_keys_for_users([user_id]):
                devices[row.device_id] = orjson.loads(row.key_json)
        failures: dict[str, dict[str, Any]] = {}
        to_store: list[StoredSignature] = []
        for target_user, objects in body.items():
            for key_id, obj in objects.items():
                try:
                    if not isinstance(obj, dict):
                        raise bad_json("A signed key object must be an object")
                    signatures = obj.get("signatures")
                    if not isinstance(signatures, dict) or not all(
                        isinstance(v, dict) and all(isinstance(s, str) for s in v.values())
                        for v in signatures.values()
                    ):
                        raise bad_json("'signatures' must be an object of objects of strings")
                    if target_user == user_id:
                        to_store.append(self._own_signature(user_id, key_id, obj, mine, devices))
                    else:
                        to_store.append(
                            self._other_signature(
                                user_id, target_user, key_id, obj, mine, cross.get(target_user, {})
                            )
                        )
                except MatrixError as e:
                    failures.setdefault(target_user, {})[key_id] = {
                        "errcode": e.errcode,
                        "error": e.error,
                    }
        if to_store:
            own = [s for s in to_store if s.target_user_id == user_id]
            # A signature of one of the user's devices changes that device's keys: other
            # servers hear it as an m.device_list_update with the keys (as from Synapse);
            # one of the master key changes the cross-signing keys (m.signing_key_update).
            own_devices = sorted({s.target_key_id for s in own if s.target_key_id in devices})
            own_master = any(s.target_key_id not in devices for s in own)
            others = sorted({s.target_user_id for s in to_store if s.target_user_id != user_id})
            audience = await self._device_lists.audience(user_id) if own else set()
            changes: list[tuple[DeviceChange, set[str]]] = []
            if own_devices:
                changes.append((DeviceChange([user_id], device_ids=own_devices), audience))
            if own_master:
                changes.append((DeviceChange([user_id]), audience))
            if others:
                changes.append((DeviceChange(others, observer=user_id), set()))
            positions = await self._writes.store_signatures(to_store, [c for c, _ in changes])
            for (change, notify), ids in zip(changes, positions, strict=True):
                self._device_lists.announce(change, ids, notify=notify)
        return {"failures": failures}

    def _own_signature(
        self,
        user_id: str,
        key_id: str,
        obj: dict[str, Any],
        mine: Mapping[str, str],
        devices: Mapping[str, dict[str, Any]],
    ) -> StoredSignature:
        master = orjson.loads(mine["master"]) if "master" in mine else None
        if master is not None and key_id == master_public_key(master):
            # One of the user's devices signs the master key.
            if unsigned_part(obj) != unsigned_part(master):
                raise invalid_signature("The signed object is not the stored master key")
            signed_by = obj.get("signatures", {}).get(user_id, {})
            for signer_key_id, signature in (
                signed_by.items() if isinstance(signed_by, dict) else ()
            ):
                algorithm, _, device_id = str(signer_key_id).partition(":")
                device = devices.get(device_id)
                if algorithm != "ed25519" or device is None:
                    continue
                device_key = device_verify_key(device, device_id)
                if device_key is None:
                    continue
                check_signature(obj, user_id, signer_key_id, device_key)
                return StoredSignature(user_id, key_id, user_id, signer_key_id, signature)
            raise invalid_signature("The master key is not signed by one of your devices")
        device = devices.get(key_id)
        if device is None:
            raise not_found(f"Unknown device or key {key_id}")
        if "self_signing" not in mine:
            raise not_found("No self-signing key uploaded")
        found = _verify_key_of(orjson.loads(mine["self_signing"]))
        if found is None:
            raise MatrixError(500, "M_UNKNOWN", "The stored self-signing key is unusable")
        ssk_id, ssk = found
        if unsigned_part(obj) != unsigned_part(device):
            raise invalid_signature("The signed object is not the device's stored keys")
        check_signature(obj, user_id, ssk_id, ssk)
        return StoredSignature(user_id, key_id, user_id, ssk_id, obj["signatures"][user_id][ssk_id])

    def _other_signature(
        self,
        user_id: str,
        target_user: str,
        key_id: str,
        obj: dict[str, Any],
        mine: Mapping[str, str],
        theirs: Mapping[str, str],
    ) -> StoredSignature:
        if "user_signing" not in mine:
            raise not_found("No user-signing key uploaded")
        found = _verify_key_of(orjson.loads(mine["user_signing"]))
        if found is None:
            raise MatrixError(500, "M_UNKNOWN", "The stored user-signing key is unusable")
        usk_id, usk = found
        master = orjson.loads(theirs["master"]) if "master" in theirs else None
        if master is None or key_id != master_public_key(master):
            raise not_found(f"{key_id} is not {target_user}'s master key")
        if unsigned_part(obj) != unsigned_part(master):
            raise invalid_signature("The signed object is not the stored master key")
        check_signature(obj, user_id, usk_id, usk)
        return StoredSignature(
            target_user, key_id, user_id, usk_id, obj["signatures"][user_id][usk_id]
        )
